"""FlashAttention-1 (Dao et al. 2022, Algorithm 1): one CTA per (batch, head); the outer loop runs
over key/value blocks K_j, V_j (B_c = BLOCK_N keys), the inner loop over query blocks (B_r = BLOCK_M
rows). Every inner step loads Q_i, O_i, l_i, m_i from memory, folds in S_ij = Q_i K_j^T with a
rescale, and writes O_i, l_i, m_i back: the output makes T_c round trips through L2.

Where data lives: K_j and V_j stay in shared memory for a whole outer step; Q_i, O_i, l_i, m_i
pass through shared memory once per inner step. O lives in memory as an fp32 scratch between
steps and is written in the input dtype at the last key block each query block sees (FA1's
o_tmp: flash-attention v1, csrc/flash_attn/fmha_api.cpp allocates it in fp32 when the keys span
more than one block). Line 2 of Algorithm 1 initialises O, l, m in HBM: a separate kernel here.

Causal: the CTA visits, for each key block, only the query blocks some row of which sees it.
"""

from memsim.algorithms.base import Algorithm, registers_estimate
from memsim.algorithms.kv_blocks import kv_block_visits, row_visits, rows_with_keys
from memsim.algorithms.pointwise import elementwise_grid, pointwise_kernel
from memsim.algorithms.softmax import VectorOps, online_softmax
from memsim.algorithms.tiling import keys_touched, q_block_tiles
from memsim.errors import MemsimError
from memsim.hardware.spec import GPUSpec
from memsim.kernel import KernelCost, Traffic
from memsim.l2_reuse import shared_hbm_reads
from memsim.occupancy import occupancy
from memsim.workload.dtypes import ACCUMULATOR_BYTES, tensor_core_dtype
from memsim.workload.shape import AttentionShape
from memsim.workload.tiles import TileConfig

ASSUMPTIONS = (
    "one CTA per (batch, q head); K/V of a head read from L2 once per CTA",
    "K/V come from HBM once if all of them fit in L2, else once per wave of the CTAs sharing a kv head",
    "Q, the fp32 O scratch, l and m are re-read from L2 at every key block; they come from HBM once "
    "(and dirty lines go back once) if the running CTAs' Q, O, l, m all fit in L2, else every re-read "
    "and write-back goes to HBM",
    "O, l, m are initialised in HBM by a separate kernel (Algorithm 1, line 2)",
    "tensor cores run whole tiles, masked parts included",
)

# Algorithm 1, lines 11-12, per (row, key block), on top of the online softmax's running max/sum:
# a second exp (e^(m~ - m_new)) and 1/l_new (SFU), and O_i = (l_i e^(m_i - m_new) O_i + e^(m~ - m_new) P V_j) / l_new
# as a multiply of P V_j plus an FMA with O_i per element (3 ops per element of the row of O).
PER_ROW_STEP_EXTRA_SFU = 2
PER_ROW_STEP_OPS_PER_DIM = 3

SPLIT_K_NOTE = ("FA1 splits each key block across the CTA's warps (WARPS_N = 4 in flash-attention v1's "
                "FMHA_kernel_traits): every inner step exchanges row max and sum and reduces the warps' partial "
                "P V_j through shared memory; the discrete-event engine is to model these round trips")


def default_tiles(gpu: GPUSpec, shape: AttentionShape) -> TileConfig:
    """flash-attention v1 on sm80: FMHA_kernel_traits<keys S, d, STEP 16, WARPS_M 1, WARPS_N 4>, S = 256 keys for
    d <= 64 and 128 for d = 128 (csrc/flash_attn/src/fmha_fwd_hdim{32,64,128}.cu): 16 query rows per inner step."""
    block_n = 256 if shape.head_dim <= 64 else 128
    return TileConfig(block_m=16, block_n=block_n, num_warps=4, num_stages=1, loop_order="kv_outer")


def smem_buffers(shape: AttentionShape, tiles: TileConfig) -> dict[str, int]:
    bm, bn, d = tiles.block_m, tiles.block_n, shape.head_dim
    e, kv_e = shape.element_bytes, shape.kv_element_bytes
    return {
        "K tile": int(bn * d * kv_e),
        "V tile": int(bn * d * kv_e),
        "Q tiles": int(tiles.num_stages * bm * d * e),
        "O tiles (fp32)": tiles.num_stages * bm * d * ACCUMULATOR_BYTES,
        "l, m": tiles.num_stages * 2 * bm * ACCUMULATOR_BYTES,
        "P tile": int(bm * bn * e),  # P_ij feeds the P V_j matmul from shared memory
        "split-K partial O (fp32)": tiles.num_warps * bm * d * ACCUMULATOR_BYTES,  # estimate
    }


def _check_tiles(tiles: TileConfig) -> None:
    if tiles.loop_order != "kv_outer":
        raise MemsimError(f"flash1 loop_order = {tiles.loop_order!r}; FlashAttention-1 runs the key blocks in the "
                          f"outer loop, use loop_order='kv_outer'")


def _vector_ops(shape: AttentionShape, tiles: TileConfig, blocks) -> VectorOps:
    bm, bn, d = tiles.block_m, tiles.block_n, shape.head_dim
    row_steps = float(row_visits(blocks))
    base = online_softmax(bm * bn * float(blocks.tile_pairs), bm * bn * float(blocks.edge_tiles.sum()),
                          row_steps, 0.0, d, rescale_per_tile=False)
    extra = VectorOps(row_steps * (PER_ROW_STEP_OPS_PER_DIM * d + PER_ROW_STEP_EXTRA_SFU),
                      row_steps * PER_ROW_STEP_EXTRA_SFU)
    return base + extra


