"""MoBA (Lu et al. 2025, "MoBA: Mixture of Block Attention for Long-Context LLMs"): block-sparse
attention where keys are cut into blocks of B and a query attends causally to its own (current)
block and to the blocks with the highest gate scores <q, mean of the block's keys>, top-k in all,
the current block counted (the reference code sets its gate to +inf before the top-k). Three launches:
  moba_pool   one CTA per (batch, kv head, block but the last): the mean of the block's keys
  moba_gate   one CTA per query tile that has more earlier blocks than it may take: Q tile x
              pooled keys (the token-level scores of the paper), summed over the tile's rows, top-(k-1)
  moba_attn   FlashAttention-2 over the chosen blocks: each q tile loads k blocks, not all before it
A tiled kernel loads one set of blocks per query tile, so memsim has the rows of a tile choose
together (by their summed scores); MoBA chooses per token, which a tiled kernel serves with
the union of its rows' choices, at least as many blocks. With k >= the number of blocks every
tile takes every earlier block, no gate runs, and moba_attn is FlashAttention-2 exactly.

Which blocks the gate picks depends on the data. memsim picks deterministically, so that the
counts are exact and only the names of the tiles depend on the choice: MoBA takes k - 1 of a
tile's earlier blocks at random (numpy PCG64 seeded by (seed, batch, head, q tile)).
The attention launch and the checks shared with NSA are in memsim.algorithms.block_sparse.
"""

import dataclasses
from dataclasses import dataclass
from functools import lru_cache, partial
from math import ceil, gcd

import numpy as np

from memsim.algorithms import flash2
from memsim.algorithms.base import Algorithm, registers_estimate, require_forward
from memsim.algorithms.block_sparse import (INDEX_BYTES, AttentionPlan, attention_cost, check_causal_square,
                                            check_whole, seeded_choice)
from memsim.algorithms.tiling import QBlockTiles, keys_touched, q_block_tiles
from memsim.errors import MemsimError
from memsim.hardware.spec import GPUSpec
from memsim.kernel import KernelCost, Traffic
from memsim.l2_reuse import shared_hbm_reads
from memsim.occupancy import occupancy
from memsim.workload.dtypes import tensor_core_dtype
from memsim.workload.shape import AttentionShape
from memsim.workload.tiles import TileConfig

# MoBA, section 3.1 (scaling-law runs at 8K context): block size 512, top-k 3, i.e. 81.25% sparse.
MOBA_BLOCK_SIZE = 512
MOBA_TOP_K = 3


@dataclass(frozen=True)
class MobaParams:
    top_k: int = MOBA_TOP_K  # blocks each query tile attends to, its current block included
    block_size: int = MOBA_BLOCK_SIZE  # keys per block
    seed: int = 0  # of the stand-in for the gate's data-dependent choice

    def __post_init__(self):
        check_whole("top_k", self.top_k)
        check_whole("block_size", self.block_size)
        check_whole("seed", self.seed, 0)


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


ASSUMPTIONS = (
    "causal, q_len == kv_len; top_k counts the current block (MoBA's gate forces it)",
    "the rows of a query tile choose their blocks together (summed gate scores); MoBA chooses per token",
    "which blocks: k - 1 earlier blocks at random, seeded; only tile names depend on it, not the counts",
    "K/V of a head come from HBM once if they fit in L2, else once per wave (FlashAttention-2's rule)",
)


def _schedule(shape: AttentionShape, tiles: TileConfig, pass_: str, params: MobaParams) -> list:
    from memsim.schedules import moba as sched
    require_forward(pass_, "moba")
    return sched.forward(shape, tiles, params)


def algorithm(top_k: int = MOBA_TOP_K, block_size: int = MOBA_BLOCK_SIZE, seed: int = 0,
              name: str = "moba") -> Algorithm:
    """MoBA with `top_k` blocks of `block_size` keys per query (the current block among them)."""
    p = MobaParams(top_k=top_k, block_size=block_size, seed=seed)
    return Algorithm(
        name=name,
        summary=f"MoBA: each query tile attends to top-{top_k} blocks of {block_size} keys (current included)",
        passes=("fwd",), default_tiles=partial(moba_default_tiles, p=p), kernels=partial(moba_kernels, params=p),
        assumptions=ASSUMPTIONS, causal_only=True, causal_needs_square=True, windows=False,
        schedule=partial(_schedule, params=p),
    )


ALGORITHM = algorithm()
