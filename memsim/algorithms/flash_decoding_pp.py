"""FlashDecoding++ (Hong et al. 2023, "FlashDecoding++: Faster Large Language Model Inference on
GPUs", section 3): asynchronised softmax with a unified max value.

Flash-Decoding (memsim.algorithms.flash_decoding) keeps a running max per row in each split and
rescales its partial results whenever the max grows, then merges the splits through their
log-sum-exps. FlashDecoding++ subtracts one fixed value phi, chosen offline from the model's
statistics, from every score: exp(x - phi) needs no running max and no rescaling, the splits need
nothing from each other, and the combine is a plain sum of partial numerators (O, unnormalised,
fp32) and denominators (l = sum of exp(x - phi), fp32), then one division. Grid, tiles, split count
and bytes are Flash-Decoding's; only the vector work differs.

If some x - phi passes the overflow threshold, that row is recomputed exactly: a second pass with
the online softmax, i.e. Flash-Decoding (split + combine) over the rows that overflowed, launched
after the first pass. A row overflows with probability `overflow_probability`. The K/V of a
(batch, kv head) group is read once for all of its rows, so memsim recomputes whole groups:
overflow_probability x batch x kv_heads of them, to the nearest whole group, which is the expected
extra work (probability x Flash-Decoding's cost) quantised to what one decode step can do.
"""

import dataclasses
from math import ceil, floor

from memsim.algorithms import flash_decoding as fd
from memsim.algorithms.base import Algorithm, require_forward
from memsim.algorithms.kv_quant import kv_load_work
from memsim.algorithms.softmax import PER_SCORE_OPS, VectorOps
from memsim.errors import MemsimError
from memsim.hardware.spec import GPUSpec
from memsim.kernel import KernelCost
from memsim.workload.shape import AttentionShape
from memsim.workload.tiles import TileConfig

NAME = "flash_decoding_pp"

# Per row. Hong et al. 2023, section 3 and Figure 5: over 99.99% of the softmax inputs x_i of the
# LLMs profiled lie in a range a fixed phi serves without overflow; the paper gives no per-row rate.
# memsim's default is a conservative assumption: 1 row in 100 (100x the paper's out-of-range share
# of single scores).
DEFAULT_OVERFLOW_PROBABILITY = 0.01

ASYNC_ROW_TILE_OPS = 1  # per (row, tile): l += the tile's row sum; no new max, no exp2(m_old - m_new), no rescale
OVERFLOW_TEST_OPS = 1  # per row, at the end of a split: read the row's overflow flag
STATISTIC = "L_partial"  # what a split writes beside each partial O: the denominator l (fp32)


def async_softmax(scores_loaded: float, masked_scores: float, row_tiles: float, rows: float, head_dim: int,
                  normalise: bool) -> VectorOps:
    """Vector ops of the asynchronised softmax, counted as memsim.algorithms.softmax counts the online one.

    Per score: x * scale - phi 1 FMA (2), the overflow threshold test 1 (where the online softmax
    takes its running max), exp2 1 SFU, row sum 1: softmax.PER_SCORE_OPS; mask select 1 in edge tiles.
    Per (row, tile): l += sum 1. Per row at the end of a split: the overflow test 1; where the split
    is the only one (`normalise`), also O = acc / l head_dim and LSE = phi + log(l) 1 + 1 SFU.
    """
    end = OVERFLOW_TEST_OPS + (head_dim + 2 if normalise else 0)
    cuda = scores_loaded * PER_SCORE_OPS + masked_scores + row_tiles * ASYNC_ROW_TILE_OPS + rows * end
    exp = scores_loaded + (rows if normalise else 0)
    return VectorOps(cuda, exp)


def combine_ops_per_row(splits: int, head_dim: int) -> tuple[VectorOps, VectorOps, VectorOps]:
    """(once the denominators are in, per split, at the end), per output row: sum of the s denominators s
    and LSE = phi + log(sum) 1 + 1 SFU; add each split's numerator head_dim; O = sum / denominator head_dim.
    Flash-Decoding's merge takes 6s + 2 + 2 s head_dim with 2s + 1 exp (fd.combine_vector_ops_per_row)."""
    return VectorOps(splits + 2, 1), VectorOps(head_dim, 0), VectorOps(head_dim, 0)


def check_probability(overflow_probability: float) -> None:
    p = overflow_probability
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise MemsimError(f"overflow_probability = {p!r} must be a probability between 0 and 1 (per row)")


def check_decode(shape: AttentionShape) -> None:
    fd.check_decode(shape, NAME)


def default_tiles(gpu: GPUSpec, shape: AttentionShape) -> TileConfig:
    """Flash-Decoding's tiles and split count."""
    check_decode(shape)
    return fd.default_tiles(gpu, shape)


def _renamed(traffic: dict) -> dict:
    return {(STATISTIC if name == "LSE_partial" else name): t for name, t in traffic.items()}


