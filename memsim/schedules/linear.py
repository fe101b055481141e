"""Linear attention (memsim.algorithms.linear) as schedules: the same kernels as the closed form.

Causal, one launch: program id p = split + s * (batch * q_heads + head), the value split
fastest, so the s CTAs of one head (which share its Q and K chunks through L2) run side by
side. Each CTA keeps its d x d/s fp32 state S (and z) on chip for the whole scan: S starts at
zero in registers and is never loaded or stored. Per chunk of C = BLOCK_M rows it loads Q, K
and its own d/s columns of V, then
    Vector  phi(Q), phi(K) (and any dequantisation of K/V)
    Mma     intra-chunk left product (phi(Q) phi(K)^T masked) V
    Mma     inter-chunk right product phi(Q) S
    Vector  mask, normaliser, O = (intra + inter) / denominator
    Store   its d/s columns of O for the chunk
    Mma     state update S += phi(K)^T V
Lightning Attention-2 (memsim.schedules.lightning) is the same scan with other vector work.

Non-causal, two launches, after a fill of the state buffer where there are splits
(`linear_state_zero`, memsim.algorithms.linear.state_fill): `linear_state` (grid batch x kv_heads x
splits, split fastest; each CTA walks a contiguous share of the key chunks, accumulating KV and z in
registers, and adds its partial state into L2 with fp32 atomics, or stores it when there is one split) and
`linear_output` (grid T_r x batch x q_heads, q block fastest; each CTA loads its Q tile and
its kv head's state together, then O = phi(Q) KV / (phi(Q) z)).
"""

from math import ceil

from memsim.algorithms import linear
from memsim.algorithms.base import registers_estimate
from memsim.algorithms.kv_quant import kv_load_work
from memsim.algorithms.softmax import VectorOps
from memsim.errors import MemsimError
from memsim.schedules.pointwise import pointwise
from memsim.schedules.steps import Atomic, CtaProgram, Launch, Load, Loop, Mma, Store, Vector
from memsim.workload.dtypes import ACCUMULATOR_BYTES, tensor_core_dtype
from memsim.workload.shape import AttentionShape
from memsim.workload.tiles import TileConfig

NO_OPS = VectorOps(0.0, 0.0)


def vector(ops: VectorOps, extra_cuda_ops: float = 0.0) -> Vector:
    """A Vector step from counts that include exp (the closed forms' convention) plus plain CUDA-core ops."""
    return Vector(ops.cuda_ops - ops.exp_ops + extra_cuda_ops, ops.exp_ops)


def phi_ops(chunk: int, head_dim: int) -> VectorOps:
    """phi = elu + 1 on the Q and K tiles of a chunk: the part of linear.linear_chunk_ops before the matmuls."""
    elements = 2 * chunk * head_dim
    return VectorOps(elements * linear.PHI_OPS, elements * linear.PHI_EXP)


def split_columns(head_dim: int, width: int, split: int) -> int:
    """Value columns split `split` really holds: d / s rounded up, the last splits what is left."""
    return max(0, min(width, head_dim - split * width))


# ---- causal: the chunked scan -------------------------------------------------------------

