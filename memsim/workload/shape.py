"""The attention problem: who attends to whom, how wide, in what precision."""

from dataclasses import asdict, dataclass

import numpy as np

from memsim.errors import MemsimError
from memsim.workload.dtypes import (COMPUTE_DTYPES, DEFAULT_KV_GROUP_SIZE, DEFAULT_SCALE_DTYPE, KV_DTYPES,
                                    QUANTISED_KV_DTYPES, SCALE_DTYPES, bytes_per_element)


@dataclass(frozen=True, kw_only=True)
class AttentionShape:
    """Q is [batch, q_heads, q_len, head_dim]; K and V are [batch, kv_heads, kv_len, head_dim].

    kv_heads < q_heads is grouped-query attention (GQA); kv_heads == 1 is multi-query (MQA).
    q_len == 1 is a decode step. With `causal`, query i (aligned to the end of the keys,
    as in a KV cache) sees keys up to kv_len - q_len + i. `window` keeps only the last
    `window` keys each query may see (sliding-window attention).
    """

    batch: int = 1
    q_heads: int = 32
    kv_heads: int | None = None  # None: same as q_heads
    q_len: int = 4096
    kv_len: int | None = None  # None: same as q_len
    head_dim: int = 128
    dtype: str = "bf16"
    kv_dtype: str | None = None  # None: same as dtype
    kv_group_size: int = DEFAULT_KV_GROUP_SIZE  # elements sharing one scale, for int8/int4 KV caches
    kv_scale_dtype: str = DEFAULT_SCALE_DTYPE  # the type of each group's scale (memsim.workload.dtypes.SCALE_DTYPES)
    causal: bool = False
    window: int | None = None

    def __post_init__(self):
        if self.kv_heads is None:
            object.__setattr__(self, "kv_heads", self.q_heads)
        if self.kv_len is None:
            object.__setattr__(self, "kv_len", self.q_len)
        if self.kv_dtype is None:
            object.__setattr__(self, "kv_dtype", self.dtype)
        _check(self)

    @property
    def group_size(self) -> int:
        """Query heads that share one K/V head."""
        return self.q_heads // self.kv_heads

    @property
    def is_decode(self) -> bool:
        return self.q_len == 1

    @property
    def element_bytes(self) -> float:
        return bytes_per_element(self.dtype)

    @property
    def out_element_bytes(self) -> float:
        """Bytes per element of the output O: fp8 attention writes O in bf16 (FlashAttention-3,
        hopper/flash_api.cpp: out_type = bf16 for float8_e4m3fn inputs; kernels/flash2_fp8.py alike)."""
        return bytes_per_element("bf16") if self.dtype == "fp8" else self.element_bytes

    @property
    def kv_element_bytes(self) -> float:
        """Bytes per K or V element in HBM, scales of quantised formats included."""
        quantised = self.kv_dtype in QUANTISED_KV_DTYPES
        scale = bytes_per_element(self.kv_scale_dtype) / self.kv_group_size if quantised else 0.0
        return bytes_per_element(self.kv_dtype) + scale

    def key_ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """[first, last) key index of every query, as two arrays of length q_len."""
        query = np.arange(self.q_len, dtype=np.int64)
        last = np.full(self.q_len, self.kv_len, dtype=np.int64)
        if self.causal:
            last = np.minimum(self.kv_len, self.kv_len - self.q_len + query + 1)
        first = np.zeros(self.q_len, dtype=np.int64)
        if self.window is not None:
            first = np.maximum(0, last - self.window)
        return first, np.maximum(first, last)

    def scores(self) -> int:
        """Query-key pairs that are not masked, per (batch, q head)."""
        first, last = self.key_ranges()
        return int((last - first).sum())

    def as_dict(self) -> dict:
        return asdict(self)


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise MemsimError(f"{name} = {value!r} must be a positive whole number")


def _check(shape: AttentionShape) -> None:
    for name in ("batch", "q_heads", "kv_heads", "q_len", "kv_len", "head_dim", "kv_group_size"):
        _positive(name, getattr(shape, name))
    if shape.q_heads % shape.kv_heads:
        raise MemsimError(
            f"q_heads = {shape.q_heads} is not a multiple of kv_heads = {shape.kv_heads}; "
            f"kv_heads must divide q_heads (GQA groups query heads evenly)")
    if shape.dtype not in COMPUTE_DTYPES:
        raise MemsimError(f"dtype = {shape.dtype!r} is not supported; use one of {', '.join(COMPUTE_DTYPES)}")
    if shape.kv_dtype not in KV_DTYPES:
        raise MemsimError(f"kv_dtype = {shape.kv_dtype!r} is not supported; use one of {', '.join(KV_DTYPES)}")
    if shape.kv_scale_dtype not in SCALE_DTYPES:
        raise MemsimError(f"kv_scale_dtype = {shape.kv_scale_dtype!r} is not supported; use one of "
                          f"{', '.join(SCALE_DTYPES)}")
    if shape.window is not None:
        _positive("window", shape.window)
    if shape.causal and shape.q_len > shape.kv_len:
        raise MemsimError(
            f"causal attention with q_len = {shape.q_len} > kv_len = {shape.kv_len}: the first queries would "
            f"see no key; use q_len <= kv_len")
