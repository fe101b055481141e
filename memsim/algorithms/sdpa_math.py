"""PyTorch's math path for scaled_dot_product_attention (SDPBackend.MATH): standard attention in fp32, with
the elementwise kernels PyTorch launches around its two GEMMs and its softmax.

The launches, in order, as Nsight Compute recorded them on the H100 for bf16 inputs (torch 2.11,
validation/results/h100/ncu-sdpa-math-2026-11-22.csv and the sdpa_math rows of measurements-*.jsonl):

    Q, K, V to fp32 (three copies) -> Q and K scaled (two unary kernels)
    [causal: a boolean mask of ones, its lower triangle, two scalar fills, an fp32 bias of 0 / -inf]
    S = Q K^T (fp32 GEMM, FMA on the CUDA cores) [causal: S += bias]
    P = softmax(S) -> isneginf(S) -> all(.., dim=-1) per row -> a scalar fill -> P = where(row masked, 0, P)
    P to the input dtype (the attention weights the path also returns) -> O = P V (fp32 GEMM) -> O to the input dtype

So the N x N scores cross between the SMs and L2 8 times in fp32 (10 causal) and once more in the input dtype,
where memsim's standard attention moves them 4 times in the input dtype. fp32 inputs skip the casts. GQA is
refused: no GQA case of the math path was recorded. The GEMMs and the softmax are memsim.algorithms.standard's,
on fp32 operands.
"""

import dataclasses
from dataclasses import dataclass, field
from math import ceil

from memsim.algorithms import standard
from memsim.algorithms.base import Algorithm, require_forward
from memsim.algorithms.pointwise import BOOL_FILL, GENERIC, UNROLLED, VECTORIZED, pointwise_kernel
from memsim.errors import MemsimError
from memsim.hardware.spec import GPUSpec
from memsim.kernel import KernelCost
from memsim.workload.shape import AttentionShape
from memsim.workload.tiles import TileConfig

FP32_BYTES = 4
BOOL_BYTES = 1

ROWS_PER_REDUCE_CTA = 16  # all(..., dim=-1): 2048 CTAs for 32768 rows

ASSUMPTIONS = standard.ASSUMPTIONS[:2] + (
    "the launches of PyTorch's math path (torch 2.11): casts to fp32, Q and K scaled, the GEMMs in fp32 (FMA), "
    "softmax, the masked-row check (isneginf, all, where), P and O cast back to the input dtype",
    "a causal mask is built as an N x N fp32 bias of 0 / -inf and added to S",
    "every elementwise kernel streams its tensors once; the causal bias is read once (its re-reads from L2 by "
    "the other heads are not counted)",
)


@dataclass(frozen=True)
class Elementwise:
    """One of PyTorch's elementwise launches: `elements` outputs, `per_cta` of them per CTA; bytes read and
    written per tensor, each streamed once."""

    name: str
    elements: float
    per_cta: int
    reads: dict = field(default_factory=dict)
    writes: dict = field(default_factory=dict)

    @property
    def grid(self) -> int:
        return max(1, ceil(self.elements / self.per_cta))

    def cost(self, dtype: str) -> KernelCost:
        return pointwise_kernel(self.name, self.grid, self.reads, self.writes, cuda_ops=self.elements,
                                tensor_dtype=dtype)


def check_shape(shape: AttentionShape) -> None:
    """What scaled_dot_product_attention takes and memsim recorded: one dtype for Q, K and V, no sliding window,
    one K/V head per query head."""
    if shape.kv_dtype != shape.dtype:
        raise MemsimError(f"sdpa_math takes K and V in the query's dtype, as scaled_dot_product_attention does; "
                          f"kv_dtype = {shape.kv_dtype} with dtype = {shape.dtype}: give no --kv-dtype, or use standard")
    if shape.window is not None:
        raise MemsimError(f"sdpa_math has no sliding window (scaled_dot_product_attention takes none: a window is a "
                          f"mask of its own, not recorded); window = {shape.window}: use standard or flash2")
    if shape.group_size > 1:
        raise MemsimError(f"sdpa_math models multi-head attention only (q_heads = kv_heads); q_heads = "
                          f"{shape.q_heads}, kv_heads = {shape.kv_heads}: the math path's launches under GQA were never "
                          f"recorded, so memsim does not model them; use standard")


def fp32(shape: AttentionShape) -> AttentionShape:
    """The shape the GEMMs and the softmax run on."""
    return dataclasses.replace(shape, dtype="fp32", kv_dtype="fp32")


@dataclass(frozen=True)
class Around:
    """The elementwise launches around the GEMMs and the softmax, in order: before S = Q K^T, between it and
    the softmax, between the softmax and O = P V, after it."""

    before_qk: list
    before_softmax: list
    before_pv: list
    after_pv: list


