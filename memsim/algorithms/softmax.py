"""Vector work of the online softmax (Milakov & Gimelshein 2018; FlashAttention Algorithm 1).

Counted per instruction on CUDA cores; an FMA counts two, like the datasheet FLOP/s.
Per score element of a loaded tile:
    qk * scale - m       1 FMA  (2)   Triton folds the scale into the exp2 argument
    row max              1
    exp2                 1 SFU
    row sum              1
    mask select          1     only in tiles that straddle a causal or window edge
Per row per tile: new max 1, exp2(m_old - m_new) 1 + 1 SFU, l = l*alpha + sum 2,
acc *= alpha head_dim. Per row at the end: acc / l head_dim, LSE = m + log(l) 1 + 1 SFU.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class VectorOps:
    cuda_ops: float  # exp included
    exp_ops: float

    def __add__(self, other: "VectorOps") -> "VectorOps":
        return VectorOps(self.cuda_ops + other.cuda_ops, self.exp_ops + other.exp_ops)


PER_SCORE_OPS = 2 + 1 + 1 + 1  # FMA, max, exp2, sum
PER_ROW_TILE_OPS = 1 + 2 + 2  # max, sub + exp2, l update


def online_softmax(scores_loaded: float, masked_scores: float, row_tiles: float, rows: float,
                   head_dim: int, rescale_per_tile: bool = True) -> VectorOps:
    """Vector ops for `scores_loaded` tile elements, of which `masked_scores` are in edge tiles,
    over `row_tiles` (row, tile) pairs and `rows` output rows."""
    rescale = head_dim if rescale_per_tile else 0
    cuda = (scores_loaded * PER_SCORE_OPS + masked_scores
            + row_tiles * (PER_ROW_TILE_OPS + rescale) + rows * (head_dim + 2))
    exp = scores_loaded + row_tiles + rows
    return VectorOps(cuda, exp)
