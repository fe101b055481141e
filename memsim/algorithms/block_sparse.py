"""Block-sparse attention: each query attends to a few blocks of keys that a gate picks.

MoBA (Lu et al. 2025, "MoBA: Mixture of Block Attention for Long-Context LLMs"): keys are cut
into blocks of B; a query attends causally to its own (current) block and to the blocks with
the highest gate scores <q, mean of the block's keys>, top-k in all, the current block counted
(the reference code sets its gate to +inf before the top-k). Three launches:
  moba_pool   one CTA per (batch, kv head, block but the last): the mean of the block's keys
  moba_gate   one CTA per query tile that has more earlier blocks than it may take: Q tile x
              pooled keys (the token-level scores of the paper), summed over the tile's rows, top-(k-1)
  moba_attn   FlashAttention-2 over the chosen blocks: each q tile loads k blocks, not all before it
A tiled kernel loads one set of blocks per query tile, so memsim has the rows of a tile choose
together (by their summed scores); MoBA chooses per token, which a tiled kernel serves with
the union of its rows' choices, at least as many blocks. With k >= the number of blocks every
tile takes every earlier block, no gate runs, and moba_attn is FlashAttention-2 exactly.

NSA (Yuan et al. 2025, "Native Sparse Attention: Hardware-Aligned and Natively Trainable Sparse
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
counts are exact and only the names of the tiles depend on the choice: MoBA takes k - 1 of a
tile's earlier blocks at random (numpy PCG64 seeded by (seed, batch, head, q tile)); NSA takes
the current block, block 0 and the previous block (the paper's 1 initial and 2 local blocks),
then n - 3 others at random (seeded by (seed, batch, kv head, block of the query)), the same for
every query of one selection block.
"""

import dataclasses
from dataclasses import dataclass
from functools import lru_cache, partial
from math import ceil, gcd
from typing import Callable, Hashable, Sequence

import numpy as np

from memsim.algorithms import flash2
from memsim.algorithms.base import Algorithm, registers_estimate, require_forward
from memsim.algorithms.pointwise import elementwise_grid, pointwise_kernel
from memsim.algorithms.softmax import VectorOps, online_softmax
from memsim.algorithms.tiling import QBlockTiles, keys_touched, q_block_tiles
from memsim.errors import MemsimError
from memsim.hardware.spec import GPUSpec
from memsim.kernel import KernelCost, Traffic
from memsim.l2_reuse import shared_hbm_reads
from memsim.occupancy import occupancy
from memsim.workload.dtypes import ACCUMULATOR_BYTES, tensor_core_dtype
from memsim.workload.shape import AttentionShape
from memsim.workload.tiles import TileConfig

INDEX_BYTES = 4  # a chosen block's index, int32
MMA_ROWS = 16  # the fewest rows of a tensor-core tile: mma.sync.m16n8k16 (PTX ISA, warp-level matrix multiply)

# MoBA, section 3.1 (scaling-law runs at 8K context): block size 512, top-k 3, i.e. 81.25% sparse.
MOBA_BLOCK_SIZE = 512
MOBA_TOP_K = 3

# NSA, section 4.1 (pretraining setup): compression block l = 32, stride d = 16, selection block
# l' = 64, n = 16 selected blocks (1 initial and 2 local among them), sliding window w = 512.
NSA_CMP_BLOCK = 32
NSA_CMP_STRIDE = 16
NSA_SLC_BLOCK = 64
NSA_SLC_COUNT = 16
NSA_WINDOW = 512
COMPRESS_TOKENS_PER_CTA = 32  # fp32 sums of 32 K and 32 V tokens stay in registers up to d = 256

SIGMOID_OPS, SIGMOID_SFU = 3, 2  # 1 / (1 + exp(-x)): exp (SFU), add, reciprocal (SFU)


