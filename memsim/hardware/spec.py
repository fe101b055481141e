"""What a GPU is, as numbers with units: frozen, built with keywords, derived values are properties.

Datasheet peaks live in `GPUSpec`; measured achievable ceilings live apart in
`Calibration`, and `GPUSpec.ceilings()` says which of the two a prediction uses.
This module imports nothing else of memsim but its error type.
"""

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Mapping

from memsim.errors import MemsimError

# Which instruction a kernel's matrix products compile to (TileConfig.mma): the GPU's fastest (wgmma on Hopper),
# the warp-level mma.sync of sm_80 code, or FMA on the CUDA cores (no tensor cores: an fp32 GEMM with TF32 off).
MMA_PATHS = ("fastest", "mma_sync", "fma")


@dataclass(frozen=True, kw_only=True)
class LinkSpec:
    """One kind of GPU-to-GPU link, all of a GPU's lanes of it together."""

    name: str
    bandwidth_bytes_per_s: float  # per direction, summed over the GPU's links of this kind
    latency_s: float


@dataclass(frozen=True, kw_only=True)
class Calibration:
    """Ceilings measured on a real card (what a kernel can reach, not what the datasheet says)."""

    device: str
    date: str
    hbm_bandwidth_bytes_per_s: float | None = None
    l2_bandwidth_bytes_per_s: float | None = None
    hbm_latency_s: float | None = None
    l2_hit_latency_s: float | None = None
    tensor_flops_per_s: Mapping[str, float] = field(default_factory=dict)
    cuda_core_fp32_flops_per_s: float | None = None
    sfu_ops_per_s: float | None = None
    launch_overhead_s: float | None = None
    # The most written data L2 keeps dirty (a store-only kernel's written bytes that ncu never sees reach HBM:
    # validation/l2_write_back.py); the data read into L2 after which a dirty line has reached HBM, read once
    # per tile; and how much more a tile read by CTAs on both of the L2's partitions ages dirty lines, per byte
    # (validation/l2_dirty_lifetime.py, fitted by validation/fit_l2_dirty_lifetime.py). memsim.writes and
    # memsim.engine.l2cache use them.
    l2_dirty_resident_bytes: float | None = None
    l2_dirty_lifetime_bytes: float | None = None
    l2_shared_tile_age_weight: float | None = None
    # The L2's ways as its misses show them: a line touched again after D bytes of other lines survives with
    # probability P(Poisson(ways D / l2_bytes) < ways) (memsim.engine.l2cache, "Sets"), fitted to what a causal
    # walk of key blocks last to first re-reads (validation/key_order_probe.py). None: fully associative.
    l2_ways: float | None = None
    # What one dependent compute step (a matmul, a softmax) adds to a CTA's chain beyond its work: issue,
    # pipeline and reduction latency that the CTA's own warps cannot hide (memsim.engine.sharing). Fitted on
    # the calibration subset of validation/results (validation/fit_step_latency.py).
    dependent_step_latency_s: float | None = None
    # Cycles between two instructions of one warp that has its scheduler to itself: the latency of a typical
    # attention loop's dependent instructions (memsim.engine.cta.compute), fitted on the calibration subset
    # (validation/fit_step_latency.py --cpi); used where a launch's instruction count is known
    # (memsim.resources.CtaResources.loop_instructions).
    warp_cycles_per_instruction: float | None = None
    # One ordered (acq_rel) atomic of a thread behind its GPU-scope fence, round trip to L2 and back, with many
    # CTAs doing the same (validation/atomic_probe.py): what Triton's tl.atomic_add costs by default.
    ordered_atomic_latency_s: float | None = None
    sources: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Ceilings:
    """The rates a roofline divides by, with a word on where they came from."""

    origin: str  # "datasheet peak" or "calibrated on <device>, <date>"
    hbm_bandwidth_bytes_per_s: float
    l2_bandwidth_bytes_per_s: float
    hbm_latency_s: float
    l2_hit_latency_s: float  # 0 where nothing was measured: hits then cost only bandwidth
    tensor_flops_per_s: Mapping[str, float]
    cuda_core_fp32_flops_per_s: float
    sfu_ops_per_s: float
    launch_overhead_s: float
    l2_dirty_resident_bytes: float | None = None  # None (and no lifetime): every written byte reaches HBM in the kernel
    l2_dirty_lifetime_bytes: float | None = None  # None: a dirty line lives as long as LRU keeps it
    l2_shared_tile_age_weight: float = 1.0  # 1: a tile read by many CTAs ages dirty lines as one read once
    l2_ways: int | None = None  # None: a fully associative L2 (least recently used out first, nothing else lost)
    dependent_step_latency_s: float = 0.0  # 0 where nothing was fitted: a chain of steps costs only their work
    warp_cycles_per_instruction: float = 1.0  # where nothing was measured: one warp may issue every clock
    ordered_atomic_latency_s: float = 0.0  # 0 where nothing was measured: ordered atomics cost only bandwidth
    mma: str = "fastest"  # the matrix instruction tensor_flops_per_s is the rate of (MMA_PATHS)
    mma_pipe: str = "tensor"  # the SM pipe matrix work runs on: "cuda" for FMA on the CUDA cores


