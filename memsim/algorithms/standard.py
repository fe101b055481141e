"""Standard attention (Dao et al. 2022, Algorithm 0): S = Q K^T, P = softmax(S), O = P V as
three kernels, with S and P written to HBM in the input dtype and read back.

Where data lives: each GEMM CTA holds its operand panels in shared memory and its output tile
in registers; nothing survives from one kernel to the next except through HBM. The GEMMs run
the whole N x N even under a causal mask (as PyTorch's math path does); the softmax kernel
applies the mask and the scale.

The backward pass follows the FlashAttention paper's standard backward (Appendix B.1):
dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(P * dP)), dQ = dS K, dK = dS^T Q, five kernels
with dP and dS materialised.
"""

from dataclasses import dataclass
from math import ceil

from memsim.algorithms.base import Algorithm, registers_estimate
from memsim.l2_reuse import shared_hbm_reads
from memsim.hardware.spec import GPUSpec
from memsim.kernel import KernelCost, Traffic
from memsim.occupancy import occupancy
from memsim.workload.dtypes import tensor_core_dtype
from memsim.workload.shape import AttentionShape
from memsim.workload.tiles import TileConfig

ASSUMPTIONS = (
    "each GEMM CTA computes one output tile and reads its A and B panels through L2 once",
    "a GEMM operand shared by a run of consecutive CTAs (a row panel, a head's K or V) comes from HBM once if "
    "the copies in use at once fit in L2, else once per wave of those CTAs, never more often than they read it",
    "S, P (and dP, dS in the backward) make a full round trip through HBM in the input dtype",
    "GEMMs run the full N x N under a causal mask; the softmax kernel masks and scales",
    "the softmax kernel holds a row in shared memory when it fits, else re-reads it from L2 once per pass",
    "GQA: the GEMMs read the shared K/V head directly (no repeat_interleave copy)",
)

# PyTorch's softmax: one CTA per row, each thread loading 16 bytes at a time (ILP), a block sized to half
# of min(the row's vectors, 1024 threads) (aten/src/ATen/native/cuda/SoftMax.cu, SoftMax_getBlockSize);
# the row stays in shared memory when it fits (cunn_SoftMaxForwardSmem), else the kernel reads it once
# for the max, once for the sum and once for the output (cunn_SoftMaxForward).
SOFTMAX_VECTOR_BYTES = 16
SOFTMAX_MAX_THREADS = 1024
SOFTMAX_FWD_PASSES = 3
SOFTMAX_BWD_PASSES = 2  # rowsum(P * dP), then dS

# Vector ops per score (an FMA counts two). Forward: scale 1, max 1, subtract 1, exp 1 (SFU),
# sum 1, multiply by 1/sum 1; a causal or window mask adds a select on every score.
# Backward: P * dP summed into the row 2, dS = P * (dP - D) 2, scale 1.
SOFTMAX_FWD_OPS_PER_SCORE = 6
SOFTMAX_BWD_OPS_PER_SCORE = 5
MASK_OPS_PER_SCORE = 1


def default_tiles(gpu: GPUSpec, shape: AttentionShape) -> TileConfig:
    """The largest of 128 x 128, 128 x 64, 64 x 64, 64 x 32 output tiles (8 warps, 2 stages) whose score GEMM
    (full head_dim panels) and value GEMM (BLOCK_N-deep chunks) both fit in shared memory. CUTLASS's sm80
    default is 128 x 256 x 64 with 8 warps (include/cutlass/gemm/device/default_gemm_configuration.h); a
    256-deep P V chunk with the head_dim-wide accumulator tile would not fit here, so the tile is square."""
    for block_m, block_n in ((128, 128), (128, 64), (64, 64), (64, 32)):
        tiles = TileConfig(block_m=block_m, block_n=block_n, num_warps=8, num_stages=2)
        if max(score_smem_bytes(shape, tiles), value_smem_bytes(shape, tiles)) <= gpu.smem_per_block_optin_bytes:
            return tiles
    return tiles


def score_smem_bytes(shape: AttentionShape, tiles: TileConfig) -> int:
    """A panel BLOCK_M x d and B panel BLOCK_N x d, full head_dim."""
    return int(tiles.block_m * shape.head_dim * shape.element_bytes
               + tiles.block_n * shape.head_dim * shape.kv_element_bytes)