def split_kernel(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig, name: str = f"{NAME}_split") -> KernelCost:
    """Flash-Decoding's split kernel with the asynchronised softmax: same grid, tiles and bytes; partial
    numerators and denominators (or, with one split, O and LSE) written."""
    check_decode(shape)
    base = fd.split_kernel(gpu, shape, tiles, name=name)
    plan = fd.split_plan(shape, tiles)
    bm, bn, d, s = tiles.block_m, tiles.block_n, shape.head_dim, tiles.num_splits
    rows = fd.decode_rows(shape)
    m_blocks = ceil(rows / bm)
    groups = shape.batch * shape.kv_heads
    vector = async_softmax(m_blocks * bm * bn * plan.tiles, m_blocks * bm * bn * plan.edge_tiles, rows * plan.tiles,
                           rows * s, d, normalise=s == 1)
    dequant = kv_load_work(shape, 2 * m_blocks * plan.keys * d)
    note = f"unified max phi: no running max or rescaling; {vector.cuda_ops * groups:.4g} vector ops"
    return dataclasses.replace(base, cuda_ops=groups * (vector.cuda_ops + dequant.cuda_ops),
                               exp_ops=groups * (vector.exp_ops + dequant.exp_ops),
                               traffic=_renamed(dict(base.traffic)), notes=base.notes + (note,))


def combine_kernel(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig,
                   name: str = f"{NAME}_combine") -> KernelCost:
    """Flash-Decoding's combine grid and bytes; a plain sum of numerators and denominators for the work."""
    base = fd.combine_kernel(gpu, shape, tiles, name=name)
    s, d = tiles.num_splits, shape.head_dim
    rows = shape.batch * shape.q_heads * shape.q_len
    before, per_split, after = combine_ops_per_row(s, d)
    ops = before + VectorOps(per_split.cuda_ops * s, per_split.exp_ops * s) + after
    return dataclasses.replace(base, cuda_ops=rows * ops.cuda_ops, exp_ops=rows * ops.exp_ops,
                               traffic=_renamed(dict(base.traffic)),
                               smem_buffers={"L partials": base.smem_buffers["LSE partials"]})


def recompute_groups(shape: AttentionShape, overflow_probability: float) -> int:
    """(batch, kv head) groups one step recomputes: overflow_probability x batch x kv_heads, to the nearest."""
    check_probability(overflow_probability)
    return floor(overflow_probability * shape.batch * shape.kv_heads + 0.5)


def recompute_shape(shape: AttentionShape, groups: int) -> AttentionShape:
    """The recompute pass as a problem of its own: `groups` sequences, each one kv head with its GQA group."""
    return dataclasses.replace(shape, batch=groups, q_heads=shape.group_size, kv_heads=1)


def kernels(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig, pass_: str,
            overflow_probability: float = DEFAULT_OVERFLOW_PROBABILITY) -> list[KernelCost]:
    require_forward(pass_, NAME)
    check_probability(overflow_probability)
    out = [split_kernel(gpu, shape, tiles)]
    if tiles.num_splits > 1:
        out.append(combine_kernel(gpu, shape, tiles))
    groups = recompute_groups(shape, overflow_probability)
    if groups:
        sub = recompute_shape(shape, groups)
        out.append(fd.split_kernel(gpu, sub, tiles, name=f"{NAME}_recompute_split"))
        if tiles.num_splits > 1:
            out.append(fd.combine_kernel(gpu, sub, tiles, name=f"{NAME}_recompute_combine"))
    return out


def assumptions(overflow_probability: float) -> tuple[str, ...]:
    return fd.ASSUMPTIONS + (
        "a unified max phi chosen offline from the model's statistics replaces the running max: no rescaling, "
        "and the combine sums partial numerators and denominators",
        f"overflow_probability = {overflow_probability:g} per row; a step recomputes that share of the "
        "(batch, kv head) groups, to the nearest whole group, with Flash-Decoding (split + combine) after the "
        "first pass; the overflow flags' bytes are not counted",
    )


def algorithm(overflow_probability: float = DEFAULT_OVERFLOW_PROBABILITY) -> Algorithm:
    """FlashDecoding++ with a given per-row overflow probability (ALGORITHM uses the default)."""
    check_probability(overflow_probability)

    def kernels_(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig, pass_: str) -> list[KernelCost]:
        return kernels(gpu, shape, tiles, pass_, overflow_probability)

    def schedule(shape: AttentionShape, tiles: TileConfig, pass_: str) -> list:
        from memsim.schedules import flash_decoding_pp as sched
        require_forward(pass_, NAME)
        return sched.forward(shape, tiles, overflow_probability)

    return Algorithm(
        name=NAME,
        summary="FlashDecoding++: Flash-Decoding with a unified max: no rescaling, partials summed, overflow redone",
        passes=("fwd",),
        default_tiles=default_tiles,
        kernels=kernels_,
        assumptions=assumptions(overflow_probability),
        decode_only=True,
        schedule=schedule,
    )


ALGORITHM = algorithm()
