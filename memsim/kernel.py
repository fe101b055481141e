"""What one kernel launch costs, before any timing: the output of an algorithm's closed form.

Bytes are listed per tensor, at both levels of the hierarchy that matter:
`l2_*` is traffic between the SMs and L2 (what the FlashAttention paper calls
HBM accesses, since it has no L2), `hbm_*` between L2 and HBM.
"""

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping


@dataclass(frozen=True)
class Traffic:
    """Bytes one tensor moves in one kernel."""

    l2_read: float = 0.0  # L2 -> SM
    l2_write: float = 0.0  # SM -> L2
    hbm_read: float = 0.0  # HBM -> L2
    hbm_write: float = 0.0  # L2 -> HBM (dirty lines written back during the kernel)
    hbm_write_deferred: float = 0.0  # still dirty in L2 when the kernel ends (memsim.writes)

    def __add__(self, other: "Traffic") -> "Traffic":
        return Traffic(self.l2_read + other.l2_read, self.l2_write + other.l2_write,
                       self.hbm_read + other.hbm_read, self.hbm_write + other.hbm_write,
                       self.hbm_write_deferred + other.hbm_write_deferred)

    @staticmethod
    def streamed(read: float = 0.0, write: float = 0.0, hbm_read: float | None = None) -> "Traffic":
        """Read and written through L2; every written byte goes back to HBM; reads come from HBM
        as often as `hbm_read` says (default: every read misses L2)."""
        return Traffic(read, write, read if hbm_read is None else hbm_read, write)


@dataclass(frozen=True, kw_only=True)
class KernelCost:
    name: str
    grid_ctas: int
    warps_per_cta: int
    smem_buffers: Mapping[str, int]  # buffer name -> bytes of shared memory per CTA
    registers_per_thread: int  # estimate; above the GPU's limit means spills
    tensor_flops: float  # executed on tensor cores, masked tile parts included
    tensor_dtype: str  # which tensor-core rate: tf32, fp16, bf16, fp8
    cuda_ops: float  # non-tensor floating-point operations, exp included (an FMA counts two)
    exp_ops: float  # the part of cuda_ops on the special-function unit (exp2, log2)
    traffic: Mapping[str, Traffic]  # tensor name -> bytes
    inflight_bytes_per_cta: float  # bytes a CTA keeps in flight from memory (stages x tile)
    softmax_overlaps_mma: bool = False  # FlashAttention-3 ping-pong: vector work hides under matmuls
    ordered_atomic_rounds: int = 0  # fenced atomics each thread of a CTA issues one after another (at its end)
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        object.__setattr__(self, "smem_buffers", MappingProxyType(dict(self.smem_buffers)))
        object.__setattr__(self, "traffic", MappingProxyType(dict(self.traffic)))

    @property
    def smem_bytes_per_cta(self) -> int:
        return int(sum(self.smem_buffers.values()))

    @property
    def total(self) -> Traffic:
        out = Traffic()
        for t in self.traffic.values():
            out = out + t
        return out

    @property
    def l2_read_bytes_per_cta(self) -> float:
        return self.total.l2_read / self.grid_ctas
