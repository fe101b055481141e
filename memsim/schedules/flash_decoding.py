"""Flash-Decoding as a schedule: the split kernel and the combine kernel, CTA by CTA.

Split kernel. Program id p = m_block + M * (split + S * (batch * kv_heads + kv_head)): M blocks
fastest, then splits, as the closed form (memsim.algorithms.flash_decoding) lays out its grid of
batch x kv_heads x M x S CTAs. A CTA loads the packed Q rows of its GQA group (one Q tile per
M block, shared by the group's splits: region (batch, kv_head)); it streams its split's K/V tiles
through num_stages shared-memory buffers, dequantises them where the cache is stored narrower than
the compute type, and writes its rows' partial O (fp32) and LSE; with one split, O and LSE.

Combine kernel. CTA c takes rows [c R, (c + 1) R) of the batch x q_heads x q_len output rows (R from
the closed form's combine_rows_per_cta): it loads every split's LSE of its rows, then each split's
partial O in turn (two in flight), and writes O and LSE.

The split kernel's softmax and its K/V loads are parameters, so PagedAttention (pages for tiles)
and FlashDecoding++ (a unified max for the running max) reuse this file.
"""

from dataclasses import dataclass
from math import ceil
from typing import Callable

import numpy as np

from memsim.algorithms import flash_decoding as fd
from memsim.algorithms.base import registers_estimate
from memsim.algorithms.flash2 import smem_buffers
from memsim.algorithms.kv_quant import kv_load_ops, kv_load_work
from memsim.algorithms.softmax import VectorOps, online_softmax
from memsim.algorithms.tiling import q_block_tiles
from memsim.schedules.steps import CtaProgram, Launch, Load, Loop, Mma, Store, Vector, spill_steps
from memsim.workload.dtypes import ACCUMULATOR_BYTES, tensor_core_dtype
from memsim.workload.shape import AttentionShape
from memsim.workload.tiles import TileConfig

COMBINE_STAGES = 2  # partial O rows in flight per combine CTA (the closed form's inflight_bytes_per_cta)

# (batch, kv_head, first key, one past the last key, first tile of the CTA) -> the loads of one key tile
TileLoads = Callable[[int, int, int, int, bool], tuple[Load, ...]]


@dataclass(frozen=True)
class SplitSoftmax:
    """The split kernel's vector work: per key tile (scores loaded, scores masked, rows) and per row at
    the end of a split; `statistic` names the per-row value written beside each partial O."""

    tile: Callable[[float, float, int], VectorOps]
    end: Callable[[int], VectorOps]
    statistic: str = "LSE_partial"


@dataclass(frozen=True)
class CombineOps:
    """The combine kernel's vector work per output row: once the splits' statistics are in, for each
    split's partial O, and at the end; `statistic` is the tensor it reads, `buffer` its smem name."""

    before: VectorOps
    per_split: VectorOps
    after: VectorOps = VectorOps(0.0, 0.0)
    statistic: str = "LSE_partial"
    buffer: str = "LSE partials"


def vector(ops: VectorOps) -> Vector:
    """A Vector step from softmax-style counts (VectorOps.cuda_ops includes the exp ops; Vector's does not)."""
    return Vector(ops.cuda_ops - ops.exp_ops, ops.exp_ops)


def times(ops: VectorOps, rows: int) -> VectorOps:
    return VectorOps(ops.cuda_ops * rows, ops.exp_ops * rows)


def online(shape: AttentionShape) -> SplitSoftmax:
    """Flash-Decoding's softmax: the online softmax of memsim.algorithms.softmax, per tile and per row."""
    d = shape.head_dim
    return SplitSoftmax(tile=lambda scores, masked, rows: online_softmax(scores, masked, rows, 0, d),
                        end=lambda rows: online_softmax(0, 0, 0, rows, d))