def _resident(gpu: GPUSpec, shape: AttentionShape, concurrent: int) -> bool:
    """Do the running CTAs' Q, O scratch, l and m all fit in L2 at once?"""
    per_head = shape.q_len * (shape.head_dim * (shape.element_bytes + ACCUMULATOR_BYTES) + 2 * ACCUMULATOR_BYTES)
    return concurrent * per_head <= gpu.l2_bytes


def _reloaded(l2_read: float, l2_write: float, once_read: float, once_write: float, resident: bool) -> Traffic:
    """A tensor re-read and re-written every key block: from HBM once if it stays in L2, else every time."""
    if resident:
        return Traffic(l2_read, l2_write, once_read, once_write)
    return Traffic(l2_read, l2_write, l2_read, l2_write)


def init_kernel(shape: AttentionShape) -> KernelCost:
    """Algorithm 1, line 2: O = 0 (fp32 scratch), l = 0, m = -inf, written to HBM."""
    rows = shape.batch * shape.q_heads * shape.q_len
    o_bytes = rows * shape.head_dim * ACCUMULATOR_BYTES
    stat_bytes = rows * ACCUMULATOR_BYTES
    return pointwise_kernel("flash1_init", elementwise_grid(rows * (shape.head_dim + 2)), reads={},
                            writes={"O scratch": o_bytes, "l": stat_bytes, "m": stat_bytes}, cuda_ops=0.0,
                            tensor_dtype=tensor_core_dtype(shape.dtype))


def forward(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig) -> KernelCost:
    _check_tiles(tiles)
    bm, bn, d = tiles.block_m, tiles.block_n, shape.head_dim
    e, kv_e, acc = shape.element_bytes, shape.kv_element_bytes, ACCUMULATOR_BYTES
    blocks = q_block_tiles(shape, bm, bn)
    visits = kv_block_visits(blocks, shape.kv_len)
    heads = shape.batch * shape.q_heads
    smem = smem_buffers(shape, tiles)
    regs = registers_estimate(bm * bn + tiles.num_warps * bm * d, tiles.threads)
    slots = occupancy(gpu, sum(smem.values()), tiles.num_warps, regs, heads, "flash1_fwd").slots
    resident = _resident(gpu, shape, min(heads, slots))

    steps = heads * float(row_visits(blocks))  # (row, key block) visits
    done = heads * float(rows_with_keys(blocks))  # rows whose O gets written
    multi = heads * float(blocks.rows[blocks.tiles > 1].sum())  # rows written to the scratch at least once
    kv_l2 = heads * visits.keys_loaded * d * kv_e
    kv_hbm = min(kv_l2, shared_hbm_reads(shape.batch * shape.kv_heads, shape.group_size, slots,
                                         keys_touched(shape) * d * kv_e, gpu.l2_bytes))
    traffic = {
        "Q": _reloaded(steps * d * e, 0.0, heads * shape.q_len * d * e, 0.0, resident),
        "K": Traffic.streamed(read=kv_l2, hbm_read=kv_hbm),
        "V": Traffic.streamed(read=kv_l2, hbm_read=kv_hbm),
        "O scratch": _reloaded(steps * d * acc, (steps - done) * d * acc, done * d * acc, multi * d * acc, resident),
        "O": Traffic.streamed(write=done * d * e),
        "l": _reloaded(steps * acc, steps * acc, done * acc, done * acc, resident),
        "m": _reloaded(steps * acc, steps * acc, done * acc, done * acc, resident),
    }
    vector = _vector_ops(shape, tiles, blocks)
    notes = (SPLIT_K_NOTE,) + (() if resident else ("Q, O, l, m of the running CTAs exceed L2: re-read from HBM",))
    return KernelCost(
        name="flash1_fwd", grid_ctas=heads, warps_per_cta=tiles.num_warps, smem_buffers=smem,
        registers_per_thread=regs, tensor_flops=4.0 * heads * bm * bn * d * blocks.tile_pairs,
        tensor_dtype=tensor_core_dtype(shape.dtype), cuda_ops=heads * vector.cuda_ops,
        exp_ops=heads * vector.exp_ops, traffic=traffic,
        inflight_bytes_per_cta=tiles.num_stages * bm * (d * (e + acc) + 2 * acc), notes=notes,
    )


def kernels(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig, pass_: str) -> list[KernelCost]:
    if "bwd" in pass_:
        raise MemsimError(f"flash1 models only the fwd pass, not {pass_!r}")
    return [init_kernel(shape), forward(gpu, shape, tiles)]


def schedule(shape: AttentionShape, tiles: TileConfig, pass_: str) -> list:
    from memsim.schedules import flash1 as sched
    if "bwd" in pass_:
        raise MemsimError(f"flash1 models only the fwd pass, not {pass_!r}")
    return sched.launches(shape, tiles)


ALGORITHM = Algorithm(
    name="flash1",
    summary="FlashAttention-1: K/V-block outer loop, one CTA per head, O/l/m round-trip per key block",
    passes=("fwd",),
    default_tiles=default_tiles,
    kernels=kernels,
    assumptions=ASSUMPTIONS,
    schedule=schedule,
)
