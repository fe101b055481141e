"""NSA (Yuan et al. 2025, "Native Sparse Attention: Hardware-Aligned and Natively Trainable Sparse
Attention"): three branches per query, gated and summed. Six launches:
  nsa_compress  compressed keys/values: blocks of l keys at stride d reduced to one token each
  nsa_cmp       attention over the compressed tokens whose block ends at or before the query
  nsa_topk      importance of each selection block of l' keys (compressed-attention probabilities
                recomputed with the saved LSE, remapped to selection blocks and summed over the
                GQA group), top n per query position and kv head; positions with n or fewer
                blocks take them all and need no top-n
  nsa_slc       attention over the n selected blocks, one CTA per (query position, kv head) holding
                the group's query heads as its rows (the paper's group-centric kernel)
  nsa_swa       sliding-window attention over the last w keys (FlashAttention-2 with a window)
  nsa_combine   o = sum over branches of sigmoid(gate) x branch output
The compression is the mean of each block (flash-linear-attention's NSA kernels pool by the mean:
fla-org/native-sparse-attention, `mean_pooling`); the paper's learnable MLP would add its
matmul, about 2 l d^2 FLOPs per compressed token, not modelled. The gate logits come from a
projection of the hidden state outside attention (like Q, K, V): read as an input.

Which blocks a gate picks depends on the data. memsim picks deterministically, so that the
counts are exact and only the names of the tiles depend on the choice: NSA takes the current
block, block 0 and the previous block (the paper's 1 initial and 2 local blocks), then n - 3
others at random (seeded by (seed, batch, kv head, block of the query)), the same for every
query of one selection block. The attention launches and the checks shared with MoBA are in
memsim.algorithms.block_sparse.
"""

import dataclasses
from dataclasses import dataclass
from functools import lru_cache, partial
from math import ceil

import numpy as np

from memsim.algorithms import flash2
from memsim.algorithms.base import Algorithm, registers_estimate, require_forward
from memsim.algorithms.block_sparse import (INDEX_BYTES, AttentionPlan, attention_cost, check_causal_square,
                                            check_whole, seeded_choice)
from memsim.algorithms.pointwise import elementwise_grid, pointwise_kernel
from memsim.algorithms.softmax import VectorOps
from memsim.algorithms.tiling import keys_touched, q_block_tiles
from memsim.errors import MemsimError
from memsim.hardware.spec import GPUSpec
from memsim.kernel import KernelCost, Traffic
from memsim.l2_reuse import shared_hbm_reads
from memsim.occupancy import occupancy
from memsim.workload.dtypes import ACCUMULATOR_BYTES, tensor_core_dtype
from memsim.workload.shape import AttentionShape
from memsim.workload.tiles import TileConfig

MMA_ROWS = 16  # the fewest rows of a tensor-core tile: mma.sync.m16n8k16 (PTX ISA, warp-level matrix multiply)

# NSA, section 4.1 (pretraining setup): compression block l = 32, stride d = 16, selection block
# l' = 64, n = 16 selected blocks (1 initial and 2 local among them), sliding window w = 512.
NSA_CMP_BLOCK = 32
NSA_CMP_STRIDE = 16
NSA_SLC_BLOCK = 64
NSA_SLC_COUNT = 16
NSA_WINDOW = 512
COMPRESS_TOKENS_PER_CTA = 32  # fp32 sums of 32 K and 32 V tokens stay in registers up to d = 256

SIGMOID_OPS, SIGMOID_SFU = 3, 2  # 1 / (1 + exp(-x)): exp (SFU), add, reciprocal (SFU)


@dataclass(frozen=True)
class NsaParams:
    cmp_block: int = NSA_CMP_BLOCK  # l: keys per compressed token
    cmp_stride: int = NSA_CMP_STRIDE  # d: stride between compression blocks
    slc_block: int = NSA_SLC_BLOCK  # l': keys per selection block
    slc_count: int = NSA_SLC_COUNT  # n: selection blocks each query attends to
    window: int = NSA_WINDOW  # w: keys of the sliding window
    seed: int = 0

    def __post_init__(self):
        for name in ("cmp_block", "cmp_stride", "slc_block", "slc_count", "window"):
            check_whole(name, getattr(self, name))
        check_whole("seed", self.seed, 0)
        for name in ("cmp_block", "slc_block"):
            if getattr(self, name) % self.cmp_stride:
                raise MemsimError(f"{name} = {getattr(self, name)} is not a multiple of cmp_stride = "
                                  f"{self.cmp_stride}; NSA maps compression scores to selection blocks only when it is")
        if self.cmp_block > self.slc_block:
            raise MemsimError(f"cmp_block = {self.cmp_block} is longer than slc_block = {self.slc_block}; "
                              f"use cmp_block <= slc_block")