def value_smem_bytes(shape: AttentionShape, tiles: TileConfig) -> int:
    """num_stages chunks of A (BLOCK_M x BLOCK_N) and of B (BLOCK_N x d); widest operand bytes."""
    e = max(shape.element_bytes, shape.kv_element_bytes)
    return int(tiles.num_stages * (tiles.block_m * tiles.block_n + tiles.block_n * shape.head_dim) * e)


@dataclass(frozen=True)
class Operand:
    """A GEMM operand: `share` consecutive GEMM instances read the same copy (GQA's shared K/V head)."""

    name: str
    bytes_per_element: float
    share: int = 1


def _slots(gpu: GPUSpec, smem: dict[str, int], tiles: TileConfig, regs: int, grid: int, name: str) -> int:
    return occupancy(gpu, sum(smem.values()), tiles.num_warps, regs, grid, name).slots


def _shared_reads(gpu: GPUSpec, copies: int, ctas_per_copy: int, slots: int, bytes_per_copy: float,
                  l2_read: float) -> float:
    """HBM bytes for data that `copies` runs of consecutive CTAs each share (memsim.l2_reuse)."""
    return shared_hbm_reads(copies, ctas_per_copy, slots, bytes_per_copy, gpu.l2_bytes, l2_read)


def score_gemm(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig, name: str, a: Operand, b: Operand,
               out: Operand) -> KernelCost:
    """C = A B^T per (batch, q head): A [q_len, d], B [kv_len, d] -> C [q_len, kv_len].

    Grid (T_c, T_r, batch * q_heads), column tile fastest. Each CTA loads panel A_i (BLOCK_M x d)
    and panel B_j (BLOCK_N x d) over the full head_dim and writes its BLOCK_M x BLOCK_N tile.
    """
    bm, bn, d = tiles.block_m, tiles.block_n, shape.head_dim
    heads = shape.batch * shape.q_heads
    t_r, t_c = ceil(shape.q_len / bm), ceil(shape.kv_len / bn)
    grid = t_r * t_c * heads
    smem = {f"{a.name} panel": int(bm * d * a.bytes_per_element), f"{b.name} panel": int(bn * d * b.bytes_per_element)}
    regs = registers_estimate(bm * bn, tiles.threads)
    slots = _slots(gpu, smem, tiles, regs, grid, name)
    a_head = shape.q_len * d * a.bytes_per_element
    b_head = shape.kv_len * d * b.bytes_per_element
    a_l2 = heads * t_c * a_head  # each row panel is read by the T_c CTAs of its tile row
    b_l2 = heads * t_r * b_head  # each column panel by the T_r CTAs of its tile column
    traffic = {
        a.name: Traffic.streamed(read=a_l2, hbm_read=_shared_reads(gpu, heads * t_r, t_c, slots, a_head / t_r, a_l2)),
        b.name: Traffic.streamed(read=b_l2, hbm_read=_shared_reads(gpu, heads // b.share, b.share * t_r * t_c, slots,
                                                                   b_head, b_l2)),
        out.name: Traffic.streamed(write=heads * shape.q_len * shape.kv_len * out.bytes_per_element),
    }
    return KernelCost(
        name=name, grid_ctas=grid, warps_per_cta=tiles.num_warps, smem_buffers=smem, registers_per_thread=regs,
        tensor_flops=2.0 * (t_r * bm) * (t_c * bn) * d * heads, tensor_dtype=tensor_core_dtype(shape.dtype),
        cuda_ops=0.0, exp_ops=0.0, traffic=traffic, inflight_bytes_per_cta=float(sum(smem.values())),
    )


@dataclass(frozen=True)
class ValueGemm:
    """C = A B per instance: A [rows, depth] read once, B [depth, head_dim] re-read by every row tile,
    C [rows, head_dim]. O = P V, dQ = dS K (rows = queries) and dV = P^T dO, dK = dS^T Q (rows = keys)."""

    name: str
    instances: int
    rows: int
    depth: int
    a: Operand
    b: Operand
    out: Operand


