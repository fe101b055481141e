"""Linear attention (Katharopoulos et al. 2020): softmax(Q K^T) V replaced by
phi(Q) (phi(K)^T V) / (phi(Q) sum_j phi(K_j)), phi = elu + 1, O(N d^2) work instead of O(N^2 d).

Non-causal, two kernels:
  1. state: grid batch x kv_heads x num_splits (split fastest). A CTA walks its share of the
     keys in chunks of BLOCK_N, accumulating KV = phi(K)^T V (d x d, fp32, in registers) and
     z = sum phi(K) (d). Partial states from the splits are reduced by fp32 atomic adds into
     a global [batch, kv_heads, d, d + 1] buffer (red.global.add.f32 resolves in L2); one
     split stores its state plainly. With more than one split the buffer is zeroed first, by a
     PyTorch fill (`linear_state_zero`, torch.zeros); ordered (acq_rel) atomics return the old
     values to the SM (ATOMG), so their bytes cross from L2 to the SM as well (ncu: the state
     kernel's L2 -> SM bytes are K, V and exactly its atomics' bytes).
  2. output: grid T_r x batch x q_heads (q block fastest, as flash2). A CTA loads its kv
     head's state once (converted to the compute type in shared memory) and a Q tile of
     BLOCK_M rows, and writes O = phi(Q) KV / (phi(Q) z).

Causal, one kernel (the chunked form, chunk C = BLOCK_M): grid batch x q_heads x
num_splits, where num_splits splits the value dimension (Lightning Attention's layout):
each CTA holds S (d x d/s, fp32) and z on chip and walks the chunks in order:
    intra  (phi(Q) phi(K)^T masked) V     2 C^2 d + 2 C^2 d/s   tensor cores
    inter  phi(Q) S                       2 C d d/s             tensor cores
    update S += phi(K)^T V                2 C d d/s             tensor cores
With s = 1 that is the textbook 4 C^2 d + 4 C d^2 per chunk; each extra value split
recomputes phi(Q) phi(K)^T (2 C^2 d). The default s is the smallest power of two for which
S, the Q tile and `num_stages` K/V tiles fit in shared memory.

GQA: K/V (and the non-causal state) belong to a kv head and are shared, through L2, by the
CTAs of its q heads. phi = elu + 1 and the normaliser are CUDA-core work.
"""

from math import ceil

from memsim.algorithms.base import Algorithm, registers_estimate, require_forward
from memsim.algorithms.kv_quant import kv_load_work
from memsim.algorithms.pointwise import VECTORIZED, pointwise_kernel
from memsim.algorithms.softmax import VectorOps
from memsim.errors import MemsimError
from memsim.hardware.spec import GPUSpec
from memsim.kernel import KernelCost, Traffic
from memsim.l2_reuse import shared_hbm_reads
from memsim.occupancy import occupancy
from memsim.workload.dtypes import ACCUMULATOR_BYTES, tensor_core_dtype
from memsim.workload.shape import AttentionShape
from memsim.workload.tiles import TileConfig

# phi(x) = elu(x) + 1 = x + 1 if x > 0 else exp(x): exp 1 (SFU), add 1, select 1
ATOMIC_BYTES = 16  # one atomic instruction of a thread: 4 fp32 lanes (kernels/linear.py's SASS)
PHI_OPS = 3
PHI_EXP = 1
CHUNK = 64  # chunk length of flash-linear-attention's chunked kernels (BT = 64)

ASSUMPTIONS = (
    "phi = elu + 1 on CUDA cores (exp on the SFU); the normaliser phi(Q) z on CUDA cores",
    "non-causal: partial states reduced by fp32 atomics in L2; each state line from HBM once, written back once",
    "causal: one CTA per (batch, q head, value split) walks the chunks in order, S kept in shared memory",
    "Q, K, V read from HBM once (K/V shared by a GQA group through L2), O written once",
    "tensor cores run whole tiles; vector work on whole tiles",
)


def scaled(ops: VectorOps, factor: float) -> VectorOps:
    return VectorOps(ops.cuda_ops * factor, ops.exp_ops * factor)