def chunked_causal(shape: AttentionShape, tiles: TileConfig, name: str, before: VectorOps, after: VectorOps,
                   setup: VectorOps = NO_OPS, decay: bool = False) -> Launch:
    """The scan shared by linear attention and Lightning Attention-2. `before` and `after` are the
    vector work per chunk on either side of the matmuls, `setup` once per CTA; `decay` reads one
    fp32 rate per head first (shared by the CTAs of that head in every batch)."""
    c, d, s = tiles.block_m, shape.head_dim, tiles.num_splits
    w = linear.value_width(shape, s)
    n = shape.kv_len
    chunks = ceil(n / c)
    e, kv_e = shape.element_bytes, shape.kv_element_bytes
    dtype = tensor_core_dtype(shape.dtype)
    intra = Mma(linear.intra_flops_per_chunk(c, d, w), dtype)
    half_inter = Mma(linear.inter_flops_per_chunk(c, d, w) / 2, dtype)  # phi(Q) S, then S += phi(K)^T V

    def program(pid: int) -> CtaProgram:
        split, bh = pid % s, pid // s
        batch, head = divmod(bh, shape.q_heads)
        kv_region = (batch, head // shape.group_size)
        cols = split_columns(d, w, split)

        def loads(i: int) -> tuple[Load, ...]:
            rows = min(c, n - i * c)
            qk = (Load("Q", (batch, head), i, rows * d * e), Load("K", kv_region, i, rows * d * kv_e))
            return qk + ((Load("V", kv_region, i * s + split, rows * cols * kv_e),) if cols else ())

        def compute(i: int):
            rows = min(c, n - i * c)
            out = (Store("O", None, i, rows * cols * e),) if cols else ()
            return (vector(before + kv_load_work(shape, rows * (d + w))), intra, half_inter, vector(after)) \
                + out + (half_inter,)

        prologue = (Load("decay", "rates", head, ACCUMULATOR_BYTES),) if decay else ()
        if setup.cuda_ops:
            prologue += (vector(setup),)
        return CtaProgram(prologue=prologue, loop=Loop(chunks, loads, compute))

    return Launch(
        name=name, grid=shape.batch * shape.q_heads * s, warps_per_cta=tiles.num_warps,
        smem_buffers=linear.causal_smem(shape, tiles),
        registers_per_thread=registers_estimate(c * w + c * c, tiles.threads),
        num_stages=tiles.num_stages, program=program, work_class=lambda pid: pid,  # every CTA reads its own Q/V
    )


def causal_forward(shape: AttentionShape, tiles: TileConfig) -> Launch:
    c, d = tiles.block_m, shape.head_dim
    per_chunk = linear.linear_chunk_ops(c, d, linear.value_width(shape, tiles.num_splits))
    phi = phi_ops(c, d)
    after = VectorOps(per_chunk.cuda_ops - phi.cuda_ops, per_chunk.exp_ops - phi.exp_ops)
    return chunked_causal(shape, tiles, "linear_causal", phi, after)


# ---- non-causal: state, then output ---------------------------------------------------------

def check_state_splits(shape: AttentionShape, tiles: TileConfig) -> int:
    chunks = ceil(shape.kv_len / tiles.block_n)
    if tiles.num_splits > chunks:
        raise MemsimError(
            f"num_splits = {tiles.num_splits} is more than the {chunks} key chunks of BLOCK_N = {tiles.block_n} over "
            f"kv_len = {shape.kv_len}; use num_splits <= {chunks}")
    return chunks


def state_kernel(shape: AttentionShape, tiles: TileConfig) -> Launch:
    """Each CTA walks chunks [split * chunks / s, (split + 1) * chunks / s) of its kv head."""
    bn, d, s = tiles.block_n, shape.head_dim, tiles.num_splits
    chunks = check_state_splits(shape, tiles)
    kv_e = shape.kv_element_bytes
    per_head = linear.state_bytes_per_head(d)
    per_chunk = VectorOps(bn * d * (linear.PHI_OPS + 1), bn * d * linear.PHI_EXP)  # phi(K), z += column sums
    update = Mma(2.0 * bn * d * d, tensor_core_dtype(shape.dtype))
    rounds = linear.ordered_atomic_rounds(per_head, tiles)

    def program(pid: int) -> CtaProgram:
        split, kvh = pid % s, pid // s
        region = divmod(kvh, shape.kv_heads)
        first, last = split * chunks // s, (split + 1) * chunks // s

        def rows(i: int) -> int:
            return min(bn, shape.kv_len - (first + i) * bn)

        def loads(i: int) -> tuple[Load, ...]:
            return (Load("K", region, first + i, rows(i) * d * kv_e), Load("V", region, first + i, rows(i) * d * kv_e))

        def compute(i: int):
            return (vector(per_chunk + kv_load_work(shape, 2 * rows(i) * d)), update)

        reduce = Store("KV_state", region, 0, per_head) if s == 1 else \
            Atomic("KV_state", region, 0, per_head, ordered_rounds=rounds)
        return CtaProgram(loop=Loop(last - first, loads, compute), epilogue=(reduce,))

    return Launch(
        name="linear_state", grid=shape.batch * shape.kv_heads * s, warps_per_cta=tiles.num_warps,
        smem_buffers={"K tiles": int(tiles.num_stages * bn * d * kv_e),
                      "V tiles": int(tiles.num_stages * bn * d * kv_e)},
        registers_per_thread=registers_estimate(d * d + d, tiles.threads), num_stages=tiles.num_stages,
        program=program, work_class=lambda pid: pid,  # every CTA walks its own chunks
    )


def output_kernel(shape: AttentionShape, tiles: TileConfig) -> Launch:
    bm, d = tiles.block_m, shape.head_dim
    t_r = ceil(shape.q_len / bm)
    e = shape.element_bytes
    per_head = linear.state_bytes_per_head(d)
    ops = linear.output_ops_per_cta(bm, d)
    matmul = Mma(2.0 * bm * d * d, tensor_core_dtype(shape.dtype))

    def locate(pid: int) -> tuple[int, int, int]:
        q_block, bh = pid % t_r, pid // t_r
        batch, head = divmod(bh, shape.q_heads)
        return min(bm, shape.q_len - q_block * bm), batch, head // shape.group_size

    def program(pid: int) -> CtaProgram:
        rows, batch, kv_head = locate(pid)
        both = (Load("Q", None, 0, rows * d * e), Load("KV_state", (batch, kv_head), 0, per_head))  # fetched together
        return CtaProgram(loop=Loop(1, lambda i: both,
                                    lambda i: (vector(ops), matmul, Store("O", None, 0, rows * d * e))))

    return Launch(
        name="linear_output", grid=t_r * shape.batch * shape.q_heads, warps_per_cta=tiles.num_warps,
        smem_buffers={"Q tile": int(bm * d * e), "state": int(d * d * e) + d * ACCUMULATOR_BYTES},
        registers_per_thread=registers_estimate(bm * d, tiles.threads), num_stages=tiles.num_stages,
        program=program, work_class=locate,  # CTAs with the same rows and kv head read the same state
    )


def forward(shape: AttentionShape, tiles: TileConfig) -> list[Launch]:
    linear.check_shape(shape)
    if shape.causal:
        return [causal_forward(shape, tiles)]
    fill = [pointwise(cost) for cost in linear.state_fill(shape, tiles)]
    return fill + [state_kernel(shape, tiles), output_kernel(shape, tiles)]
