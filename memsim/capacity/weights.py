"""Weight bytes: parameters times bytes per parameter, split evenly over tensor-parallel GPUs.

int8 and int4 weights carry one fp16 scale per group of 128 weights (the group size of GPTQ,
Frantar et al. 2023, section 5, and AWQ, Lin et al. 2024, section 4). Splitting everything evenly
over tp GPUs counts the RMSNorm weights, which are replicated in practice, once: they are under
0.01% of a 7B model's parameters.
"""

from math import ceil

from memsim.errors import MemsimError
from memsim.workload.dtypes import BYTES_PER_ELEMENT, SCALE_BYTES

WEIGHT_DTYPES = ("fp32", "fp16", "bf16", "fp8", "int8", "int4")
QUANTISED_WEIGHT_DTYPES = ("int8", "int4")
WEIGHT_GROUP_SIZE = 128  # weights per scale for int8/int4 (GPTQ, AWQ)


def weight_bytes(params: int, dtype: str = "bf16") -> int:
    """Bytes of `params` weights stored as `dtype`, scales included."""
    if dtype not in WEIGHT_DTYPES:
        raise MemsimError(f"weight dtype = {dtype!r} is not known; use one of {', '.join(WEIGHT_DTYPES)}")
    if params < 0:
        raise MemsimError(f"params = {params} must be >= 0")
    scales = ceil(params / WEIGHT_GROUP_SIZE) * SCALE_BYTES if dtype in QUANTISED_WEIGHT_DTYPES else 0
    return ceil(params * BYTES_PER_ELEMENT[dtype]) + scales


def weight_bytes_per_gpu(params: int, dtype: str = "bf16", tp: int = 1) -> int:
    """Each of `tp` GPUs holds 1/tp of every weight matrix (rounded up to whole bytes)."""
    return ceil(weight_bytes(params, dtype) / tp)