def value_gemm(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig, g: ValueGemm) -> KernelCost:
    """Grid (T_rows, instances). Each CTA keeps a BLOCK_M x d fp32 accumulator and streams BLOCK_M x BLOCK_N
    chunks of A and BLOCK_N x d chunks of B through `num_stages` shared-memory buffers."""
    bm, bn, d = tiles.block_m, tiles.block_n, shape.head_dim
    t_rows, t_depth = ceil(g.rows / bm), ceil(g.depth / bn)
    grid = t_rows * g.instances
    smem = {f"{g.a.name} chunks": int(tiles.num_stages * bm * bn * g.a.bytes_per_element),
            f"{g.b.name} chunks": int(tiles.num_stages * bn * d * g.b.bytes_per_element)}
    regs = registers_estimate(bm * d, tiles.threads)
    slots = _slots(gpu, smem, tiles, regs, grid, g.name)
    b_copy = g.depth * d * g.b.bytes_per_element
    b_l2 = g.instances * t_rows * b_copy
    traffic = {
        g.a.name: Traffic.streamed(read=g.instances * g.rows * g.depth * g.a.bytes_per_element),
        g.b.name: Traffic.streamed(read=b_l2, hbm_read=_shared_reads(gpu, g.instances // g.b.share,
                                                                     g.b.share * t_rows, slots, b_copy, b_l2)),
        g.out.name: Traffic.streamed(write=g.instances * g.rows * d * g.out.bytes_per_element),
    }
    return KernelCost(
        name=g.name, grid_ctas=grid, warps_per_cta=tiles.num_warps, smem_buffers=smem, registers_per_thread=regs,
        tensor_flops=2.0 * (t_rows * bm) * (t_depth * bn) * d * g.instances,
        tensor_dtype=tensor_core_dtype(shape.dtype), cuda_ops=0.0, exp_ops=0.0, traffic=traffic,
        inflight_bytes_per_cta=float(sum(smem.values())),
    )


def softmax_threads(row_elements: int, element_bytes: float) -> int:
    """PyTorch's block size for one softmax row: a power of two (at least a warp) covering half of
    min(the row's 16-byte vectors, 1024)."""
    vectors = row_elements * element_bytes / SOFTMAX_VECTOR_BYTES
    threads = 32
    while threads < min(vectors, SOFTMAX_MAX_THREADS) / 2:
        threads *= 2
    return threads


