"""CUDA-core work to turn a KV cache stored in a narrow type back into numbers a matmul can take.

int8 and int4 caches hold one fp16 scale per group of `shape.kv_group_size` elements
(`AttentionShape.kv_element_bytes` already counts the scale bytes); each element is
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
"""

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
