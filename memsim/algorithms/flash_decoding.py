"""Flash-Decoding (Dao, Haziza, Massa, Sizov 2023): split the keys of each (batch, kv head)
across CTAs, so a decode step with few queries still fills the GPU; a second kernel combines
the splits' partial outputs through their log-sum-exps.

Kernel 1 (split): grid batch x kv_heads x M blocks x num_splits, M block fastest, then split.
One CTA takes every query head of its GQA group, and every one of the q_len rows, as the
rows of its Q tile (FA2's decode path packs GQA the same way), so K and V of a kv head are
read once per split, not once per q head. Where data lives: the Q tile and the fp32
accumulator stay on chip; the split's K/V tiles stream through `num_stages` shared-memory
buffers; the partial O (fp32) and LSE of every row go out to global memory.

Kernel 2 (combine): one CTA per few output rows reads every split's partial O and LSE,
weights each by exp(lse_i - lse) and writes O and the final LSE. One split: no combine;
kernel 1 writes O directly.
"""

from dataclasses import dataclass, replace
from math import ceil

import numpy as np

from memsim.algorithms.base import Algorithm, fit_shared_memory, registers_estimate, require_forward
from memsim.algorithms.flash2 import smem_buffers, spill_tensor
from memsim.algorithms.kv_quant import kv_load_work
from memsim.algorithms.softmax import online_softmax
from memsim.algorithms.tiling import q_block_tiles
from memsim.errors import MemsimError
from memsim.hardware.spec import GPUSpec
from memsim.kernel import KernelCost, Traffic
from memsim.l2_reuse import shared_hbm_reads
from memsim.occupancy import occupancy
from memsim.sectors import sector_bytes, sector_period
from memsim.workload.dtypes import ACCUMULATOR_BYTES, tensor_core_dtype
from memsim.workload.shape import AttentionShape
from memsim.workload.tiles import TileConfig

MAX_DECODE_Q_LEN = 16  # query tokens per sequence a decode kernel takes (speculative decoding's few drafts)
MAX_SPLITS = 128  # FA2 flash_api.cpp caps num_splits at 128 (its combine kernel handles up to 2^7)
MIN_BLOCK_M = 16  # tensor-core tile M (mma.m16n8k16); Triton's tl.dot needs M >= 16
MAX_BLOCK_M = 64  # FA2 run_mha_fwd_splitkv_dispatch: kBlockM = 64 for every head dim
FILLED_FRACTION = 0.8  # FA2 num_splits_heuristic: no split once the grid fills 80% of the SMs
EFFICIENCY_FRACTION = 0.85  # FA2 num_splits_heuristic: smallest split count within 85% of the best
COMBINE_THREADS = 128  # FA2 flash_fwd_splitkv_combine_kernel launch: 128 threads

ASSUMPTIONS = (
    "decode only: q_len <= 16; the GQA group's q heads x q_len rows share one Q tile, padded to BLOCK_M",
    "K/V of each split come from HBM once (one CTA, or the M blocks of one split in step, reads them)",
    "Q is read from L2 by every split of its group and from HBM once",
    "partial O (fp32) and LSE are written back to HBM and the combine reads them from HBM: every kernel "
    "starts from a cold L2, as Nsight Compute measures it; back to back they would hit in L2",
    "tensor cores run whole tiles, padded rows and masked keys included",
)


def check_decode(shape: AttentionShape, algo: str = "flash_decoding") -> None:
    if shape.q_len > MAX_DECODE_Q_LEN:
        raise MemsimError(
            f"q_len = {shape.q_len} is too long for {algo}, a decode kernel (at most {MAX_DECODE_Q_LEN} "
            f"query tokens per sequence); use flash2 for prefill")


def decode_rows(shape: AttentionShape) -> int:
    """Rows of the packed Q tile of one (batch, kv head): its q heads x q_len."""
    return shape.group_size * shape.q_len


def decode_block_m(shape: AttentionShape) -> int:
    """The smallest power of two >= 16 holding the packed rows, at most FA2's 64."""
    rows = decode_rows(shape)
    return min(MAX_BLOCK_M, max(MIN_BLOCK_M, 1 << (rows - 1).bit_length()))


def decode_block_n(head_dim: int) -> int:
    """FA2 run_mha_fwd_splitkv_dispatch: kBlockN = 256 for d <= 64, 128 for d <= 128, 64 above."""
    return 256 if head_dim <= 64 else 128 if head_dim <= 128 else 64


def key_tiles(shape: AttentionShape, block_n: int) -> int:
    """BLOCK_N tiles of keys that some query of a (batch, kv head) sees."""
    return int(q_block_tiles(shape, shape.q_len, block_n).tiles[0])


