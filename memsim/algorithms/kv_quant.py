"""CUDA-core work to turn a KV cache stored in a narrow type back into numbers a matmul can take.

int8 and int4 caches hold one scale (fp16, or fp32: `shape.kv_scale_dtype`) per group of
`shape.kv_group_size` elements (`AttentionShape.kv_element_bytes` already counts the scale bytes); each element is
dequantised as x = q * scale on the way from shared memory to the tensor cores
(KIVI, Liu et al. 2024, section 3; vLLM's int8/fp8 KV caches do the same per element
in registers). fp8 caches are converted only. Counted per element loaded, one
instruction = one op, as memsim.algorithms.softmax counts:

    int8   convert to float 1, multiply by the group's scale 1                 = 2
    int4   shift 1, mask 1 (unpack a nibble), convert 1, multiply by scale 1   = 4
    fp8    convert to float 1                                                   = 1

Narrowing the product to the matmul's input type is taken as folded into the convert
(cvt.rn.bf16x2.f32 packs two results per instruction). Loading the scale itself is one
load per group of elements, not counted.

The integer-to-float convert is not a CUDA-core op: a Triton int8 dequantisation compiles it to
cvt.rn.f32.s16 (I2F.S16 in SASS), which on the H100 runs 16 per clock per SM on the same unit as
exp2 (MUFU.EX2): both alone and the two interleaved reach 16 per clock together, against 116 for
the fp32 FMA (validation/convert_peak.cu, results/h100/convert-peak-2026-11-22.json). So
int8's and int4's convert counts as special-function work (the exp_ops of VectorOps, on the SFU
pipe); fp8's e4m3x2 -> f16x2 convert runs 50 per clock per SM, two elements each, and stays a
CUDA-core op.
"""

from memsim.algorithms.softmax import VectorOps
from memsim.errors import MemsimError
from memsim.workload.dtypes import KV_DTYPES
from memsim.workload.shape import AttentionShape

DEQUANT_OPS_PER_ELEMENT = {
    "int8": 2,  # convert, scale
    "int4": 4,  # shift, mask, convert, scale
    "fp8": 1,  # convert
    # floating-point caches wide enough to feed the tensor cores as loaded
    "fp32": 0,
    "fp16": 0,
    "bf16": 0,
}

CAST_OPS_PER_ELEMENT = 1  # a float cache of another width than the compute type: one convert

# Of DEQUANT_OPS_PER_ELEMENT, the integer-to-float converts, which run on the special-function unit
SFU_OPS_PER_ELEMENT = {"int8": 1, "int4": 1}


def dequant_ops(elements: float, kv_dtype: str) -> float:
    """CUDA-core ops to dequantise `elements` K or V elements stored as `kv_dtype`."""
    if kv_dtype not in DEQUANT_OPS_PER_ELEMENT:
        raise MemsimError(f"kv_dtype = {kv_dtype!r} is not known; use one of {', '.join(KV_DTYPES)}")
    if elements < 0:
        raise MemsimError(f"elements = {elements} must be >= 0")
    return float(elements) * DEQUANT_OPS_PER_ELEMENT[kv_dtype]


def kv_load_ops(shape: AttentionShape, elements: float) -> float:
    """Ops to bring `elements` loaded K/V elements of `shape` into its compute type: none when the
    cache is stored in the compute type, dequantisation for fp8/int8/int4, one convert otherwise."""
    if shape.kv_dtype == shape.dtype:
        return 0.0
    if DEQUANT_OPS_PER_ELEMENT[shape.kv_dtype]:
        return dequant_ops(elements, shape.kv_dtype)
    return float(elements) * CAST_OPS_PER_ELEMENT


def kv_load_work(shape: AttentionShape, elements: float) -> VectorOps:
    """kv_load_ops as VectorOps: every op, with the integer-to-float converts as its SFU part (exp_ops)."""
    ops = kv_load_ops(shape, elements)
    sfu = float(elements) * SFU_OPS_PER_ELEMENT.get(shape.kv_dtype, 0) if ops else 0.0
    return VectorOps(ops, sfu)
