"""Element types: how many bytes each takes, and which tensor-core rate a matmul on it uses."""

from memsim.errors import MemsimError

# Storage bytes per element. int4 packs two elements per byte.
BYTES_PER_ELEMENT = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}

# Q/K/V dtypes an attention kernel computes in, and the tensor-core rate its matmuls run at.
# fp32 inputs run on TF32 tensor cores, as Triton's tl.dot does by default (input_precision="tf32").
COMPUTE_DTYPES = {"fp32": "tf32", "fp16": "fp16", "bf16": "bf16", "fp8": "fp8"}

# KV-cache storage types; quantised ones carry a scale per group of elements.
KV_DTYPES = ("fp32", "fp16", "bf16", "fp8", "int8", "int4")
QUANTISED_KV_DTYPES = ("int8", "int4")
# The types a group's scale may be stored in: fp16 by default (KIVI, Liu et al. 2024, uses fp16 scale and zero
# point) or fp32 (kernels/kv_quant.py's quantize_kv keeps fp32 scales for bf16 and fp32 tensors, whose range fp16
# may not hold).
SCALE_DTYPES = ("fp16", "fp32")
DEFAULT_SCALE_DTYPE = "fp16"
SCALE_BYTES = int(BYTES_PER_ELEMENT[DEFAULT_SCALE_DTYPE])  # one default scale per group, whole bytes
DEFAULT_KV_GROUP_SIZE = 64  # elements of a quantised K or V row sharing one scale

ACCUMULATOR_BYTES = 4  # fp32 accumulators and softmax statistics (m, l, LSE)


def bytes_per_element(dtype: str) -> float:
    if dtype not in BYTES_PER_ELEMENT:
        raise MemsimError(f"unknown dtype {dtype!r}; use one of {', '.join(BYTES_PER_ELEMENT)}")
    return BYTES_PER_ELEMENT[dtype]


def tensor_core_dtype(dtype: str) -> str:
    """The tensor-core rate key a matmul on `dtype` inputs uses."""
    if dtype not in COMPUTE_DTYPES:
        raise MemsimError(f"dtype {dtype!r} cannot be an attention compute type; use one of {', '.join(COMPUTE_DTYPES)}")
    return COMPUTE_DTYPES[dtype]