def _has_empty_split(tiles: int, splits: int) -> bool:
    return (splits - 1) * ceil(tiles / splits) >= tiles


def _wave_efficiency(ctas: int, sm_count: int) -> float:
    return ctas / (ceil(ctas / sm_count) * sm_count)


def num_splits_heuristic(gpu: GPUSpec, shape: AttentionShape, block_n: int) -> int:
    """Split count for a decode step, in the spirit of FlashAttention-2's `num_splits_heuristic`.

    Without splits the grid has batch x kv_heads x M-block CTAs. Splitting multiplies that
    by s; wave efficiency is ctas / (waves x sm_count), the busy fraction of the SMs over the
    kernel's waves. More splits cost partial writes and a combine, so:
    1. a grid that already fills 80% of the SMs is not split (FA2 does the same);
    2. otherwise, among s = 1 .. min(128, key tiles), leaving out counts that would leave a
       split with no tile (ceil(tiles / s) tiles each), find the best efficiency and return
       the smallest s reaching 85% of it. Example: batch 1, 8 kv heads, 512 key tiles, 132
       SMs: the best is s = 16 (128 CTAs, 97% of one wave; s = 33 would fill two waves but
       leaves its last split empty); s = 14 (112 CTAs, 84.8% >= 0.85 x 97%) is chosen.
    """
    check_decode(shape)
    tiles = key_tiles(shape, block_n)
    base = shape.batch * shape.kv_heads * ceil(decode_rows(shape) / decode_block_m(shape))
    if base >= FILLED_FRACTION * gpu.sm_count:
        return 1
    candidates = [s for s in range(1, min(MAX_SPLITS, tiles) + 1) if not _has_empty_split(tiles, s)]
    efficiency = {s: _wave_efficiency(base * s, gpu.sm_count) for s in candidates}
    best = max(efficiency.values())
    return min(s for s in candidates if efficiency[s] >= EFFICIENCY_FRACTION * best)


def default_tiles(gpu: GPUSpec, shape: AttentionShape) -> TileConfig:
    """FA2's split-KV tiles (BLOCK_N by head dim, 4 warps), BLOCK_M fitted to the packed GQA
    rows, and the split count of `num_splits_heuristic`."""
    check_decode(shape)
    tiles = fit_shared_memory(gpu, TileConfig(block_m=decode_block_m(shape), block_n=decode_block_n(shape.head_dim),
                                              num_warps=4, num_stages=2), lambda t: smem_buffers(shape, t))
    return replace(tiles, num_splits=num_splits_heuristic(gpu, shape, tiles.block_n))


@dataclass(frozen=True)
class SplitPlan:
    """How the key tiles of one (batch, kv head) fall into splits; arrays have one entry per split."""

    tiles: int  # key tiles the queries see
    tiles_per_split: int
    key_start: np.ndarray  # first key a split loads
    key_end: np.ndarray  # one past its last (== key_start for an empty split)
    edge_tiles: int  # tiles with some masked (row, key) pair

    @property
    def num_splits(self) -> int:
        return len(self.key_start)

    @property
    def keys(self) -> int:
        return int((self.key_end - self.key_start).sum())


def split_plan(shape: AttentionShape, tiles: TileConfig) -> SplitPlan:
    blocks = q_block_tiles(shape, shape.q_len, tiles.block_n)
    total, first = int(blocks.tiles[0]), int(blocks.first_tile[0])
    if tiles.num_splits > total:
        raise MemsimError(
            f"num_splits = {tiles.num_splits} is more than the {total} key tiles of BLOCK_N = {tiles.block_n} "
            f"over kv_len = {shape.kv_len}; use num_splits <= {total}")
    per = ceil(total / tiles.num_splits)
    lo = np.minimum(np.arange(tiles.num_splits) * per, total)
    hi = np.minimum(lo + per, total)
    start = (first + lo) * tiles.block_n
    end = np.where(hi > lo, np.minimum((first + hi) * tiles.block_n, shape.kv_len), start)
    return SplitPlan(total, per, start, end, int(blocks.edge_tiles[0]))


