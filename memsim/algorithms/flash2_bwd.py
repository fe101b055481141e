"""FlashAttention-2's backward pass (Dao 2023, Algorithm 2), as flash-attention's
csrc/flash_attn/src/flash_bwd_launch_template.h launches it:

  (a) preprocess   D = rowsum(dO * O) per query row (fp32), and the fp32 dQ accumulator zeroed
                   (flash_bwd_dot_do_o_kernel<Clear_dQaccum = true>), grid (T_r, batch, heads)
  (b) main         one CTA per (key block j, batch * q head), key block fastest (grid (T_c, b, h)):
                   K_j, V_j stay in shared memory; for every query block i that sees block j
                   (causal: only those) it loads Q_i, dO_i, LSE_i, D_i, recomputes S and P from the
                   LSE and runs 5 matmuls: S = Q K^T, dV += P^T dO, dP = dO V^T, dK += dS^T Q,
                   dQ_i += dS K, the last added to the fp32 accumulator with atomics in L2.
                   Writes dK_j, dV_j (for GQA one copy per q head, "dk_expanded" in flash_api.cpp)
  (c) GQA only     sum the group's dK/dV copies per kv head (at::sum_out in flash_api.cpp)
  (d) convert      dQ accumulator fp32 -> dtype, times the softmax scale (flash_bwd_convert_dq_kernel)
"""

from math import ceil

from memsim.algorithms.base import registers_estimate
from memsim.l2_reuse import shared_hbm_reads
from memsim.algorithms.kv_blocks import kv_block_visits, row_visits
from memsim.algorithms.pointwise import elementwise_grid, pointwise_kernel
from memsim.algorithms.tiling import keys_touched, q_block_tiles
from memsim.hardware.spec import GPUSpec
from memsim.kernel import KernelCost, Traffic
from memsim.occupancy import occupancy
from memsim.workload.dtypes import ACCUMULATOR_BYTES, tensor_core_dtype
from memsim.workload.shape import AttentionShape
from memsim.workload.tiles import TileConfig

ASSUMPTIONS = (
    "backward: Q, dO, LSE, D of a head and K, V of a kv head come from HBM once if those of the heads in flight "
    "fit in L2, else once per wave of the key-block CTAs that read them (memsim.l2_reuse)",
    "backward: dQ atomics land in L2; the accumulator comes from HBM and goes back once under the same rule",
    "backward: GQA writes dK/dV per q head and sums them in a separate kernel",
)

MATMULS = 5  # S = Q K^T, dV += P^T dO, dP = dO V^T, dK += dS^T Q, dQ += dS K: 2 * BM * BN * d FLOPs each

# Vector ops per score of a loaded tile (an FMA counts two): P = exp2(S * scale_log2 - LSE) one FMA and
# one exp2 (SFU); dS = P * (dP - D) a subtract and a multiply; dS * softmax scale one multiply.
# Tiles that straddle a causal or window edge add a select per score.
PER_SCORE_OPS = 2 + 1 + 2 + 1
MASK_OPS_PER_SCORE = 1
# D = rowsum(dO * O): one FMA per element of the row.
PREPROCESS_OPS_PER_ELEMENT = 2


def q_side_bytes(shape: AttentionShape) -> float:
    """Q, dO, LSE, D and the fp32 dQ accumulator of one (batch, q head)."""
    d, acc = shape.head_dim, ACCUMULATOR_BYTES
    return shape.q_len * (2 * d * shape.element_bytes + 2 * acc + d * acc)


def kv_side_bytes(shape: AttentionShape) -> float:
    """K and V of one (batch, kv head): the keys some query sees."""
    return keys_touched(shape) * 2 * shape.head_dim * shape.kv_element_bytes


def smem_buffers(shape: AttentionShape, tiles: TileConfig) -> dict[str, int]:
    bm, bn, d = tiles.block_m, tiles.block_n, shape.head_dim
    e, kv_e, s = shape.element_bytes, shape.kv_element_bytes, tiles.num_stages
    return {
        "K tile": int(bn * d * kv_e),
        "V tile": int(bn * d * kv_e),
        "Q tiles": int(s * bm * d * e),
        "dO tiles": int(s * bm * d * e),
        "LSE, D": s * 2 * bm * ACCUMULATOR_BYTES,
        "P tile": int(bm * bn * e),  # P and dS feed the dV and dK matmuls from shared memory
        "dS tile": int(bm * bn * e),
    }


def key_block_registers(shape: AttentionShape, tiles: TileConfig) -> int:
    """A key-block CTA's registers: the dK, dV accumulators and the S, dP tiles."""
    return registers_estimate(2 * tiles.block_n * shape.head_dim + 2 * tiles.block_m * tiles.block_n, tiles.threads)


def preprocess(shape: AttentionShape, tiles: TileConfig, name: str) -> KernelCost:
    heads = shape.batch * shape.q_heads
    rows = heads * shape.q_len
    d, e = shape.head_dim, shape.element_bytes
    return pointwise_kernel(
        f"{name}_preprocess", ceil(shape.q_len / tiles.block_m) * heads,
        reads={"O": rows * d * e, "dO": rows * d * e},
        writes={"D": rows * ACCUMULATOR_BYTES, "dQ accumulator": rows * d * ACCUMULATOR_BYTES},
        cuda_ops=rows * d * PREPROCESS_OPS_PER_ELEMENT, tensor_dtype=tensor_core_dtype(shape.dtype),
        warps=tiles.num_warps,
    )