def lse_combine(shape: AttentionShape, splits: int) -> CombineOps:
    """Flash-Decoding's merge, split out of the closed form's per-row count (combine_vector_ops_per_row):
    the part that does not grow with head_dim is the LSE arithmetic, done once; the rest, equal for
    every split, is the weighted sum of the partial O rows."""
    lse_cuda, lse_exp = fd.combine_vector_ops_per_row(splits, 0)
    total_cuda, _ = fd.combine_vector_ops_per_row(splits, shape.head_dim)
    return CombineOps(before=VectorOps(lse_cuda, lse_exp), per_split=VectorOps((total_cuda - lse_cuda) / splits, 0.0))


def edge_tiles(shape: AttentionShape, block_n: int) -> np.ndarray:
    """Which of the key tiles a (batch, kv head) loads hold a masked (row, key) pair (tiling.q_block_tiles
    counts them; this says where they are): the last ones, past the lowest per-row end of a causal or
    window mask, and the first ones, before the highest window start."""
    blocks = q_block_tiles(shape, shape.q_len, block_n)
    tiles, first_tile = int(blocks.tiles[0]), int(blocks.first_tile[0])
    first, last = shape.key_ranges()
    right = first_tile + tiles - int(last.min()) // block_n if (shape.causal or shape.window) else 0
    left = -(-int(first.max()) // block_n) - first_tile if shape.window else 0
    index = np.arange(tiles)
    return (index < left) | (index >= tiles - right)


def contiguous_tiles(shape: AttentionShape, tiles: TileConfig) -> TileLoads:
    """K and V of a (batch, kv head) stored contiguously: tile t holds keys [t BLOCK_N, (t + 1) BLOCK_N)."""
    row_bytes = shape.head_dim * shape.kv_element_bytes

    def loads(batch: int, kv_head: int, lo: int, hi: int, first_of_cta: bool) -> tuple[Load, ...]:
        tile = lo // tiles.block_n
        return (Load("K", (batch, kv_head), tile, (hi - lo) * row_bytes),
                Load("V", (batch, kv_head), tile, (hi - lo) * row_bytes))

    return loads


def split_launch(shape: AttentionShape, tiles: TileConfig, name: str = "flash_decoding_split",
                 softmax: SplitSoftmax | None = None, tile_loads: TileLoads | None = None) -> Launch:
    fd.check_decode(shape)
    bm, bn, d, splits = tiles.block_m, tiles.block_n, shape.head_dim, tiles.num_splits
    plan = fd.split_plan(shape, tiles)
    rows = fd.decode_rows(shape)
    m_blocks = ceil(rows / bm)
    edges = edge_tiles(shape, bn)
    first_tile = int(plan.key_start[0]) // bn
    softmax = softmax or online(shape)
    tile_loads = tile_loads or contiguous_tiles(shape, tiles)
    matmul = Mma(2.0 * bm * bn * d, tensor_core_dtype(shape.dtype))
    dequantises = kv_load_ops(shape, 1.0) > 0  # same for every tile, so every iteration has the same steps
    spill_once, spill_each = spill_steps(tiles.spill_bytes_per_cta, tiles.spill_bytes_per_iteration)

    def locate(pid: int) -> tuple[int, int, int, int]:
        m_block, rest = pid % m_blocks, pid // m_blocks
        split, group = rest % splits, rest // splits
        batch, kv_head = divmod(group, shape.kv_heads)
        return batch, kv_head, split, m_block

    def program(pid: int) -> CtaProgram:
        batch, kv_head, split, m_block = locate(pid)
        rows_here = min(bm, rows - m_block * bm)
        start, end = int(plan.key_start[split]), int(plan.key_end[split])
        first = start // bn

        def tile(i: int) -> tuple[Load, ...]:
            lo = (first + i) * bn
            return tile_loads(batch, kv_head, lo, min(lo + bn, end), i == 0)

        def loads(i: int) -> tuple[Load, ...]:  # prefetched num_stages ahead
            return tile(i) if tiles.v_prefetch else tuple(load for load in tile(i) if load.tensor != "V")

        def compute(i: int):
            keys = min(bn, end - (first + i) * bn)
            masked = bm * bn if edges[first + i - first_tile] else 0
            softmax_step = vector(softmax.tile(bm * bn, masked, rows_here))
            v_now = () if tiles.v_prefetch else tuple(load for load in tile(i) if load.tensor == "V")
            if not dequantises:
                return (matmul, softmax_step, *v_now, matmul, *spill_each)
            convert = vector(kv_load_work(shape, keys * d))  # K before QK^T, V before PV
            return (convert, matmul, softmax_step, *v_now, convert, matmul, *spill_each)

        return CtaProgram(
            prologue=spill_once + (Load("Q", (batch, kv_head), m_block, rows_here * d * shape.element_bytes),),
            loop=Loop(-(-(end - start) // bn), loads, compute),
            epilogue=(vector(softmax.end(rows_here)),
                      *split_outputs(shape, splits, rows_here, softmax.statistic,
                                     fd.split_statistic_bytes(shape, tiles, batch, kv_head, split, m_block),
                                     tiles.lse_output)),
        )

    return Launch(
        name=name, grid=shape.batch * shape.kv_heads * m_blocks * splits, warps_per_cta=tiles.num_warps,
        smem_buffers=smem_buffers(shape, tiles),
        registers_per_thread=registers_estimate(bm * d + bm * bn, tiles.threads),
        num_stages=tiles.num_stages, program=program, work_class=locate,  # each CTA reads its own K/V tiles
    )


def split_outputs(shape: AttentionShape, splits: int, rows: int, statistic: str,
                  statistic_bytes: int, lse_output: bool = True) -> tuple[Store, ...]:
    """One split writes O and LSE as the result (O alone without `lse_output`: TileConfig.lse_output); more write
    each row's fp32 partial O and its statistic (`statistic_bytes`: the sectors its rows' values fall in,
    memsim.sectors.sector_bytes), which the combine needs either way."""
    if splits == 1:
        out = Store("O", None, 0, rows * shape.head_dim * shape.element_bytes)
        return (out, Store("LSE", None, 0, statistic_bytes)) if lse_output else (out,)
    return (Store("O_partial", None, 0, rows * shape.head_dim * ACCUMULATOR_BYTES),
            Store(statistic, None, 0, statistic_bytes))


def combine_launch(shape: AttentionShape, tiles: TileConfig, name: str = "flash_decoding_combine",
                   ops: CombineOps | None = None) -> Launch:
    splits, d = tiles.num_splits, shape.head_dim
    ops = ops or lse_combine(shape, splits)
    rows = shape.batch * shape.q_heads * shape.q_len
    per_cta = fd.combine_rows_per_cta(d)

    def rows_of(cta: int) -> int:
        return min(per_cta, rows - cta * per_cta)

    def program(cta: int) -> CtaProgram:
        r = rows_of(cta)
        return CtaProgram(
            prologue=(Load(ops.statistic, None, 0, splits * r * ACCUMULATOR_BYTES), vector(times(ops.before, r))),
            loop=Loop(splits, lambda i: (Load("O_partial", None, i, r * d * ACCUMULATOR_BYTES),),
                      lambda i: (vector(times(ops.per_split, r)),)),
            epilogue=(vector(times(ops.after, r)), Store("O", None, 0, r * d * shape.element_bytes),
                      *((Store("LSE", None, 0, fd.combine_statistic_bytes(rows, per_cta, cta)),)
                        if tiles.lse_output else ())),
        )

    return Launch(
        name=name, grid=ceil(rows / per_cta), warps_per_cta=fd.COMBINE_THREADS // 32,
        smem_buffers={ops.buffer: splits * per_cta * ACCUMULATOR_BYTES},
        registers_per_thread=registers_estimate(per_cta * d, fd.COMBINE_THREADS), num_stages=COMBINE_STAGES,
        program=program, work_class=rows_of,  # only private tiles: CTAs with as many rows are alike
    )


def forward(shape: AttentionShape, tiles: TileConfig) -> list[Launch]:
    launches = [split_launch(shape, tiles)]
    if tiles.num_splits > 1:
        launches.append(combine_launch(shape, tiles))
    return launches
