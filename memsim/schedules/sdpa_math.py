"""PyTorch's math path (memsim.algorithms.sdpa_math) as schedules: the standard-attention GEMM and softmax
schedules on fp32 operands, with each elementwise launch streaming an equal share of its tensors per CTA."""

from memsim.algorithms import sdpa_math as alg
from memsim.algorithms.standard import SOFTMAX_FWD_OPS_PER_SCORE, SOFTMAX_FWD_PASSES, Operand, ValueGemm
from memsim.hardware.spec import GPUSpec
from memsim.schedules import standard
from memsim.schedules.pointwise import pointwise
from memsim.schedules.steps import Launch
from memsim.workload.shape import AttentionShape
from memsim.workload.tiles import TileConfig


def elementwise(x: alg.Elementwise) -> Launch:
    """Every CTA reads and writes an equal share of each tensor, private to it."""
    return pointwise(x.cost("fp32"))


def forward(shape: AttentionShape, tiles: TileConfig, gpu: GPUSpec | None = None) -> list[Launch]:
    from memsim.hardware import load_gpu
    alg.check_shape(shape)
    smem_limit_bytes = (gpu or load_gpu()).smem_per_block_optin_bytes
    wide = alg.fp32(shape)
    q, k, s, v, o = alg.gemm_operands(shape)
    around = alg.elementwise_launches(shape)
    heads = shape.batch * shape.q_heads
    return [
        *map(elementwise, around.before_qk),
        standard.score_gemm(wide, tiles, "math_qk", q, k, s),
        *map(elementwise, around.before_softmax),
        standard.row_kernel(wide, smem_limit_bytes, "math_softmax", ["S"], ["P"], SOFTMAX_FWD_OPS_PER_SCORE,
                            exp_per_row=1, exp_per_score=1, passes=SOFTMAX_FWD_PASSES),
        *map(elementwise, around.before_pv),
        standard.value_gemm(wide, tiles, ValueGemm("math_pv", heads, shape.q_len, shape.kv_len,
                                                   Operand("P", alg.FP32_BYTES), v, o)),
        *map(elementwise, around.after_pv),
    ]