def check_shape(shape: AttentionShape, algo: str = "linear") -> None:
    if shape.window is not None:
        raise MemsimError(f"window = {shape.window} is not modelled for {algo}; drop the window or use flash2")
    if shape.causal and shape.q_len != shape.kv_len:
        raise MemsimError(
            f"causal {algo} needs q_len == kv_len (the chunked scan covers the whole sequence), "
            f"got q_len = {shape.q_len}, kv_len = {shape.kv_len}")


# ---- causal: the chunked scan -------------------------------------------------------------

def value_width(shape: AttentionShape, splits: int) -> int:
    """Value columns each CTA holds: d / s, rounded up."""
    if splits > shape.head_dim:
        raise MemsimError(
            f"num_splits = {splits} splits the value dimension of {shape.head_dim} columns; "
            f"use num_splits <= head_dim = {shape.head_dim}")
    return ceil(shape.head_dim / splits)


def causal_smem(shape: AttentionShape, tiles: TileConfig) -> dict[str, int]:
    c, d, w = tiles.block_m, shape.head_dim, value_width(shape, tiles.num_splits)
    kv_e = shape.kv_element_bytes
    return {
        "state S": d * w * ACCUMULATOR_BYTES,  # stays on chip for the whole scan
        "Q tile": int(c * d * shape.element_bytes),
        "K tiles": int(tiles.num_stages * c * d * kv_e),
        "V tiles": int(tiles.num_stages * c * w * kv_e),
    }


def value_splits_to_fit(gpu: GPUSpec, shape: AttentionShape, block_m: int, num_stages: int) -> int:
    """The smallest power-of-two value split whose state and tiles fit one CTA's shared memory."""
    splits = 1
    while splits <= shape.head_dim:
        tiles = TileConfig(block_m=block_m, num_stages=num_stages, num_splits=splits)
        if sum(causal_smem(shape, tiles).values()) <= gpu.smem_per_block_optin_bytes:
            return splits
        splits *= 2
    raise MemsimError(
        f"block_m = {block_m} with num_stages = {num_stages} does not fit {gpu.name}'s shared memory "
        f"at any value split of head_dim = {shape.head_dim}; use a smaller chunk (block_m) or fewer stages")


def intra_flops_per_chunk(chunk: int, head_dim: int, width: int) -> float:
    """Left product inside a chunk, per CTA: Q K^T 2 C^2 d, masked scores x V 2 C^2 w."""
    c, d, w = chunk, head_dim, width
    return 2.0 * c * c * d + 2.0 * c * c * w


def inter_flops_per_chunk(chunk: int, head_dim: int, width: int) -> float:
    """Right product with the state and the state update, per CTA: Q S 2 C d w, S += K^T V 2 C d w."""
    c, d, w = chunk, head_dim, width
    return 4.0 * c * d * w


def causal_tensor_flops_per_chunk(chunk: int, head_dim: int, width: int) -> float:
    return intra_flops_per_chunk(chunk, head_dim, width) + inter_flops_per_chunk(chunk, head_dim, width)


