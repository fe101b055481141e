"""KV-cache bytes: per token, per sequence, per GPU under tensor parallelism.

Per token and layer the cache holds one K and one V vector of head_dim elements for each K/V
head, so a token costs

    2 (K and V) x layers x kv_heads x head_dim x bytes per element

(Llama-2-7B in fp16: 2 x 32 x 32 x 128 x 2 = 524,288 B per token). int8 and int4 caches add one
fp16 scale per group of `group_size` elements of a head vector (memsim.workload.dtypes, as in KIVI,
Liu et al. 2024); int4 packs two elements per byte.

Tensor parallelism over `tp` GPUs splits the K/V heads (Megatron-LM, Shoeybi et al. 2019, section 3:
attention heads are partitioned across GPUs). With fewer K/V heads than GPUs each GPU still needs
the K/V head its query heads read, so each head is stored on tp / kv_heads GPUs (replicated).
"""

from dataclasses import dataclass
from math import ceil

from memsim.errors import MemsimError
from memsim.models.spec import ModelSpec
from memsim.workload.dtypes import BYTES_PER_ELEMENT, DEFAULT_KV_GROUP_SIZE, KV_DTYPES, QUANTISED_KV_DTYPES, SCALE_BYTES


def head_vector_bytes(head_dim: int, kv_dtype: str, group_size: int = DEFAULT_KV_GROUP_SIZE) -> int:
    """Bytes of one K (or V) vector of one head for one token, scales of quantised types included."""
    if kv_dtype not in KV_DTYPES:
        raise MemsimError(f"kv_dtype = {kv_dtype!r} is not known; use one of {', '.join(KV_DTYPES)}")
    if group_size <= 0:
        raise MemsimError(f"kv group_size = {group_size} must be a positive whole number")
    values = ceil(head_dim * BYTES_PER_ELEMENT[kv_dtype])
    scales = ceil(head_dim / group_size) * SCALE_BYTES if kv_dtype in QUANTISED_KV_DTYPES else 0
    return values + scales


def check_tp(model: ModelSpec, tp: int) -> None:
    """Megatron-style tensor parallelism needs whole query heads per GPU, and K/V heads either split
    evenly or each replicated on a whole number of GPUs (vLLM refuses other splits)."""
    if isinstance(tp, bool) or not isinstance(tp, int) or tp <= 0:
        raise MemsimError(f"tp = {tp!r} must be a positive whole number of GPUs")
    if model.q_heads % tp:
        raise MemsimError(f"tp = {tp} does not divide {model.name}'s {model.q_heads} query heads; "
                          f"use a divisor of {model.q_heads}")
    if model.kv_heads % tp and tp % model.kv_heads:
        raise MemsimError(f"tp = {tp} and {model.name}'s {model.kv_heads} K/V heads: one must divide the other "
                          f"so each GPU holds whole K/V heads")


@dataclass(frozen=True)
class KVLayout:
    """How one model's KV cache is stored: element type, and its K/V heads over `tp` GPUs."""

    model: ModelSpec
    kv_dtype: str
    tp: int = 1
    group_size: int = DEFAULT_KV_GROUP_SIZE

    def __post_init__(self):
        check_tp(self.model, self.tp)
        head_vector_bytes(self.model.head_dim, self.kv_dtype, self.group_size)

    @property
    def replicated(self) -> bool:
        """Fewer K/V heads than GPUs: each head is stored on tp / kv_heads GPUs."""
        return self.model.kv_heads < self.tp

    @property
    def kv_heads_per_gpu(self) -> int:
        return 1 if self.replicated else self.model.kv_heads // self.tp

    @property
    def q_heads_per_gpu(self) -> int:
        return self.model.q_heads // self.tp

    @property
    def head_bytes_per_token(self) -> int:
        """K and V of one head in one layer, for one token."""
        return 2 * head_vector_bytes(self.model.head_dim, self.kv_dtype, self.group_size)

    @property
    def bytes_per_token(self) -> int:
        """The model's whole cache per token, each K/V head counted once."""
        return self.model.layers * self.model.kv_heads * self.head_bytes_per_token

    @property
    def bytes_per_token_per_gpu(self) -> int:
        return self.model.layers * self.kv_heads_per_gpu * self.head_bytes_per_token

    @property
    def bytes_per_token_all_gpus(self) -> int:
        """What the tp GPUs hold together per token: bytes_per_token, times the replication if any."""
        return self.tp * self.bytes_per_token_per_gpu

    def as_dict(self) -> dict:
        return {"kv_dtype": self.kv_dtype, "group_size": self.group_size, "tp": self.tp,
                "kv_heads_per_gpu": self.kv_heads_per_gpu, "q_heads_per_gpu": self.q_heads_per_gpu,
                "replicated": self.replicated, "bytes_per_token": self.bytes_per_token,
                "bytes_per_token_per_gpu": self.bytes_per_token_per_gpu,
                "bytes_per_token_all_gpus": self.bytes_per_token_all_gpus}


def kv_bytes_per_token(model: ModelSpec, kv_dtype: str = "bf16", group_size: int = DEFAULT_KV_GROUP_SIZE) -> int:
    """2 x layers x kv_heads x head_dim x bytes per element (+ scales), for the whole model."""
    return KVLayout(model, kv_dtype, 1, group_size).bytes_per_token