def main_kernel(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig, overlap: bool, name: str) -> KernelCost:
    bm, bn, d = tiles.block_m, tiles.block_n, shape.head_dim
    e, kv_e, acc = shape.element_bytes, shape.kv_element_bytes, ACCUMULATOR_BYTES
    blocks = q_block_tiles(shape, bm, bn)
    visits = kv_block_visits(blocks, shape.kv_len)
    heads = shape.batch * shape.q_heads
    grid = visits.t_c * heads
    smem = smem_buffers(shape, tiles)
    regs = key_block_registers(shape, tiles)
    slots = occupancy(gpu, sum(smem.values()), tiles.num_warps, regs, grid, name).slots

    rows = heads * float(row_visits(blocks))  # query rows loaded over all (query block, key block) pairs
    g = shape.group_size
    per_q_head_set = q_side_bytes(shape) + kv_side_bytes(shape) / g  # what a q head's CTAs keep in L2

    def per_q_head(row_bytes: float) -> Traffic:
        """Read by the T_c key-block CTAs of one (batch, q head), consecutive in program-id order."""
        l2 = rows * row_bytes
        return Traffic.streamed(read=l2, hbm_read=shared_hbm_reads(heads, visits.t_c, slots, shape.q_len * row_bytes,
                                                                  gpu.l2_bytes, l2, per_q_head_set))

    kv_l2 = heads * visits.keys_loaded * d * kv_e
    kv = Traffic.streamed(read=kv_l2, hbm_read=shared_hbm_reads(
        shape.batch * shape.kv_heads, g * visits.t_c, slots, keys_touched(shape) * d * kv_e, gpu.l2_bytes, kv_l2,
        g * per_q_head_set))
    dq_hbm = per_q_head(d * acc).hbm_read  # the accumulator's lines come in and go back once per visit of L2
    traffic = {
        "Q": per_q_head(d * e), "dO": per_q_head(d * e), "LSE": per_q_head(acc), "D": per_q_head(acc),
        "K": kv, "V": kv,
        "dQ accumulator": Traffic(l2_write=rows * d * acc, hbm_read=dq_hbm, hbm_write=dq_hbm),
    }
    dk, dv = _dkv_names(shape)
    traffic[dk] = traffic[dv] = Traffic.streamed(write=heads * shape.kv_len * d * e)
    scores = bm * bn * float(blocks.tile_pairs)
    masked = bm * bn * float(blocks.edge_tiles.sum())
    return KernelCost(
        name=name, grid_ctas=grid, warps_per_cta=tiles.num_warps, smem_buffers=smem, registers_per_thread=regs,
        tensor_flops=2.0 * MATMULS * heads * bm * bn * d * blocks.tile_pairs,
        tensor_dtype=tensor_core_dtype(shape.dtype),
        cuda_ops=heads * (scores * PER_SCORE_OPS + masked * MASK_OPS_PER_SCORE), exp_ops=heads * scores,
        traffic=traffic, inflight_bytes_per_cta=tiles.num_stages * 2 * bm * d * e, softmax_overlaps_mma=overlap,
        notes=(f"writes {dk} and {dv}; dQ accumulated with fp32 atomics in L2",),
    )


def _dkv_names(shape: AttentionShape) -> tuple[str, str]:
    return ("dK per q head", "dV per q head") if shape.group_size > 1 else ("dK", "dV")


def reduce_dkv(shape: AttentionShape, name: str) -> KernelCost:
    """GQA: dK[kv head] = sum of the group's per-q-head copies, and the same for dV."""
    e = shape.element_bytes
    out = shape.batch * shape.kv_heads * shape.kv_len * shape.head_dim
    copies = out * shape.group_size
    return pointwise_kernel(
        f"{name}_dkv_reduce", elementwise_grid(2 * out),
        reads={"dK per q head": copies * e, "dV per q head": copies * e},
        writes={"dK": out * e, "dV": out * e}, cuda_ops=2.0 * (copies - out),
        tensor_dtype=tensor_core_dtype(shape.dtype),
        notes=("PyTorch launches one reduction for dK and one for dV; counted as one kernel",),
    )


def convert_dq(shape: AttentionShape, tiles: TileConfig, name: str) -> KernelCost:
    heads = shape.batch * shape.q_heads
    elements = heads * shape.q_len * shape.head_dim
    return pointwise_kernel(
        f"{name}_convert_dq", ceil(shape.q_len / tiles.block_m) * heads,
        reads={"dQ accumulator": elements * ACCUMULATOR_BYTES}, writes={"dQ": elements * shape.element_bytes},
        cuda_ops=float(elements), tensor_dtype=tensor_core_dtype(shape.dtype), warps=tiles.num_warps,
    )


def backward(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig, overlap: bool = False,
             name: str = "flash2_bwd") -> list[KernelCost]:
    """The kernels of one backward call, in launch order. `tiles`: BLOCK_N keys per CTA, BLOCK_M query rows
    per inner step, num_stages buffers of Q and dO. `overlap`: softmax work hides under the matmuls (FA3).
    With tiles.dq == "separate", the three kernels of memsim.algorithms.flash2_bwd_separate_dq instead."""
    if tiles.dq == "separate":
        from memsim.algorithms import flash2_bwd_separate_dq
        return flash2_bwd_separate_dq.backward(gpu, shape, tiles, name)
    out = [preprocess(shape, tiles, name), main_kernel(gpu, shape, tiles, overlap, name)]
    if shape.group_size > 1:
        out.append(reduce_dkv(shape, name))
    out.append(convert_dq(shape, tiles, name))
    return out