def chunked_causal(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig, name: str,
                   per_chunk: VectorOps, per_cta: VectorOps, extra_traffic: dict[str, Traffic] | None = None,
                   notes: tuple[str, ...] = ()) -> KernelCost:
    """The chunked causal scan shared by linear attention and Lightning Attention; the callers
    give their vector work per chunk and per CTA (feature map, normaliser, decay)."""
    c, d, s = tiles.block_m, shape.head_dim, tiles.num_splits
    w = value_width(shape, s)
    n = shape.kv_len
    chunks = ceil(n / c)
    heads = shape.batch * shape.q_heads
    grid = heads * s
    smem = causal_smem(shape, tiles)
    regs = registers_estimate(c * w + c * c, tiles.threads)
    slots = occupancy(gpu, sum(smem.values()), tiles.num_warps, regs, grid, name).slots

    e, kv_e = shape.element_bytes, shape.kv_element_bytes
    kv_groups, kv_sharers = shape.batch * shape.kv_heads, shape.group_size * s
    kv_head_bytes = n * d * kv_e
    traffic = {
        "Q": Traffic.streamed(read=grid * n * d * e,
                              hbm_read=shared_hbm_reads(heads, s, slots, n * d * e, gpu.l2_bytes)),
        "K": Traffic.streamed(read=grid * kv_head_bytes,
                              hbm_read=shared_hbm_reads(kv_groups, kv_sharers, slots, kv_head_bytes, gpu.l2_bytes)),
        # each value split reads its own d/s columns of V
        "V": Traffic.streamed(read=heads * kv_head_bytes,
                              hbm_read=shared_hbm_reads(kv_groups, kv_sharers, slots, kv_head_bytes, gpu.l2_bytes)),
        "O": Traffic.streamed(write=heads * n * d * e),
        **(extra_traffic or {}),
    }
    vector = scaled(per_chunk, chunks) + per_cta
    dequant = kv_load_work(shape, n * (d + w))
    state_kib = d * w * ACCUMULATOR_BYTES / 1024
    return KernelCost(
        name=name, grid_ctas=grid, warps_per_cta=tiles.num_warps, smem_buffers=smem, registers_per_thread=regs,
        tensor_flops=grid * chunks * causal_tensor_flops_per_chunk(c, d, w),
        tensor_dtype=tensor_core_dtype(shape.dtype), cuda_ops=grid * (vector.cuda_ops + dequant.cuda_ops),
        exp_ops=grid * (vector.exp_ops + dequant.exp_ops), traffic=traffic,
        inflight_bytes_per_cta=tiles.num_stages * c * (d + w) * kv_e + c * d * e,
        notes=(f"{chunks} chunks of C = {c}; value dimension split {s} way(s): each CTA holds S of "
               f"{d} x {w} fp32 ({state_kib:.0f} KiB) on chip",
               f"tensor FLOPs: intra-chunk {grid * chunks * intra_flops_per_chunk(c, d, w):.4g}, "
               f"inter-chunk and state update {grid * chunks * inter_flops_per_chunk(c, d, w):.4g}") + notes,
    )


def linear_chunk_ops(chunk: int, head_dim: int, width: int) -> VectorOps:
    """Per chunk per CTA: phi of the Q and K tiles; causal mask on the C x C scores; the
    normaliser (masked row sums C^2, phi(Q) z one FMA per element, z += column sums of
    phi(K), denominator add and reciprocal per row); O = (intra + inter) / denominator."""
    c, d, w = chunk, head_dim, width
    phi = 2 * c * d
    cuda = phi * PHI_OPS + c * c + c * c + 2 * c * d + c * d + c + c + 2 * c * w
    return VectorOps(cuda, phi * PHI_EXP + c)


def causal_forward(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig) -> KernelCost:
    w = value_width(shape, tiles.num_splits)
    return chunked_causal(gpu, shape, tiles, "linear_causal", linear_chunk_ops(tiles.block_m, shape.head_dim, w),
                          VectorOps(0.0, 0.0))


# ---- non-causal: state, then output ---------------------------------------------------------

def ordered_atomic_rounds(state_bytes: float, tiles: TileConfig) -> int:
    """The atomics each thread of a state CTA issues one after another to add its partial state: each adds
    ATOMIC_BYTES (4 fp32 lanes, ATOMG.E.ADD.F32x4); ordered (acq_rel, TileConfig.atomic_sem) each waits out a
    fenced round trip. 0 for relaxed atomics, which the warps do not wait for."""
    if tiles.atomic_sem != "acq_rel":
        return 0
    return ceil(state_bytes / (tiles.threads * ATOMIC_BYTES))


def state_bytes_per_head(head_dim: int) -> int:
    """KV (d x d) and z (d), fp32."""
    return (head_dim * head_dim + head_dim) * ACCUMULATOR_BYTES