@dataclass(frozen=True, kw_only=True)
class GPUSpec:
    name: str
    vendor: str
    architecture: str
    # compute units
    sm_count: int
    clock_hz: float  # boost clock the datasheet peaks are quoted at
    warp_size: int
    max_warps_per_sm: int
    max_ctas_per_sm: int
    registers_per_sm: int  # 32-bit registers
    max_registers_per_thread: int
    # on-chip memory
    smem_per_sm_bytes: int
    smem_per_block_optin_bytes: int
    smem_reserved_per_block_bytes: int  # taken by the system from the SM's pool for each resident CTA
    l2_bytes: int
    l2_bandwidth_bytes_per_s: float  # L2 <-> SMs, all slices together
    # device memory
    hbm_bytes: int
    hbm_bandwidth_bytes_per_s: float
    hbm_latency_s: float
    # arithmetic
    tensor_flops_per_s: Mapping[str, float]  # dense, by input dtype (tf32, fp16, bf16, fp8, int8)
    # The warp-level mma.sync's peak by dtype, where the GPU has a faster matrix instruction (Hopper's wgmma) and
    # it was measured; None where it was not (on GPUs before Hopper mma.sync is the fastest path).
    mma_sync_flops_per_s: Mapping[str, float] | None = None
    cuda_core_fp32_flops_per_s: float  # an FMA counts two
    sfu_ops_per_s: float  # special-function unit: exp2, log2, rcp per second, whole GPU
    launch_overhead_s: float
    # interconnect
    links: Mapping[str, LinkSpec] = field(default_factory=dict)
    calibration: Calibration | None = None
    sources: Mapping[str, str] = field(default_factory=dict)  # field name -> citation

    @property
    def threads_per_sm(self) -> int:
        return self.max_warps_per_sm * self.warp_size

    @property
    def cuda_core_fp32_ops_per_s(self) -> float:
        """Issue rate of simple fp32 instructions (max, add, mul): one per lane per clock, half the FMA FLOP rate."""
        return self.cuda_core_fp32_flops_per_s / 2

    def ceilings(self, calibrated: bool = True, mma: str = "fastest") -> Ceilings:
        """Datasheet peaks, with measured values put in where a calibration has them and `calibrated` is set,
        for matrix products on the `mma` path (MMA_PATHS)."""
        return _for_mma(self, self._ceilings(calibrated), mma)

    def _ceilings(self, calibrated: bool) -> Ceilings:
        cal = self.calibration if calibrated else None
        if cal is None:
            return Ceilings(
                origin="datasheet peak",
                hbm_bandwidth_bytes_per_s=self.hbm_bandwidth_bytes_per_s,
                l2_bandwidth_bytes_per_s=self.l2_bandwidth_bytes_per_s,
                hbm_latency_s=self.hbm_latency_s,
                l2_hit_latency_s=0.0,
                tensor_flops_per_s=self.tensor_flops_per_s,
                cuda_core_fp32_flops_per_s=self.cuda_core_fp32_flops_per_s,
                sfu_ops_per_s=self.sfu_ops_per_s,
                launch_overhead_s=self.launch_overhead_s,
            )
        tensor = dict(self.tensor_flops_per_s)
        tensor.update(cal.tensor_flops_per_s)

        def measured(name: str) -> float:
            value = getattr(cal, name)
            return getattr(self, name) if value is None else value

        return Ceilings(
            origin=f"calibrated on {cal.device}, {cal.date}",
            hbm_bandwidth_bytes_per_s=measured("hbm_bandwidth_bytes_per_s"),
            l2_bandwidth_bytes_per_s=measured("l2_bandwidth_bytes_per_s"),
            hbm_latency_s=measured("hbm_latency_s"),
            l2_hit_latency_s=cal.l2_hit_latency_s or 0.0,
            tensor_flops_per_s=MappingProxyType(tensor),
            cuda_core_fp32_flops_per_s=measured("cuda_core_fp32_flops_per_s"),
            sfu_ops_per_s=measured("sfu_ops_per_s"),
            launch_overhead_s=measured("launch_overhead_s"),
            l2_dirty_resident_bytes=cal.l2_dirty_resident_bytes,
            l2_dirty_lifetime_bytes=cal.l2_dirty_lifetime_bytes,
            l2_shared_tile_age_weight=cal.l2_shared_tile_age_weight or 1.0,
            l2_ways=None if cal.l2_ways is None else int(cal.l2_ways),
            dependent_step_latency_s=cal.dependent_step_latency_s or 0.0,
            warp_cycles_per_instruction=cal.warp_cycles_per_instruction or 1.0,
            ordered_atomic_latency_s=cal.ordered_atomic_latency_s or 0.0,
        )


