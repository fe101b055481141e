"""FlashAttention-2's backward pass with dQ in a kernel of its own, no atomics (TileConfig.dq = "separate"):
the Triton tutorial 06-fused-attention's split into a key-block pass and a query-block pass, and the way
kernels/flash2.py computes it. Deterministic, at the price of recomputing S and dP in the second pass.

  (a) delta   D = rowsum(dO * O) per query row (fp32), DELTA_ROWS rows per CTA, grid (T_r, batch * q_heads)
  (b) dK/dV   one CTA per (key block j, batch * kv head), key block fastest: K_j, V_j stay on chip while the
              CTA walks, for every q head of the group in turn, the query blocks i that see block j,
              loading Q_i, dO_i, LSE_i, D_i; 4 matmuls per pair: S = Q K^T, dV += P^T dO, dP = dO V^T,
              dK += dS^T Q. The group's gradients are summed in registers: dK, dV written once per kv head.
  (c) dQ      one CTA per (query block, batch * q head), query block fastest: the forward's loop again.
              Q_i, dO_i, LSE_i, D_i stay on chip while the K/V blocks of the kv head stream past; 3 matmuls
              per pair: S = Q K^T, dP = dO V^T, dQ += dS K.

Tiles: (b) takes BLOCK_M query rows per step against BLOCK_N keys held; (c) the same tile transposed,
BLOCK_N query rows held against BLOCK_M keys per step (the tutorial's BLOCK_M1 x BLOCK_N1 = 32 x 128 and
BLOCK_M2 x BLOCK_N2 = 128 x 32; kernels/flash2.py's DKDV_SM90 and DQ_SM90 tables).
"""

from math import ceil

from memsim.algorithms import flash2_bwd as atomic
from memsim.algorithms.base import registers_estimate
from memsim.algorithms.flash2 import spill_tensor
from memsim.algorithms.kv_blocks import kv_block_visits, row_visits
from memsim.algorithms.pointwise import pointwise_kernel
from memsim.algorithms.tiling import QBlockTiles, keys_touched, q_block_tiles
from memsim.hardware.spec import GPUSpec
from memsim.kernel import KernelCost, Traffic
from memsim.l2_reuse import shared_hbm_reads
from memsim.occupancy import occupancy
from memsim.workload.dtypes import ACCUMULATOR_BYTES, tensor_core_dtype
from memsim.workload.shape import AttentionShape
from memsim.workload.tiles import TileConfig

ASSUMPTIONS = (
    "backward (dq separate): the dK/dV kernel's CTAs of a kv head share its q heads' Q, dO, LSE, D in L2 "
    "(memsim.l2_reuse); each K/V block is read by one CTA",
    "backward (dq separate): the dQ kernel streams K and V like the forward, Q, dO, LSE, D read once",
)

DELTA_ROWS = 64  # query rows per CTA of the delta kernel (kernels/flash2.py: DELTA_ROWS_SM90)
DELTA_WARPS = 4
DKDV_MATMULS = 4  # S = Q K^T, dV += P^T dO, dP = dO V^T, dK += dS^T Q
DQ_MATMULS = 3  # S = Q K^T, dP = dO V^T, dQ += dS K
# Vector ops per score, exp2 included as in flash2_bwd (an FMA counts two): P = exp2(S * scale_log2 - LSE)
# one FMA and one exp2 (SFU), dS = P * (dP - D) a subtract and a multiply; the softmax scale is applied once
# to dK and to dQ at the end.
PER_SCORE_OPS = 2 + 1 + 2
SCALE_OPS_PER_ELEMENT = 1


def q_row_bytes(shape: AttentionShape) -> float:
    """Q, dO, LSE and D of one query row."""
    return 2 * shape.head_dim * shape.element_bytes + 2 * ACCUMULATOR_BYTES


def dq_tiles(tiles: TileConfig) -> tuple[int, int]:
    """(query rows, keys) of a dQ-kernel tile: the dK/dV kernel's BLOCK_M x BLOCK_N transposed."""
    return tiles.block_n, tiles.block_m