def state_splits(gpu: GPUSpec, shape: AttentionShape, block_n: int) -> int:
    """Key splits for the state kernel: enough CTAs for one per SM, no more (each adds atomics),
    and no more than the key chunks; then as many splits as it takes to cover the chunks with equal
    shares of that size, so that no split is left without keys (kernels/linear.py, share_keys: 16 heads
    of 64 chunks want 9 splits, which take 8 chunks each, so 8 splits)."""
    chunks = ceil(shape.kv_len / block_n)
    wanted = max(1, min(chunks, ceil(gpu.sm_count / (shape.batch * shape.kv_heads))))
    return ceil(chunks / ceil(chunks / wanted))


def state_kernel(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig) -> KernelCost:
    bn, d, s = tiles.block_n, shape.head_dim, tiles.num_splits
    chunks = ceil(shape.kv_len / bn)
    if s > chunks:
        raise MemsimError(
            f"num_splits = {s} is more than the {chunks} key chunks of BLOCK_N = {bn} over kv_len = "
            f"{shape.kv_len}; use num_splits <= {chunks}")
    kv_heads = shape.batch * shape.kv_heads
    grid = kv_heads * s
    kv_e = shape.kv_element_bytes
    smem = {"K tiles": int(tiles.num_stages * bn * d * kv_e), "V tiles": int(tiles.num_stages * bn * d * kv_e)}
    regs = registers_estimate(d * d + d, tiles.threads)
    slots = occupancy(gpu, sum(smem.values()), tiles.num_warps, regs, grid, "linear_state").slots
    per_head = state_bytes_per_head(d)
    kv_bytes = kv_heads * shape.kv_len * d * kv_e
    if s == 1:
        state = Traffic.streamed(write=kv_heads * per_head)
        how = "one split per head: the state is stored, no atomics"
    else:
        lines = shared_hbm_reads(kv_heads, s, slots, per_head, gpu.l2_bytes)
        rounds = ordered_atomic_rounds(per_head, tiles)
        returned = grid * per_head if rounds else 0.0  # ATOMG hands each old value back to its thread
        state = Traffic(l2_read=returned, l2_write=grid * per_head, hbm_read=lines, hbm_write=lines)
        how = (f"{s} partial states per head reduced by fp32 atomic adds in L2 (after a memset of the buffer)"
               + (f", {rounds} ordered (acq_rel) atomics per thread one after another" if rounds else ", relaxed"))
    elements = chunks * bn * d  # whole tiles
    dequant = kv_load_work(shape, 2 * shape.kv_len * d)
    cuda = kv_heads * (elements * (PHI_OPS + 1) + dequant.cuda_ops)
    return KernelCost(
        name="linear_state", grid_ctas=grid, warps_per_cta=tiles.num_warps, smem_buffers=smem,
        registers_per_thread=regs, tensor_flops=2.0 * kv_heads * chunks * bn * d * d,
        tensor_dtype=tensor_core_dtype(shape.dtype), cuda_ops=cuda,
        exp_ops=kv_heads * (elements * PHI_EXP + dequant.exp_ops),
        traffic={"K": Traffic.streamed(read=kv_bytes), "V": Traffic.streamed(read=kv_bytes), "KV_state": state},
        inflight_bytes_per_cta=tiles.num_stages * 2 * bn * d * kv_e, notes=(how,),
        ordered_atomic_rounds=0 if s == 1 else ordered_atomic_rounds(per_head, tiles),
    )


def state_fill(shape: AttentionShape, tiles: TileConfig) -> list[KernelCost]:
    """The launch before the state kernel: with more than one split, torch.zeros of the fp32 state buffer that the
    split CTAs' atomics add into (one of PyTorch's vectorized fills, a store per element); with one, none (the
    state is stored into an empty buffer)."""
    if tiles.num_splits <= 1:
        return []
    state = shape.batch * shape.kv_heads * state_bytes_per_head(shape.head_dim)
    elements = state / ACCUMULATOR_BYTES
    return [pointwise_kernel("linear_state_zero", ceil(elements / VECTORIZED), reads={}, writes={"KV_state": state},
                             cuda_ops=elements, tensor_dtype=tensor_core_dtype(shape.dtype),
                             notes=("the state buffer zeroed before the atomics add into it (torch.zeros)",))]