def _for_mma(gpu: GPUSpec, ceilings: Ceilings, mma: str) -> Ceilings:
    """The ceilings of matrix products on another instruction than the fastest.

    mma_sync: each dtype's tensor rate scaled by mma.sync's peak over the fastest one's (a calibrated rate keeps
    its measured efficiency); fma: every matrix FLOP at the CUDA cores' FMA rate, on the CUDA-core pipe."""
    if mma not in MMA_PATHS:
        raise MemsimError(f"mma = {mma!r} is not known; use one of {', '.join(MMA_PATHS)}")
    if mma == "fastest":
        return ceilings
    if mma == "fma":
        rates = dict.fromkeys(ceilings.tensor_flops_per_s, ceilings.cuda_core_fp32_flops_per_s)
        return replace(ceilings, tensor_flops_per_s=MappingProxyType(rates), mma=mma, mma_pipe="cuda",
                       origin=f"{ceilings.origin}; matrix products as FMA on the CUDA cores")
    if gpu.mma_sync_flops_per_s is None:
        raise MemsimError(f"{gpu.name} has no measured mma.sync rate (mma_sync_flops_per_s in its preset); on a GPU "
                          f"before Hopper mma.sync is the fastest path: use mma fastest")
    rates = {dtype: rate * gpu.mma_sync_flops_per_s[dtype] / gpu.tensor_flops_per_s[dtype]
             for dtype, rate in ceilings.tensor_flops_per_s.items()
             if dtype in gpu.mma_sync_flops_per_s and gpu.tensor_flops_per_s.get(dtype)}
    return replace(ceilings, tensor_flops_per_s=MappingProxyType(rates), mma=mma,
                   origin=f"{ceilings.origin}; matrix products on mma.sync")


def matrix_rate(gpu: GPUSpec, ceilings: Ceilings, dtype: str) -> float:
    """FLOP/s of matrix products on `dtype` inputs at these ceilings (on their mma path)."""
    rate = ceilings.tensor_flops_per_s.get(dtype)
    if not rate:
        have = ", ".join(sorted(k for k, v in ceilings.tensor_flops_per_s.items() if v))
        path = "" if ceilings.mma == "fastest" else f" on the {ceilings.mma} path"
        raise MemsimError(f"{gpu.name} has no {dtype} tensor-core rate{path}; it has {have}")
    return rate
