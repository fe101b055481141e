"""What fits in one GPU's memory: weights, a reserve, and the KV cache in the rest.

A reserve fraction of HBM is kept for activations, the runtime (CUDA context, allocator slack,
communication buffers) and fragmentation; vLLM's default `gpu_memory_utilization = 0.9` keeps the
same 10%. The KV cache is allocated in blocks of `block_size` tokens (PagedAttention, Kwon et al.
2023, section 4.2): a sequence of L tokens holds ceil(L / block_size) blocks. block_size = 1 is
exact, token by token.
"""

from dataclasses import dataclass
from math import ceil, floor

from memsim.errors import MemsimError

DEFAULT_RESERVE_FRACTION = 0.10  # of HBM, kept for activations and the runtime (vLLM keeps 10% by default)


def check_reserve(fraction: float) -> None:
    if not 0.0 <= fraction < 1.0:
        raise MemsimError(f"reserve fraction = {fraction} must be in [0, 1): the share of HBM kept for "
                          f"activations and the runtime, e.g. 0.1")


def check_block_size(block_size: int) -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
        raise MemsimError(f"block_size = {block_size!r} must be a positive whole number of tokens")


@dataclass(frozen=True)
class MemoryBudget:
    """One GPU's HBM: the reserve, the weights it holds, and what is left for the KV cache."""

    hbm_bytes: int
    weights_bytes: int  # this GPU's share
    reserve_fraction: float = DEFAULT_RESERVE_FRACTION

    def __post_init__(self):
        check_reserve(self.reserve_fraction)

    @property
    def reserve_bytes(self) -> int:
        return floor(self.hbm_bytes * self.reserve_fraction)

    @property
    def usable_bytes(self) -> int:
        """HBM less the reserve: what weights and KV cache may take together."""
        return self.hbm_bytes - self.reserve_bytes

    @property
    def weights_fit(self) -> bool:
        return self.weights_bytes <= self.usable_bytes

    @property
    def kv_bytes(self) -> int:
        """Bytes left for the KV cache (0 when the weights do not fit)."""
        return max(0, self.usable_bytes - self.weights_bytes)

    def as_dict(self) -> dict:
        return {"hbm_bytes": self.hbm_bytes, "reserve_fraction": self.reserve_fraction,
                "reserve_bytes": self.reserve_bytes, "weights_bytes": self.weights_bytes,
                "kv_bytes": self.kv_bytes, "weights_fit": self.weights_fit}


def kv_blocks(kv_bytes: int, bytes_per_token: int, block_size: int) -> int:
    """Whole blocks of `block_size` tokens that `kv_bytes` hold."""
    check_block_size(block_size)
    return kv_bytes // (block_size * bytes_per_token)


def blocks_for(tokens: int, block_size: int) -> int:
    """Blocks a sequence of `tokens` tokens occupies: its last block may be partly empty."""
    return ceil(tokens / block_size)


def max_batch(kv_bytes: int, bytes_per_token: int, context: int, block_size: int = 1) -> int:
    """The most sequences of `context` tokens whose blocks fit in `kv_bytes`."""
    _positive("context", context)
    return kv_blocks(kv_bytes, bytes_per_token, block_size) // blocks_for(context, block_size)


def max_context(kv_bytes: int, bytes_per_token: int, batch: int, block_size: int = 1) -> int:
    """The longest context (a whole number of blocks) that `batch` sequences can each have."""
    _positive("batch", batch)
    return kv_blocks(kv_bytes, bytes_per_token, block_size) // batch * block_size


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise MemsimError(f"{name} = {value!r} must be a positive whole number")