def output_ops_per_cta(block_m: int, head_dim: int) -> VectorOps:
    """phi(Q) 3 per element; phi(Q) z one FMA per element; reciprocal per row; O scaled by it,
    one per element; the fp32 state converted to the compute type, one per element."""
    bm, d = block_m, head_dim
    cuda = bm * d * PHI_OPS + 2 * bm * d + bm + bm * d + d * d + d
    return VectorOps(cuda, bm * d * PHI_EXP + bm)


def output_kernel(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig) -> KernelCost:
    bm, d = tiles.block_m, shape.head_dim
    t_r = ceil(shape.q_len / bm)
    heads = shape.batch * shape.q_heads
    grid = t_r * heads
    e = shape.element_bytes
    smem = {"Q tile": int(bm * d * e), "state": int(d * d * e) + d * ACCUMULATOR_BYTES}
    regs = registers_estimate(bm * d, tiles.threads)
    slots = occupancy(gpu, sum(smem.values()), tiles.num_warps, regs, grid, "linear_output").slots
    per_head = state_bytes_per_head(d)
    q_bytes = heads * shape.q_len * d * e
    state_hbm = shared_hbm_reads(shape.batch * shape.kv_heads, shape.group_size * t_r, slots, per_head, gpu.l2_bytes)
    ops = output_ops_per_cta(bm, d)
    return KernelCost(
        name="linear_output", grid_ctas=grid, warps_per_cta=tiles.num_warps, smem_buffers=smem,
        registers_per_thread=regs, tensor_flops=2.0 * grid * bm * d * d, tensor_dtype=tensor_core_dtype(shape.dtype),
        cuda_ops=grid * ops.cuda_ops, exp_ops=grid * ops.exp_ops,
        traffic={"Q": Traffic.streamed(read=q_bytes),
                 "KV_state": Traffic.streamed(read=grid * per_head, hbm_read=state_hbm),
                 "O": Traffic.streamed(write=q_bytes)},
        inflight_bytes_per_cta=per_head + bm * d * e,
    )


# ---- the algorithm ------------------------------------------------------------------------

def default_tiles(gpu: GPUSpec, shape: AttentionShape) -> TileConfig:
    """Causal: chunks of 64 (flash-linear-attention's size), value split to fit. Non-causal:
    BLOCK_N = 64 key chunks split to fill the SMs, BLOCK_M = 128 query rows, 8 warps to hold
    the d x d state accumulator in registers."""
    check_shape(shape)
    if shape.causal:
        splits = value_splits_to_fit(gpu, shape, CHUNK, 2)
        return TileConfig(block_m=CHUNK, block_n=CHUNK, num_warps=4, num_stages=2, num_splits=splits)
    return TileConfig(block_m=128, block_n=64, num_warps=8, num_stages=2,
                      num_splits=state_splits(gpu, shape, 64))


def forward(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig) -> list[KernelCost]:
    check_shape(shape)
    if shape.causal:
        return [causal_forward(gpu, shape, tiles)]
    return state_fill(shape, tiles) + [state_kernel(gpu, shape, tiles), output_kernel(gpu, shape, tiles)]


def kernels(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig, pass_: str) -> list[KernelCost]:
    require_forward(pass_, "linear")
    return forward(gpu, shape, tiles)


def schedule(shape: AttentionShape, tiles: TileConfig, pass_: str) -> list:
    from memsim.schedules import linear as sched
    require_forward(pass_, "linear")
    return sched.forward(shape, tiles)


ALGORITHM = Algorithm(
    name="linear",
    summary="linear attention (elu+1 features): d x d state, O(N d^2); causal as a chunked scan",
    passes=("fwd",),
    default_tiles=default_tiles,
    kernels=kernels,
    assumptions=ASSUMPTIONS,
    causal_needs_square=True,
    windows=False,
    schedule=schedule,
)