def _whole(name: str, value: object, least: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise MemsimError(f"{name} = {value!r} must be a whole number >= {least}")


@dataclass(frozen=True)
class MobaParams:
    top_k: int = MOBA_TOP_K  # blocks each query tile attends to, its current block included
    block_size: int = MOBA_BLOCK_SIZE  # keys per block
    seed: int = 0  # of the stand-in for the gate's data-dependent choice

    def __post_init__(self):
        _whole("top_k", self.top_k)
        _whole("block_size", self.block_size)
        _whole("seed", self.seed, 0)


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
            _whole(name, getattr(self, name))
        _whole("seed", self.seed, 0)
        for name in ("cmp_block", "slc_block"):
            if getattr(self, name) % self.cmp_stride:
                raise MemsimError(f"{name} = {getattr(self, name)} is not a multiple of cmp_stride = "
                                  f"{self.cmp_stride}; NSA maps compression scores to selection blocks only when it is")
        if self.cmp_block > self.slc_block:
            raise MemsimError(f"cmp_block = {self.cmp_block} is longer than slc_block = {self.slc_block}; "
                              f"use cmp_block <= slc_block")


def check_causal_square(shape: AttentionShape, algo: str) -> None:
    if not shape.causal:
        raise MemsimError(f"{algo} models causal attention only; set causal (--causal)")
    if shape.q_len != shape.kv_len:
        raise MemsimError(f"{algo} needs q_len == kv_len (blocks are cut over the whole sequence), "
                          f"got q_len = {shape.q_len}, kv_len = {shape.kv_len}")
    if shape.window is not None:
        raise MemsimError(f"window = {shape.window} is not modelled for {algo}; drop the window")


def mma_rows(rows: int) -> int:
    """Rows of the tensor-core tile that holds `rows` query rows: a multiple of 16."""
    return ceil(rows / MMA_ROWS) * MMA_ROWS


def seeded_choice(count: int, candidates: Sequence[int], *key: int) -> list[int]:
    """`count` of `candidates`, chosen at random but the same on every run for the same key."""
    rng = np.random.default_rng(list(key))
    return sorted(int(c) for c in rng.choice(np.asarray(candidates), size=count, replace=False))


# ---- FlashAttention-2 over chosen key tiles: shared by moba_attn, nsa_cmp, nsa_slc, nsa_swa ----

@dataclass(frozen=True)
class AttentionPlan:
    """What the CTAs of one (batch, head) of an attention launch do; arrays are per CTA.

    Program id p = cta + ctas * (batch * heads + head), cta fastest. `heads` is q_heads for a
    CTA per q head, kv_heads for a group-centric CTA holding all q heads of a group as rows.
    """

    name: str
    heads: int
    heads_per_kv: int  # heads that share one kv head's tiles
    rows: np.ndarray  # valid query rows
    tiles: np.ndarray  # key tiles loaded
    keys: np.ndarray  # valid keys in them
    edge_tiles: np.ndarray  # tiles with masked pairs (the last ones of a CTA's loop)
    index_bytes: np.ndarray  # block indices read first
    tile_rows: int  # rows of the tensor-core tile (whole tiles are computed)
    block_n: int  # keys per tile
    key_len: int  # keys of the key tensor per kv head
    keys_shared: int  # distinct keys the CTAs of one kv head read
    order: Callable[[int, int, int], Sequence[int]]  # (batch, head, cta) -> key tiles in loop order
    work_class: Callable[[int, int, int], Hashable]  # (batch, head, cta) -> equal for equal work on equal tiles
    kv: tuple[str, str] = ("K", "V")
    out: tuple[str, str] = ("O", "LSE")

    @property
    def ctas(self) -> int:
        return len(self.rows)


def attention_smem(shape: AttentionShape, tiles: TileConfig, plan: AttentionPlan) -> dict[str, int]:
    """flash2's buffers with the plan's tile: the Q tile, num_stages K and V tiles."""
    kv_tile = int(plan.block_n * shape.head_dim * shape.kv_element_bytes)
    return {"Q tile": int(plan.tile_rows * shape.head_dim * shape.element_bytes),
            "K tiles": tiles.num_stages * kv_tile, "V tiles": tiles.num_stages * kv_tile}


def attention_registers(shape: AttentionShape, tiles: TileConfig, plan: AttentionPlan) -> int:
    return registers_estimate(plan.tile_rows * shape.head_dim + plan.tile_rows * plan.block_n, tiles.threads)


def attention_cost(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig, plan: AttentionPlan) -> KernelCost:
    d, e, kv_e = shape.head_dim, shape.element_bytes, shape.kv_element_bytes
    heads = shape.batch * plan.heads
    grid = plan.ctas * heads
    smem = attention_smem(shape, tiles, plan)
    regs = attention_registers(shape, tiles, plan)
    slots = occupancy(gpu, sum(smem.values()), tiles.num_warps, regs, grid, plan.name).slots
    scores_per_tile = plan.tile_rows * plan.block_n
    tile_pairs = float(plan.tiles.sum())
    vector = online_softmax(scores_per_tile * tile_pairs, scores_per_tile * float(plan.edge_tiles.sum()),
                            float((plan.rows * plan.tiles).sum()), float(plan.rows.sum()), d)
    kv_l2 = heads * float(plan.keys.sum()) * d * kv_e
    shared = plan.keys_shared * d * kv_e
    kv_hbm = shared_hbm_reads(shape.batch * shape.kv_heads, plan.heads_per_kv * plan.ctas, slots, shared,
                              gpu.l2_bytes, kv_l2, working_set_per_group=2 * shared)  # K and V together
    rows = heads * float(plan.rows.sum())
    k, v = plan.kv
    o, lse = plan.out
    traffic = {"Q": Traffic.streamed(read=rows * d * e),
               k: Traffic.streamed(read=kv_l2, hbm_read=kv_hbm), v: Traffic.streamed(read=kv_l2, hbm_read=kv_hbm),
               o: Traffic.streamed(write=rows * d * e), lse: Traffic.streamed(write=rows * ACCUMULATOR_BYTES)}
    if plan.index_bytes.any():
        traffic["block_index"] = Traffic.streamed(read=heads * float(plan.index_bytes.sum()))
    return KernelCost(
        name=plan.name, grid_ctas=grid, warps_per_cta=tiles.num_warps, smem_buffers=smem, registers_per_thread=regs,
        tensor_flops=4.0 * heads * scores_per_tile * d * tile_pairs, tensor_dtype=tensor_core_dtype(shape.dtype),
        cuda_ops=heads * vector.cuda_ops, exp_ops=heads * vector.exp_ops, traffic=traffic,
        inflight_bytes_per_cta=tiles.num_stages * 2 * plan.block_n * d * kv_e,
    )


# ---- MoBA ---------------------------------------------------------------------------------

def check_moba(shape: AttentionShape, tiles: TileConfig, p: MobaParams) -> None:
    check_causal_square(shape, "moba")
    for name in ("block_m", "block_n"):
        if p.block_size % getattr(tiles, name):
            raise MemsimError(f"block_size = {p.block_size} is not a multiple of {name} = {getattr(tiles, name)}; "
                              f"MoBA blocks must be whole tiles: use a {name} that divides {p.block_size}")


def moba_blocks(shape: AttentionShape, p: MobaParams) -> int:
    return ceil(shape.kv_len / p.block_size)


@dataclass(frozen=True)
class MobaLayout:
    """Per query tile of one head (FlashAttention-2's causal tiles, `blocks`): the block it lies
    in, how many earlier blocks it attends to, and whether a gate chooses them."""

    blocks: QBlockTiles
    current: np.ndarray
    earlier: np.ndarray  # min(k - 1, current)
    gated: np.ndarray  # current > k - 1 > 0: more earlier blocks than it may take, and it takes some

    @property
    def gated_tiles(self) -> np.ndarray:
        return np.flatnonzero(self.gated)


def moba_layout(shape: AttentionShape, tiles: TileConfig, p: MobaParams) -> MobaLayout:
    check_moba(shape, tiles, p)
    blocks = q_block_tiles(shape, tiles.block_m, tiles.block_n)
    current = np.arange(blocks.t_r) * tiles.block_m // p.block_size
    earlier = np.minimum(p.top_k - 1, current)
    return MobaLayout(blocks, current, earlier, (current > p.top_k - 1) & (p.top_k > 1))


@lru_cache(maxsize=65536)
def moba_earlier_blocks(p: MobaParams, batch: int, head: int, q_tile: int, current: int) -> tuple[int, ...]:
    """The earlier blocks a q tile attends to: all of them when it may take them all, else k - 1 at random."""
    if current <= p.top_k - 1:
        return tuple(range(current))
    return tuple(seeded_choice(p.top_k - 1, range(current), p.seed, batch, head, q_tile))


def moba_attention_plan(shape: AttentionShape, tiles: TileConfig, p: MobaParams) -> AttentionPlan:
    layout = moba_layout(shape, tiles, p)
    blocks, current, earlier = layout.blocks, layout.current, layout.earlier
    per_block = p.block_size // tiles.block_n

    def order(batch: int, head: int, q_tile: int) -> list[int]:
        cur = int(current[q_tile])
        chosen = moba_earlier_blocks(p, batch, head, q_tile, cur)
        return [b * per_block + j for b in chosen for j in range(per_block)] + \
            list(range(cur * per_block, int(blocks.tiles[q_tile])))

    return AttentionPlan(
        name="moba_attn", heads=shape.q_heads, heads_per_kv=shape.group_size, rows=blocks.rows,
        tiles=blocks.tiles - (current - earlier) * per_block, keys=blocks.keys - (current - earlier) * p.block_size,
        edge_tiles=blocks.edge_tiles, index_bytes=np.where(layout.gated, (p.top_k - 1) * INDEX_BYTES, 0),
        tile_rows=tiles.block_m, block_n=tiles.block_n, key_len=shape.kv_len, keys_shared=keys_touched(shape),
        order=order, work_class=lambda batch, head, q_tile: (q_tile, batch, head),
    )


def pool_smem(shape: AttentionShape, tiles: TileConfig) -> dict[str, int]:
    return {"K tiles": tiles.num_stages * int(tiles.block_n * shape.head_dim * shape.kv_element_bytes)}


def moba_pool(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig, p: MobaParams) -> KernelCost:
    """Mean of each block's keys but the last block's (never an earlier block): B d adds, d multiplies."""
    d = shape.head_dim
    grid = shape.batch * shape.kv_heads * (moba_blocks(shape, p) - 1)
    smem = pool_smem(shape, tiles)
    return KernelCost(
        name="moba_pool", grid_ctas=grid, warps_per_cta=tiles.num_warps, smem_buffers=smem,
        registers_per_thread=registers_estimate(tiles.block_n * d, tiles.threads), tensor_flops=0.0,
        tensor_dtype=tensor_core_dtype(shape.dtype), cuda_ops=grid * (p.block_size * d + d), exp_ops=0.0,
        traffic={"K": Traffic.streamed(read=grid * p.block_size * d * shape.kv_element_bytes),
                 "K_mean": Traffic.streamed(write=grid * d * shape.element_bytes)},
        inflight_bytes_per_cta=smem["K tiles"],
    )


def gate_smem(shape: AttentionShape, tiles: TileConfig) -> dict[str, int]:
    d, e = shape.head_dim, shape.element_bytes
    return {"Q tile": int(tiles.block_m * d * e), "K_mean tiles": tiles.num_stages * int(tiles.block_n * d * e)}


def gate_tile_ops(tiles: TileConfig, last: bool) -> float:
    """Per tile of pooled keys: each score added into its block's column sum; the last tile also
    masks the current and later blocks (a select per score)."""
    scores = tiles.block_m * tiles.block_n
    return float(scores + (scores if last else 0))


def gate_select_ops(p: MobaParams, current: int) -> float:
    """Top-(k - 1) of `current` summed scores: k - 1 passes of compare-and-keep."""
    return float((p.top_k - 1) * current)


def moba_gate(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig, p: MobaParams) -> KernelCost:
    layout = moba_layout(shape, tiles, p)
    gated = layout.gated_tiles
    bm, bn, d, e = tiles.block_m, tiles.block_n, shape.head_dim, shape.element_bytes
    heads = shape.batch * shape.q_heads
    grid = heads * len(gated)
    pooled = moba_blocks(shape, p) - 1
    current = layout.current[gated]
    pooled_tiles = -(-current // bn)
    smem = gate_smem(shape, tiles)
    regs = registers_estimate(bm * bn, tiles.threads)
    slots = occupancy(gpu, sum(smem.values()), tiles.num_warps, regs, grid, "moba_gate").slots
    cuda = sum((t - 1) * gate_tile_ops(tiles, False) + gate_tile_ops(tiles, True) + gate_select_ops(p, int(c))
               for t, c in zip(pooled_tiles, current))
    means_l2 = heads * float(np.minimum(pooled_tiles * bn, pooled).sum()) * d * e
    means_hbm = shared_hbm_reads(shape.batch * shape.kv_heads, shape.group_size * len(gated), slots, pooled * d * e,
                                 gpu.l2_bytes, means_l2)
    return KernelCost(
        name="moba_gate", grid_ctas=grid, warps_per_cta=tiles.num_warps, smem_buffers=smem, registers_per_thread=regs,
        tensor_flops=2.0 * heads * bm * bn * d * float(pooled_tiles.sum()), tensor_dtype=tensor_core_dtype(shape.dtype),
        cuda_ops=heads * cuda, exp_ops=0.0,
        traffic={"Q": Traffic.streamed(read=heads * float(layout.blocks.rows[gated].sum()) * d * e),
                 "K_mean": Traffic.streamed(read=means_l2, hbm_read=means_hbm),
                 "block_index": Traffic.streamed(write=grid * (p.top_k - 1) * INDEX_BYTES)},
        inflight_bytes_per_cta=smem["K_mean tiles"],
    )


def moba_default_tiles(gpu: GPUSpec, shape: AttentionShape, p: MobaParams) -> TileConfig:
    """FlashAttention-2's tiles, cut down where needed to divide the block size."""
    check_causal_square(shape, "moba")
    base = flash2.default_tiles(gpu, shape)
    return dataclasses.replace(base, block_m=gcd(base.block_m, p.block_size), block_n=gcd(base.block_n, p.block_size))


def moba_kernels(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig, pass_: str,
                 params: MobaParams = MobaParams()) -> list[KernelCost]:
    require_forward(pass_, "moba")
    attend = attention_cost(gpu, shape, tiles, moba_attention_plan(shape, tiles, params))
    if not moba_layout(shape, tiles, params).gated.any():
        return [attend]  # every tile takes every earlier block: FlashAttention-2
    return [moba_pool(gpu, shape, tiles, params), moba_gate(gpu, shape, tiles, params), attend]


# ---- NSA: compression ---------------------------------------------------------------------

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


# ---- NSA: choosing blocks -------------------------------------------------------------------

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


# ---- NSA: the gate ------------------------------------------------------------------------

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


# ---- the algorithms -------------------------------------------------------------------------

MOBA_ASSUMPTIONS = (
    "causal, q_len == kv_len; top_k counts the current block (MoBA's gate forces it)",
    "the rows of a query tile choose their blocks together (summed gate scores); MoBA chooses per token",
    "which blocks: k - 1 earlier blocks at random, seeded; only tile names depend on it, not the counts",
    "K/V of a head come from HBM once if they fit in L2, else once per wave (FlashAttention-2's rule)",
)

NSA_ASSUMPTIONS = (
    "causal, q_len == kv_len; compression is the mean of each block (the paper's MLP is not modelled)",
    "selected blocks: current, initial, previous, then n - 3 at random, seeded, shared by a selection block's queries",
    "selected attention group-centric: one CTA per (query, kv head), the group's q heads padded to 16 rows",
    "gate logits are an input; branch outputs go through HBM to a combining kernel",
)


def _moba_schedule(shape: AttentionShape, tiles: TileConfig, pass_: str, params: MobaParams) -> list:
    from memsim.schedules import block_sparse as sched
    require_forward(pass_, "moba")
    return sched.moba(shape, tiles, params)


def _nsa_schedule(shape: AttentionShape, tiles: TileConfig, pass_: str, params: NsaParams) -> list:
    from memsim.schedules import block_sparse as sched
    require_forward(pass_, "nsa")
    return sched.nsa(shape, tiles, params)


def moba(top_k: int = MOBA_TOP_K, block_size: int = MOBA_BLOCK_SIZE, seed: int = 0, name: str = "moba") -> Algorithm:
    """MoBA with `top_k` blocks of `block_size` keys per query (the current block among them)."""
    p = MobaParams(top_k=top_k, block_size=block_size, seed=seed)
    return Algorithm(
        name=name,
        summary=f"MoBA: each query tile attends to top-{top_k} blocks of {block_size} keys (current included)",
        passes=("fwd",), default_tiles=partial(moba_default_tiles, p=p), kernels=partial(moba_kernels, params=p),
        assumptions=MOBA_ASSUMPTIONS, causal_only=True, causal_needs_square=True, windows=False,
        schedule=partial(_moba_schedule, params=p),
    )


def nsa(cmp_block: int = NSA_CMP_BLOCK, cmp_stride: int = NSA_CMP_STRIDE, slc_block: int = NSA_SLC_BLOCK,
        slc_count: int = NSA_SLC_COUNT, window: int = NSA_WINDOW, seed: int = 0, name: str = "nsa") -> Algorithm:
    """NSA with compression blocks of `cmp_block` at `cmp_stride`, `slc_count` selected blocks of
    `slc_block` keys and a window of `window` keys."""
    p = NsaParams(cmp_block=cmp_block, cmp_stride=cmp_stride, slc_block=slc_block, slc_count=slc_count,
                  window=window, seed=seed)
    return Algorithm(
        name=name, summary=(f"NSA: compressed (l={cmp_block}, d={cmp_stride}) + top-{slc_count} selected blocks of "
                            f"{slc_block} + window {window}, gated"),
        passes=("fwd",), default_tiles=nsa_default_tiles, kernels=partial(nsa_kernels, params=p),
        assumptions=NSA_ASSUMPTIONS, causal_only=True, causal_needs_square=True, windows=False,
        schedule=partial(_nsa_schedule, params=p),
    )


ALGORITHM_MOBA = moba()
ALGORITHM_NSA = nsa()