def split_kernel(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig,
                 name: str = "flash_decoding_split") -> KernelCost:
    check_decode(shape)
    bm, bn, d, s = tiles.block_m, tiles.block_n, shape.head_dim, tiles.num_splits
    plan = split_plan(shape, tiles)
    rows = decode_rows(shape)
    m_blocks = ceil(rows / bm)
    groups = shape.batch * shape.kv_heads
    grid = groups * m_blocks * s
    smem = smem_buffers(shape, tiles)
    regs = registers_estimate(bm * d + bm * bn, tiles.threads)
    slots = occupancy(gpu, sum(smem.values()), tiles.num_warps, regs, grid, name).slots

    scores = m_blocks * bm * bn * plan.tiles
    vector = online_softmax(scores, m_blocks * bm * bn * plan.edge_tiles, rows * plan.tiles, rows * s, d)
    dequant = kv_load_work(shape, 2 * m_blocks * plan.keys * d)
    e, kv_e = shape.element_bytes, shape.kv_element_bytes
    kv_bytes = groups * m_blocks * plan.keys * d * kv_e
    kv_hbm = shared_hbm_reads(groups * s, m_blocks, slots, plan.keys * d * kv_e / s, gpu.l2_bytes)
    q_group_bytes = rows * d * e
    traffic = {
        "Q": Traffic.streamed(read=groups * s * q_group_bytes,
                              hbm_read=shared_hbm_reads(groups, m_blocks * s, slots, q_group_bytes, gpu.l2_bytes)),
        "K": Traffic.streamed(read=kv_bytes, hbm_read=kv_hbm),
        "V": Traffic.streamed(read=kv_bytes, hbm_read=kv_hbm),
        **_split_outputs(shape, tiles),
    }
    # Spills: SDPA FA2's one-split decode kernel (validation.mapping.SDPA_FA2_DECODE_SPILLS)
    traffic = spill_tensor(gpu, traffic, grid, slots, groups * m_blocks * plan.tiles, tiles)
    return KernelCost(
        name=name, grid_ctas=grid, warps_per_cta=tiles.num_warps, smem_buffers=smem, registers_per_thread=regs,
        tensor_flops=4.0 * groups * m_blocks * bm * bn * d * plan.tiles, tensor_dtype=tensor_core_dtype(shape.dtype),
        cuda_ops=groups * (vector.cuda_ops + dequant.cuda_ops), exp_ops=groups * (vector.exp_ops + dequant.exp_ops),
        traffic=traffic,
        inflight_bytes_per_cta=tiles.num_stages * 2 * bn * d * kv_e, notes=_split_notes(shape, tiles, plan),
    )


def _split_outputs(shape: AttentionShape, tiles: TileConfig) -> dict[str, Traffic]:
    """One split writes O and LSE as the final result (O alone without TileConfig.lse_output); more write fp32
    partials per split. The per-row LSE goes out in whole sectors (split_statistic_bytes)."""
    rows, splits = shape.batch * shape.q_heads * shape.q_len, tiles.num_splits
    if splits == 1:
        out = {"O": Traffic.streamed(write=rows * shape.head_dim * shape.element_bytes)}
        if tiles.lse_output:
            out["LSE"] = Traffic.streamed(write=_split_statistic_total(shape, tiles))
        return out
    return {"O_partial": Traffic.streamed(write=splits * rows * shape.head_dim * ACCUMULATOR_BYTES),
            "LSE_partial": Traffic.streamed(write=_split_statistic_total(shape, tiles))}


def _split_statistic_total(shape: AttentionShape, tiles: TileConfig) -> int:
    """split_statistic_bytes over every split CTA. (batch, kv head) groups whose index differs by a multiple of
    sector_period start their rows at the same place in a sector, so one group per residue stands for them all."""
    groups, period = shape.batch * shape.kv_heads, sector_period(ACCUMULATOR_BYTES)
    m_blocks = ceil(decode_rows(shape) / tiles.block_m)
    return sum(len(range(group, groups, period))
               * sum(split_statistic_bytes(shape, tiles, *divmod(group, shape.kv_heads), split, m_block)
                     for split in range(tiles.num_splits) for m_block in range(m_blocks))
               for group in range(min(groups, period)))


def split_statistic_bytes(shape: AttentionShape, tiles: TileConfig, batch: int, kv_head: int, split: int,
                          m_block: int) -> int:
    """What one split CTA's per-row statistic (the LSE, or with splits its split's partial) costs in sectors.
    Layout as kernels/flash_decoding.py has it: [B, Hq, Nq, S] fp32 (S = 1: the final LSE). The CTA's packed row r is
    q head kv_head x group + r // Nq, query r % Nq, so its rows are consecutive (b, head, query) rows, S apart."""
    splits, rows = tiles.num_splits, decode_rows(shape)
    first_row = m_block * tiles.block_m
    count = min(tiles.block_m, rows - first_row)
    base_row = (batch * shape.q_heads + kv_head * shape.group_size) * shape.q_len + first_row
    return sector_bytes(base_row * splits + split, count, splits, ACCUMULATOR_BYTES)