def row_kernel(gpu: GPUSpec, shape: AttentionShape, name: str, reads: list[str], writes: list[str],
               ops_per_score: float, exp_per_row: float, exp_per_score: float, passes: int) -> KernelCost:
    """One CTA per row of the N x N matrix: reads the rows of `reads`, writes those of `writes`."""
    e = shape.element_bytes
    heads = shape.batch * shape.q_heads
    rows = heads * shape.q_len
    row_bytes = shape.kv_len * e
    threads = softmax_threads(shape.kv_len, e)
    cached = len(reads) * row_bytes <= gpu.smem_per_block_optin_bytes
    smem = {f"{t} row": int(row_bytes) for t in reads} if cached else {}
    regs = registers_estimate(threads * SOFTMAX_VECTOR_BYTES / 4, threads)
    slots = occupancy(gpu, sum(smem.values()), threads // 32, regs, rows, name).slots
    l2_passes = 1 if cached else passes
    rows_in_l2 = min(slots, rows) * len(reads) * row_bytes <= gpu.l2_bytes
    traffic = {}
    for t in reads:
        once = rows * row_bytes
        traffic[t] = Traffic.streamed(read=l2_passes * once, hbm_read=once if rows_in_l2 else l2_passes * once)
    for t in writes:
        traffic[t] = Traffic.streamed(write=rows * row_bytes)
    scores = float(rows) * shape.kv_len
    masked = shape.causal or shape.window is not None
    cuda = scores * (ops_per_score + (MASK_OPS_PER_SCORE if masked else 0)) + rows * exp_per_row
    notes = () if cached else (f"row of {row_bytes:.0f} B does not fit shared memory: {passes} passes over L2",)
    return KernelCost(
        name=name, grid_ctas=rows, warps_per_cta=threads // 32, smem_buffers=smem, registers_per_thread=regs,
        tensor_flops=0.0, tensor_dtype=tensor_core_dtype(shape.dtype), cuda_ops=cuda,
        exp_ops=scores * exp_per_score + rows * exp_per_row, traffic=traffic,
        inflight_bytes_per_cta=float(threads * SOFTMAX_VECTOR_BYTES), notes=notes,
    )


def forward(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig) -> list[KernelCost]:
    e, kv_e = shape.element_bytes, shape.kv_element_bytes
    g = shape.group_size
    heads = shape.batch * shape.q_heads
    return [
        score_gemm(gpu, shape, tiles, "standard_qk", Operand("Q", e), Operand("K", kv_e, g), Operand("S", e)),
        row_kernel(gpu, shape, "standard_softmax", ["S"], ["P"], SOFTMAX_FWD_OPS_PER_SCORE, exp_per_row=1,
                   exp_per_score=1, passes=SOFTMAX_FWD_PASSES),
        value_gemm(gpu, shape, tiles, ValueGemm("standard_pv", heads, shape.q_len, shape.kv_len,
                                                Operand("P", e), Operand("V", kv_e, g), Operand("O", e))),
    ]


def backward(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig) -> list[KernelCost]:
    """dK and dV of a GQA group sum over its q heads: their GEMMs run per kv head with the group's
    queries stacked along the reduction (depth = group_size * q_len)."""
    e = shape.element_bytes
    g = shape.group_size
    heads, kv_heads = shape.batch * shape.q_heads, shape.batch * shape.kv_heads
    stacked = g * shape.q_len
    return [
        value_gemm(gpu, shape, tiles, ValueGemm("standard_bwd_dv", kv_heads, shape.kv_len, stacked,
                                                Operand("P", e), Operand("dO", e), Operand("dV", e))),
        score_gemm(gpu, shape, tiles, "standard_bwd_dp", Operand("dO", e), Operand("V", shape.kv_element_bytes, g),
                   Operand("dP", e)),
        row_kernel(gpu, shape, "standard_bwd_softmax", ["P", "dP"], ["dS"], SOFTMAX_BWD_OPS_PER_SCORE,
                   exp_per_row=0, exp_per_score=0, passes=SOFTMAX_BWD_PASSES),
        value_gemm(gpu, shape, tiles, ValueGemm("standard_bwd_dq", heads, shape.q_len, shape.kv_len,
                                                Operand("dS", e), Operand("K", shape.kv_element_bytes, g),
                                                Operand("dQ", e))),
        value_gemm(gpu, shape, tiles, ValueGemm("standard_bwd_dk", kv_heads, shape.kv_len, stacked,
                                                Operand("dS", e), Operand("Q", e), Operand("dK", e))),
    ]


def kernels(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig, pass_: str) -> list[KernelCost]:
    out = []
    if "fwd" in pass_:
        out.extend(forward(gpu, shape, tiles))
    if "bwd" in pass_:
        out.extend(backward(gpu, shape, tiles))
    return out


def schedule(shape: AttentionShape, tiles: TileConfig, pass_: str, gpu: GPUSpec | None = None) -> list:
    """The kernels as schedules for the discrete-event engine. Whether the softmax kernel keeps its row in
    shared memory depends on the GPU; `gpu` defaults to memsim's default GPU."""
    from memsim.hardware import load_gpu
    from memsim.schedules import standard as sched
    smem_limit_bytes = (gpu or load_gpu()).smem_per_block_optin_bytes
    out = []
    if "fwd" in pass_:
        out.extend(sched.forward(shape, tiles, smem_limit_bytes))
    if "bwd" in pass_:
        out.extend(sched.backward(shape, tiles, smem_limit_bytes))
    return out


ALGORITHM = Algorithm(
    name="standard",
    summary="Standard attention: S = QK^T, softmax, O = PV as separate kernels, S and P through HBM",
    passes=("fwd", "bwd", "fwd+bwd"),
    default_tiles=default_tiles,
    kernels=kernels,
    assumptions=ASSUMPTIONS,
    schedule=schedule,
)