def mma_rows(rows: int) -> int:
    """Rows of the tensor-core tile that holds `rows` query rows: a multiple of 16."""
    return ceil(rows / MMA_ROWS) * MMA_ROWS


# ---- compression --------------------------------------------------------------------------

def compressed_tokens(n: int, p: NsaParams) -> int:
    """Blocks of l keys at stride d that fit in n keys."""
    return (n - p.cmp_block) // p.cmp_stride + 1 if n >= p.cmp_block else 0


def compressed_visible(positions: np.ndarray, p: NsaParams, n: int) -> np.ndarray:
    """Compressed tokens a query at each position sees: those whose block ends at or before it."""
    return np.clip((positions + 1 - p.cmp_block) // p.cmp_stride + 1, 0, compressed_tokens(n, p))


def compress_span(c: int, n_cmp: int, p: NsaParams) -> tuple[int, int, int]:
    """CTA c's compressed tokens: (the first, how many, the end of the keys their blocks cover)."""
    first = c * COMPRESS_TOKENS_PER_CTA
    count = min(COMPRESS_TOKENS_PER_CTA, n_cmp - first)
    return first, count, (first + count - 1) * p.cmp_stride + p.cmp_block


def compress_key_tiles(c: int, n_cmp: int, p: NsaParams, block_n: int) -> range:
    first, _, end = compress_span(c, n_cmp, p)
    return range(first * p.cmp_stride // block_n, -(-end // block_n))


def compress_overlap(c: int, n_cmp: int, p: NsaParams, block_n: int, tile: int) -> int:
    """Keys of key tile `tile` summed into CTA c's compressed tokens, counted once per token."""
    first, count, _ = compress_span(c, n_cmp, p)
    starts = (first + np.arange(count)) * p.cmp_stride
    lo, hi = tile * block_n, (tile + 1) * block_n
    return int(np.maximum(0, np.minimum(hi, starts + p.cmp_block) - np.maximum(lo, starts)).sum())


def compress_smem(shape: AttentionShape, tiles: TileConfig) -> dict[str, int]:
    tile = int(tiles.block_n * shape.head_dim * shape.kv_element_bytes)
    return {"K tiles": tiles.num_stages * tile, "V tiles": tiles.num_stages * tile}


def nsa_compress(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig, p: NsaParams) -> KernelCost:
    """Per compressed token and per K and V: l d adds and d multiplies (the mean).

    Neighbouring CTAs share the key tile where their blocks overlap: CTA c reads it last, CTA c + 1
    first. It comes from HBM once if L2 keeps it meanwhile, i.e. if what the resident CTAs stream
    fits in L2; otherwise both read it from HBM."""
    n, d, bn, kv_e = shape.kv_len, shape.head_dim, tiles.block_n, shape.kv_element_bytes
    n_cmp = compressed_tokens(n, p)
    ctas = ceil(n_cmp / COMPRESS_TOKENS_PER_CTA)
    kv_heads = shape.batch * shape.kv_heads
    grid = kv_heads * ctas
    smem = compress_smem(shape, tiles)
    regs = registers_estimate(2 * COMPRESS_TOKENS_PER_CTA * d, tiles.threads)
    slots = occupancy(gpu, sum(smem.values()), tiles.num_warps, regs, grid, "nsa_compress").slots
    loaded = sum(min(t.stop * bn, n) - t.start * bn for t in (compress_key_tiles(c, n_cmp, p, bn) for c in range(ctas)))
    distinct = min(-(-((n_cmp - 1) * p.cmp_stride + p.cmp_block) // bn) * bn, n)
    streamed_in_flight = min(slots, grid) * 2 * loaded / ctas * d * kv_e  # K and V of the resident CTAs
    from_hbm = distinct if streamed_in_flight <= gpu.l2_bytes else loaded
    kv = Traffic.streamed(read=kv_heads * loaded * d * kv_e, hbm_read=kv_heads * from_hbm * d * kv_e)
    out = Traffic.streamed(write=kv_heads * n_cmp * d * shape.element_bytes)
    return KernelCost(
        name="nsa_compress", grid_ctas=grid, warps_per_cta=tiles.num_warps, smem_buffers=smem,
        registers_per_thread=regs, tensor_flops=0.0,
        tensor_dtype=tensor_core_dtype(shape.dtype), cuda_ops=kv_heads * 2.0 * n_cmp * d * (p.cmp_block + 1),
        exp_ops=0.0, traffic={"K": kv, "V": kv, "K_cmp": out, "V_cmp": out},
        inflight_bytes_per_cta=sum(smem.values()),
    )


def nsa_cmp_plan(shape: AttentionShape, tiles: TileConfig, p: NsaParams) -> AttentionPlan:
    """FlashAttention-2 over the compressed tokens, a CTA per (q tile, q head); a row sees the
    tokens whose block has ended, so tiles past the first row's limit hold masked pairs."""
    bm, bn, n = tiles.block_m, tiles.block_n, shape.q_len
    n_cmp = compressed_tokens(n, p)
    starts = np.arange(ceil(n / bm)) * bm
    rows = np.minimum(starts + bm, n) - starts
    lo = compressed_visible(starts, p, n)
    hi = compressed_visible(starts + rows - 1, p, n)
    count = -(-hi // bn)
    return AttentionPlan(
        name="nsa_cmp", heads=shape.q_heads, heads_per_kv=shape.group_size, rows=rows, tiles=count,
        keys=np.minimum(count * bn, n_cmp), edge_tiles=count - lo // bn, index_bytes=np.zeros_like(rows),
        tile_rows=bm, block_n=bn, key_len=n_cmp, keys_shared=n_cmp,
        order=lambda batch, head, q_tile: range(int(count[q_tile])),
        work_class=lambda batch, head, q_tile: (q_tile, batch, head // shape.group_size),
        kv=("K_cmp", "V_cmp"), out=("O_cmp", "LSE_cmp"),
    )


# ---- choosing blocks ------------------------------------------------------------------------

def topk_positions(shape: AttentionShape, p: NsaParams) -> np.ndarray:
    """Query positions that see more than n selection blocks: only these rank blocks."""
    return np.arange(min(p.slc_count * p.slc_block, shape.q_len), shape.q_len)


def topk_smem(shape: AttentionShape, tiles: TileConfig) -> dict[str, int]:
    d, e = shape.head_dim, shape.element_bytes
    return {"Q tile": int(mma_rows(shape.group_size) * d * e),
            "K_cmp tiles": tiles.num_stages * int(tiles.block_n * d * e)}


def topk_tile_ops(shape: AttentionShape, tiles: TileConfig, p: NsaParams, last: bool) -> VectorOps:
    """Per tile of compressed keys: per score p = exp2(s * scale - lse) (FMA 2, exp 1) and an add into
    the group's sum, a mask select on the last tile; per compressed token l/d adds into the selection
    blocks its block overlaps; per selection block the tile covers, n compares to merge into the top n."""
    scores = mma_rows(shape.group_size) * tiles.block_n
    remap = tiles.block_n * (p.cmp_block // p.cmp_stride)
    merge = tiles.block_n * p.cmp_stride / p.slc_block * p.slc_count
    return VectorOps(scores * 4 + (scores if last else 0) + remap + merge, scores)


def nsa_topk(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig, p: NsaParams) -> KernelCost:
    d, e, bn, g = shape.head_dim, shape.element_bytes, tiles.block_n, shape.group_size
    positions = topk_positions(shape, p)
    n_cmp = compressed_tokens(shape.kv_len, p)
    count = -(-compressed_visible(positions, p, shape.kv_len) // bn)
    kv_heads = shape.batch * shape.kv_heads
    grid = kv_heads * len(positions)
    smem = topk_smem(shape, tiles)
    regs = registers_estimate(mma_rows(g) * bn, tiles.threads)
    slots = occupancy(gpu, sum(smem.values()), tiles.num_warps, regs, grid, "nsa_topk").slots
    middle, last = topk_tile_ops(shape, tiles, p, False), topk_tile_ops(shape, tiles, p, True)
    tile_pairs, with_tiles = float(count.sum()), float((count > 0).sum())
    keys_l2 = kv_heads * float(np.minimum(count * bn, n_cmp).sum()) * d * e
    keys_hbm = shared_hbm_reads(kv_heads, len(positions), slots, n_cmp * d * e, gpu.l2_bytes, keys_l2)
    return KernelCost(
        name="nsa_topk", grid_ctas=grid, warps_per_cta=tiles.num_warps, smem_buffers=smem, registers_per_thread=regs,
        tensor_flops=2.0 * kv_heads * mma_rows(g) * bn * d * tile_pairs, tensor_dtype=tensor_core_dtype(shape.dtype),
        cuda_ops=kv_heads * ((tile_pairs - with_tiles) * middle.cuda_ops + with_tiles * last.cuda_ops),
        exp_ops=kv_heads * tile_pairs * middle.exp_ops,
        traffic={"Q": Traffic.streamed(read=grid * g * d * e),
                 "LSE_cmp": Traffic.streamed(read=grid * g * ACCUMULATOR_BYTES),
                 "K_cmp": Traffic.streamed(read=keys_l2, hbm_read=keys_hbm),
                 "block_index": Traffic.streamed(write=grid * p.slc_count * INDEX_BYTES)},
        inflight_bytes_per_cta=smem["K_cmp tiles"],
    )


@lru_cache(maxsize=65536)
def nsa_selected_blocks(p: NsaParams, batch: int, kv_head: int, current: int) -> tuple[int, ...]:
    """Selection blocks a query in block `current` attends to, in loop order (current last): all
    when there are n or fewer; else the current, the initial and the previous block, and n - 3
    others at random."""
    if current + 1 <= p.slc_count:
        return tuple(range(current + 1))
    fixed = (current, 0, current - 1)[:p.slc_count]
    others = seeded_choice(max(0, p.slc_count - 3), range(1, current - 1), p.seed, batch, kv_head, current)
    return tuple(sorted(set(fixed) | set(others)))


def nsa_slc_plan(shape: AttentionShape, tiles: TileConfig, p: NsaParams) -> AttentionPlan:
    """A CTA per (query position, kv head): the group's q heads are its rows, whole selection
    blocks its key tiles; the query's own block holds its future keys, masked."""
    n, lb = shape.q_len, p.slc_block
    positions = np.arange(n)
    current = positions // lb
    count = np.minimum(p.slc_count, current + 1)
    return AttentionPlan(
        name="nsa_slc", heads=shape.kv_heads, heads_per_kv=1, rows=np.full(n, shape.group_size), tiles=count,
        keys=(count - 1) * lb + np.minimum(lb, n - current * lb), edge_tiles=np.ones(n, dtype=np.int64),
        index_bytes=np.where(current + 1 > p.slc_count, p.slc_count * INDEX_BYTES, 0),
        tile_rows=mma_rows(shape.group_size), block_n=lb, key_len=n, keys_shared=n,
        order=lambda batch, kv_head, t: nsa_selected_blocks(p, batch, kv_head, t // lb),
        work_class=lambda batch, kv_head, t: (batch, kv_head, t // lb),
        out=("O_slc", "LSE_slc"),
    )


def nsa_swa_plan(shape: AttentionShape, tiles: TileConfig, p: NsaParams) -> AttentionPlan:
    """FlashAttention-2 with a window of w keys."""
    windowed = dataclasses.replace(shape, window=p.window)
    blocks = q_block_tiles(windowed, tiles.block_m, tiles.block_n)
    return AttentionPlan(
        name="nsa_swa", heads=shape.q_heads, heads_per_kv=shape.group_size, rows=blocks.rows, tiles=blocks.tiles,
        keys=blocks.keys, edge_tiles=blocks.edge_tiles, index_bytes=np.zeros_like(blocks.rows),
        tile_rows=tiles.block_m, block_n=tiles.block_n, key_len=shape.kv_len, keys_shared=keys_touched(windowed),
        order=lambda batch, head, q_tile: range(int(blocks.first_tile[q_tile]),
                                                int(blocks.first_tile[q_tile] + blocks.tiles[q_tile])),
        work_class=lambda batch, head, q_tile: (q_tile, batch, head // shape.group_size),
        out=("O_swa", "LSE_swa"),
    )


# ---- the gate -----------------------------------------------------------------------------

def nsa_branches(shape: AttentionShape, p: NsaParams) -> tuple[str, ...]:
    """Branch outputs the gate sums: no compressed branch when no block of l keys fits."""
    cmp = ("O_cmp",) if compressed_tokens(shape.kv_len, p) else ()
    return cmp + ("O_slc", "O_swa")


def combine_ops(shape: AttentionShape, p: NsaParams, elements: float) -> VectorOps:
    """Per output element: one multiply and an FMA per further branch; per (row, head) a sigmoid per branch."""
    b = len(nsa_branches(shape, p))
    rows = elements / shape.head_dim
    return VectorOps(elements * (1 + 2 * (b - 1)) + rows * b * SIGMOID_OPS, rows * b * SIGMOID_SFU)


def nsa_combine(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig, p: NsaParams) -> KernelCost:
    e = shape.element_bytes
    elements = float(shape.batch * shape.q_heads * shape.q_len * shape.head_dim)
    branches = nsa_branches(shape, p)
    ops = combine_ops(shape, p, elements)
    reads = {name: elements * e for name in branches}
    reads["gates"] = elements / shape.head_dim * len(branches) * e
    return pointwise_kernel("nsa_combine", elementwise_grid(elements), reads, {"O": elements * e}, ops.cuda_ops,
                            tensor_core_dtype(shape.dtype), exp_ops=ops.exp_ops)


def nsa_kernels(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig, pass_: str,
                params: NsaParams = NsaParams()) -> list[KernelCost]:
    require_forward(pass_, "nsa")
    check_causal_square(shape, "nsa")
    out = []
    if compressed_tokens(shape.kv_len, params):
        out += [nsa_compress(gpu, shape, tiles, params),
                attention_cost(gpu, shape, tiles, nsa_cmp_plan(shape, tiles, params))]
    if len(topk_positions(shape, params)):
        out.append(nsa_topk(gpu, shape, tiles, params))
    return out + [attention_cost(gpu, shape, tiles, nsa_slc_plan(shape, tiles, params)),
                  attention_cost(gpu, shape, tiles, nsa_swa_plan(shape, tiles, params)),
                  nsa_combine(gpu, shape, tiles, params)]


def nsa_default_tiles(gpu: GPUSpec, shape: AttentionShape) -> TileConfig:
    check_causal_square(shape, "nsa")
    return flash2.default_tiles(gpu, shape)


ASSUMPTIONS = (
    "causal, q_len == kv_len; compression is the mean of each block (the paper's MLP is not modelled)",
    "selected blocks: current, initial, previous, then n - 3 at random, seeded, shared by a selection block's queries",
    "selected attention group-centric: one CTA per (query, kv head), the group's q heads padded to 16 rows",
    "gate logits are an input; branch outputs go through HBM to a combining kernel",
)


def _schedule(shape: AttentionShape, tiles: TileConfig, pass_: str, params: NsaParams) -> list:
    from memsim.schedules import nsa as sched
    require_forward(pass_, "nsa")
    return sched.forward(shape, tiles, params)


def algorithm(cmp_block: int = NSA_CMP_BLOCK, cmp_stride: int = NSA_CMP_STRIDE, slc_block: int = NSA_SLC_BLOCK,
              slc_count: int = NSA_SLC_COUNT, window: int = NSA_WINDOW, seed: int = 0,
              name: str = "nsa") -> Algorithm:
    """NSA with compression blocks of `cmp_block` at `cmp_stride`, `slc_count` selected blocks of
    `slc_block` keys and a window of `window` keys."""
    p = NsaParams(cmp_block=cmp_block, cmp_stride=cmp_stride, slc_block=slc_block, slc_count=slc_count,
                  window=window, seed=seed)
    return Algorithm(
        name=name, summary=(f"NSA: compressed (l={cmp_block}, d={cmp_stride}) + top-{slc_count} selected blocks of "
                            f"{slc_block} + window {window}, gated"),
        passes=("fwd",), default_tiles=nsa_default_tiles, kernels=partial(nsa_kernels, params=p),
        assumptions=ASSUMPTIONS, causal_only=True, causal_needs_square=True, windows=False,
        schedule=partial(_schedule, params=p),
    )


ALGORITHM = algorithm()