def _split_notes(shape: AttentionShape, tiles: TileConfig, plan: SplitPlan) -> tuple[str, ...]:
    rows = decode_rows(shape)
    m_blocks = ceil(rows / tiles.block_m)
    used = rows / (m_blocks * tiles.block_m)
    empty = int((plan.key_end == plan.key_start).sum())
    notes = [
        f"{shape.group_size} q heads x {shape.q_len} rows packed per kv head into {m_blocks} Q tile(s) of "
        f"BLOCK_M = {tiles.block_m}: {used:.0%} of the tile rows are real",
        f"{plan.tiles} key tiles in {tiles.num_splits} split(s) of up to {plan.tiles_per_split} tiles",
    ]
    if empty:
        notes.append(f"{empty} split(s) get no key tile: they only write 0 and LSE = -inf")
    return tuple(notes)


def combine_rows_per_cta(head_dim: int) -> int:
    """FA2's combine launch: 4 rows per CTA when d % 128 == 0, 8 when d % 64 == 0, else 16."""
    return 4 if head_dim % 128 == 0 else 8 if head_dim % 64 == 0 else 16


def combine_statistic_bytes(rows: int, per_cta: int, cta: int) -> int:
    """A combine CTA's final LSE: its rows [cta x per_cta, ...) of [B, Hq, Nq] fp32, one run, in whole sectors."""
    return sector_bytes(cta * per_cta, min(per_cta, rows - cta * per_cta), 1, ACCUMULATOR_BYTES)


def combine_vector_ops_per_row(splits: int, head_dim: int) -> tuple[float, float]:
    """(cuda ops, exp ops) to merge `splits` partial rows: max of the LSEs s; sum of
    exp(lse_i - max) 3s with s exp; lse = max + log(sum) 2 with 1 log; weights
    exp(lse_i - lse) 2s with s exp; O = sum_i w_i O_i, one FMA (2) per element."""
    s, d = splits, head_dim
    return 6 * s + 2 + 2 * s * d, 2 * s + 1


def combine_kernel(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig,
                   name: str = "flash_decoding_combine") -> KernelCost:
    s, d = tiles.num_splits, shape.head_dim
    rows = shape.batch * shape.q_heads * shape.q_len
    per_cta = combine_rows_per_cta(d)
    partial_o = s * rows * d * ACCUMULATOR_BYTES
    partial_lse = s * rows * ACCUMULATOR_BYTES
    cuda, exp = combine_vector_ops_per_row(s, d)
    traffic = {
        # cold L2, as Nsight Compute measures each kernel: the partials come back from HBM
        "O_partial": Traffic.streamed(read=partial_o),
        "LSE_partial": Traffic.streamed(read=partial_lse),
        "O": Traffic.streamed(write=rows * d * shape.element_bytes),
    }
    if tiles.lse_output:
        traffic["LSE"] = Traffic.streamed(write=sum(combine_statistic_bytes(rows, per_cta, cta)
                                                    for cta in range(ceil(rows / per_cta))))
    fits = "fit" if partial_o + partial_lse <= gpu.l2_bytes else "do not fit"
    note = (f"partials {(partial_o + partial_lse) / 1e6:.2f} MB read from HBM (cold L2); they {fits} in the "
            f"{gpu.l2_bytes / 2**20:.0f} MiB L2, so back to back the reads would hit there")
    return KernelCost(
        name=name, grid_ctas=ceil(rows / per_cta), warps_per_cta=COMBINE_THREADS // 32,
        smem_buffers={"LSE partials": s * per_cta * ACCUMULATOR_BYTES},
        registers_per_thread=registers_estimate(per_cta * d, COMBINE_THREADS), tensor_flops=0.0,
        tensor_dtype=tensor_core_dtype(shape.dtype), cuda_ops=rows * cuda, exp_ops=rows * exp, traffic=traffic,
        inflight_bytes_per_cta=2 * per_cta * d * ACCUMULATOR_BYTES, notes=(note,),
    )


def forward(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig) -> list[KernelCost]:
    out = [split_kernel(gpu, shape, tiles)]
    if tiles.num_splits > 1:
        out.append(combine_kernel(gpu, shape, tiles))
    return out


def kernels(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig, pass_: str) -> list[KernelCost]:
    require_forward(pass_, "flash_decoding")
    return forward(gpu, shape, tiles)


def schedule(shape: AttentionShape, tiles: TileConfig, pass_: str) -> list:
    from memsim.schedules import flash_decoding as sched
    require_forward(pass_, "flash_decoding")
    return sched.forward(shape, tiles)


ALGORITHM = Algorithm(
    name="flash_decoding",
    summary="Flash-Decoding: keys split across CTAs, GQA heads packed per CTA, LSE combine",
    passes=("fwd",),
    default_tiles=default_tiles,
    kernels=kernels,
    assumptions=ASSUMPTIONS,
    decode_only=True,
    schedule=schedule,
)