def elementwise_launches(shape: AttentionShape) -> Around:
    e = shape.element_bytes
    cast = e != FP32_BYTES
    tag = operand_tag(shape)
    heads = shape.batch * shape.q_heads
    q = float(heads * shape.q_len * shape.head_dim)
    kv = float(shape.batch * shape.kv_heads * shape.kv_len * shape.head_dim)
    rows = float(heads * shape.q_len)
    scores = rows * shape.kv_len
    mask = float(shape.q_len * shape.kv_len)

    casts = [Elementwise(f"math_cast_{t.lower()}", n, UNROLLED, {t: n * e}, {f"{t}32": n * FP32_BYTES})
             for t, n in (("Q", q), ("K", kv), ("V", kv))] if cast else []
    scale_q, scale_k = (Elementwise(f"math_scale_{t.lower()}", n, VECTORIZED, {f"{t}{tag}": n * FP32_BYTES},
                                    {f"{t}{tag}": n * FP32_BYTES}) for t, n in (("Q", q), ("K", kv)))
    causal_mask = [  # built between the scaling of Q and of K
        Elementwise("math_mask_fill", mask, BOOL_FILL, writes={"mask": mask * BOOL_BYTES}),
        Elementwise("math_mask_tril", mask, VECTORIZED, {"mask": mask * BOOL_BYTES}, {"mask": mask * BOOL_BYTES}),
        Elementwise("math_fill_zero", 1, 1, writes={"scalar": FP32_BYTES}),
        Elementwise("math_fill_neg_inf", 1, 1, writes={"scalar": FP32_BYTES}),
        Elementwise("math_bias", mask, GENERIC, {"mask": mask * BOOL_BYTES}, {"bias": mask * FP32_BYTES}),
    ] if shape.causal else []
    # Every head adds the same bias: one copy from HBM, counted once (its re-reads from L2 are not counted).
    add_bias = [Elementwise("math_add_bias", scores, GENERIC, {"S": scores * FP32_BYTES, "bias": mask * FP32_BYTES},
                            {"S": scores * FP32_BYTES})] if shape.causal else []
    before_pv = [
        Elementwise("math_isneginf", scores, VECTORIZED, {"S": scores * FP32_BYTES}, {"neginf": scores * BOOL_BYTES}),
        Elementwise("math_all_masked", rows, ROWS_PER_REDUCE_CTA, {"neginf": scores * BOOL_BYTES},
                    {"row_masked": rows * BOOL_BYTES}),
        Elementwise("math_fill_zero_p", 1, 1, writes={"scalar": FP32_BYTES}),
        Elementwise("math_where", scores, GENERIC, {"P": scores * FP32_BYTES, "row_masked": rows * BOOL_BYTES},
                    {"P": scores * FP32_BYTES}),
    ]
    if cast:
        before_pv.append(Elementwise("math_cast_p", scores, VECTORIZED, {"P": scores * FP32_BYTES},
                                     {"P_out": scores * e}))
    after_pv = [Elementwise("math_cast_o", q, VECTORIZED, {"O32": q * FP32_BYTES}, {"O": q * e})] if cast else []
    return Around(casts + [scale_q] + causal_mask + [scale_k], add_bias, before_pv, after_pv)


def default_tiles(gpu: GPUSpec, shape: AttentionShape) -> TileConfig:
    """standard attention's tiles for fp32 operands, the matrix products as FMA on the CUDA cores: PyTorch leaves
    TF32 off for matmuls by default (torch.backends.cuda.matmul.allow_tf32), and ncu names the math path's GEMMs
    sm80_xmma_gemm_f32f32_..._ffma with the tensor pipe idle (results/h100/ncu-sdpa-math-2026-11-22.csv)."""
    return dataclasses.replace(standard.default_tiles(gpu, fp32(shape)), mma="fma")


def operand_tag(shape: AttentionShape) -> str:
    """The suffix of the tensors the GEMMs read and write: "32" for the fp32 copies of half inputs, none for fp32."""
    return "32" if shape.element_bytes != FP32_BYTES else ""


def gemm_operands(shape: AttentionShape):
    """The operands the math path's GEMMs read and write (Q, K, S, V, O)."""
    tag = operand_tag(shape)
    return (standard.Operand(f"Q{tag}", FP32_BYTES), standard.Operand(f"K{tag}", FP32_BYTES),
            standard.Operand("S", FP32_BYTES), standard.Operand(f"V{tag}", FP32_BYTES),
            standard.Operand(f"O{tag}", FP32_BYTES))


def kernels(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig, pass_: str) -> list[KernelCost]:
    require_forward(pass_, "sdpa_math")
    check_shape(shape)
    wide = fp32(shape)
    q, k, s, v, o = gemm_operands(shape)
    around = elementwise_launches(shape)
    heads = shape.batch * shape.q_heads

    def costs(launches: list[Elementwise]) -> list[KernelCost]:
        return [x.cost(wide.dtype) for x in launches]

    return [
        *costs(around.before_qk),
        standard.score_gemm(gpu, wide, tiles, "math_qk", q, k, s),
        *costs(around.before_softmax),
        standard.row_kernel(gpu, wide, "math_softmax", ["S"], ["P"], standard.SOFTMAX_FWD_OPS_PER_SCORE,
                            exp_per_row=1, exp_per_score=1, passes=standard.SOFTMAX_FWD_PASSES),
        *costs(around.before_pv),
        standard.value_gemm(gpu, wide, tiles, standard.ValueGemm("math_pv", heads, shape.q_len, shape.kv_len,
                                                                 standard.Operand("P", FP32_BYTES), v, o)),
        *costs(around.after_pv),
    ]


def schedule(shape: AttentionShape, tiles: TileConfig, pass_: str, gpu: GPUSpec | None = None) -> list:
    from memsim.schedules import sdpa_math as sched
    return sched.forward(shape, tiles, gpu)


ALGORITHM = Algorithm(
    name="sdpa_math",
    summary="PyTorch's math path for scaled_dot_product_attention: standard attention in fp32 with its casts "
            "and masked-row check",
    passes=("fwd",),
    default_tiles=default_tiles,
    kernels=kernels,
    assumptions=ASSUMPTIONS,
    windows=False,
    gqa=False,
    schedule=schedule,
)