def delta(shape: AttentionShape, name: str) -> KernelCost:
    heads = shape.batch * shape.q_heads
    rows = heads * shape.q_len
    d, e = shape.head_dim, shape.element_bytes
    return pointwise_kernel(
        f"{name}_delta", ceil(shape.q_len / DELTA_ROWS) * heads,
        reads={"O": rows * d * e, "dO": rows * d * e}, writes={"D": rows * ACCUMULATOR_BYTES},
        cuda_ops=rows * d * atomic.PREPROCESS_OPS_PER_ELEMENT, tensor_dtype=tensor_core_dtype(shape.dtype),
        warps=DELTA_WARPS,
    )


def dkdv_smem_buffers(shape: AttentionShape, tiles: TileConfig) -> dict[str, int]:
    """The atomic backward's key-block buffers but P and dS, which feed its dV and dK matmuls from shared
    memory (kernels/flash2.py keeps them in registers)."""
    return {name: size for name, size in atomic.smem_buffers(shape, tiles).items() if name not in ("P tile", "dS tile")}


def dkdv_kernel(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig, name: str) -> KernelCost:
    bm, bn, d = tiles.block_m, tiles.block_n, shape.head_dim
    e, kv_e = shape.element_bytes, shape.kv_element_bytes
    blocks = q_block_tiles(shape, bm, bn)
    visits = kv_block_visits(blocks, shape.kv_len)
    kv_heads, g = shape.batch * shape.kv_heads, shape.group_size
    heads = shape.batch * shape.q_heads
    grid = visits.t_c * kv_heads
    smem = dkdv_smem_buffers(shape, tiles)
    regs = atomic.key_block_registers(shape, tiles)
    slots = occupancy(gpu, sum(smem.values()), tiles.num_warps, regs, grid, name).slots

    rows = heads * float(row_visits(blocks))  # query rows loaded over all (query block, key block) pairs
    kv_once = keys_touched(shape) * 2 * d * kv_e
    group_set = g * shape.q_len * q_row_bytes(shape) + kv_once  # what a kv head's CTAs keep in L2

    def per_kv_head(row_bytes: float) -> Traffic:
        """Read by the T_c key-block CTAs of one (batch, kv head), for each q head of its group."""
        l2 = rows * row_bytes
        return Traffic.streamed(read=l2, hbm_read=shared_hbm_reads(kv_heads, visits.t_c, slots,
                                                                   g * shape.q_len * row_bytes, gpu.l2_bytes, l2,
                                                                   group_set))

    kv = Traffic.streamed(read=kv_heads * visits.keys_loaded * d * kv_e)  # each block by its own CTA
    gradient = Traffic.streamed(write=kv_heads * shape.kv_len * d * e)
    traffic = {"Q": per_kv_head(d * e), "dO": per_kv_head(d * e), "LSE": per_kv_head(ACCUMULATOR_BYTES),
               "D": per_kv_head(ACCUMULATOR_BYTES), "K": kv, "V": kv, "dK": gradient, "dV": gradient}
    traffic = spill_tensor(gpu, traffic, grid, slots, heads * float(blocks.tile_pairs), tiles)  # one per pair
    scores = bm * bn * float(blocks.tile_pairs)
    masked = bm * bn * float(blocks.edge_tiles.sum())
    return KernelCost(
        name=f"{name}_dkdv", grid_ctas=grid, warps_per_cta=tiles.num_warps, smem_buffers=smem,
        registers_per_thread=regs, tensor_flops=2.0 * DKDV_MATMULS * heads * bm * bn * d * blocks.tile_pairs,
        tensor_dtype=tensor_core_dtype(shape.dtype),
        cuda_ops=heads * (scores * PER_SCORE_OPS + masked * atomic.MASK_OPS_PER_SCORE)
        + kv_heads * shape.kv_len * d * SCALE_OPS_PER_ELEMENT,
        exp_ops=heads * scores, traffic=traffic, inflight_bytes_per_cta=tiles.num_stages * 2 * bm * d * e,
        notes=("dK and dV of the group summed on chip, written once per kv head; no atomics",),
    )


def dq_blocks(shape: AttentionShape, tiles: TileConfig) -> QBlockTiles:
    rows, keys = dq_tiles(tiles)
    return q_block_tiles(shape, rows, keys)


def dq_smem_buffers(shape: AttentionShape, tiles: TileConfig) -> dict[str, int]:
    rows, keys = dq_tiles(tiles)
    d, e, kv_e = shape.head_dim, shape.element_bytes, shape.kv_element_bytes
    return {
        "Q tile": int(rows * d * e),
        "dO tile": int(rows * d * e),
        "K tiles": int(tiles.num_stages * keys * d * kv_e),
        "V tiles": int(tiles.num_stages * keys * d * kv_e),
    }


def dq_registers(shape: AttentionShape, tiles: TileConfig) -> int:
    rows, keys = dq_tiles(tiles)
    return registers_estimate(rows * shape.head_dim + 2 * rows * keys, tiles.threads)  # dQ; S and dP tiles


def dq_kernel(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig, name: str) -> KernelCost:
    rows_per_cta, keys_per_step = dq_tiles(tiles)
    d, e, kv_e = shape.head_dim, shape.element_bytes, shape.kv_element_bytes
    blocks = dq_blocks(shape, tiles)
    heads = shape.batch * shape.q_heads
    grid = blocks.t_r * heads
    smem = dq_smem_buffers(shape, tiles)
    regs = dq_registers(shape, tiles)
    slots = occupancy(gpu, sum(smem.values()), tiles.num_warps, regs, grid, name).slots

    kv_streamed = heads * blocks.keys_loaded * d * kv_e
    kv_shared = keys_touched(shape) * d * kv_e
    kv_hbm = shared_hbm_reads(shape.batch * shape.kv_heads, shape.group_size * blocks.t_r, slots, kv_shared,
                              gpu.l2_bytes, kv_streamed, working_set_per_group=2 * kv_shared)  # K and V together
    q_rows = heads * shape.q_len
    traffic = {"Q": Traffic.streamed(read=q_rows * d * e), "dO": Traffic.streamed(read=q_rows * d * e),
               "LSE": Traffic.streamed(read=q_rows * ACCUMULATOR_BYTES),
               "D": Traffic.streamed(read=q_rows * ACCUMULATOR_BYTES),
               "K": Traffic.streamed(read=kv_streamed, hbm_read=kv_hbm),
               "V": Traffic.streamed(read=kv_streamed, hbm_read=kv_hbm),
               "dQ": Traffic.streamed(write=q_rows * d * e)}
    tile = rows_per_cta * keys_per_step
    scores = tile * float(blocks.tile_pairs)
    masked = tile * float(blocks.edge_tiles.sum())
    return KernelCost(
        name=f"{name}_dq", grid_ctas=grid, warps_per_cta=tiles.num_warps, smem_buffers=smem,
        registers_per_thread=regs, tensor_flops=2.0 * DQ_MATMULS * heads * tile * d * blocks.tile_pairs,
        tensor_dtype=tensor_core_dtype(shape.dtype),
        cuda_ops=heads * (scores * PER_SCORE_OPS + masked * atomic.MASK_OPS_PER_SCORE) + q_rows * d * SCALE_OPS_PER_ELEMENT,
        exp_ops=heads * scores, traffic=traffic, inflight_bytes_per_cta=tiles.num_stages * 2 * keys_per_step * d * kv_e,
        notes=("S and dP recomputed: dQ without atomics",),
    )


def backward(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig, name: str = "flash2_bwd") -> list[KernelCost]:
    """The kernels of one backward call, in launch order: delta, dK/dV, dQ."""
    return [delta(shape, name), dkdv_kernel(gpu, shape, tiles, name), dq_kernel(gpu, shape, tiles, name)]
