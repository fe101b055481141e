"""The GPU as SimPy sees it: shared units with rates, an L2 of finite size, and counters.

Every SM has its own pipes (tensor cores, CUDA cores, SFU, shared memory), shared by the CTAs
resident on it (memsim.engine.sharing); SMs holding identical residents are simulated as one group
(memsim.engine.sm_groups). Pipe work is measured in GPU-seconds (work / whole-GPU rate). HBM and L2
bandwidth are shared by every transfer in flight (memsim.engine.fluid).
"""

from collections import defaultdict
from dataclasses import dataclass, field

import simpy

from memsim.engine.fluid import FluidResource
from memsim.engine.l2cache import L2Cache
from memsim.engine.sm_groups import SmGroups
from memsim.hardware.spec import Ceilings, GPUSpec, matrix_rate

SMEM_BYTES_PER_CLK_PER_SM = 128  # 32 banks x 4 bytes per clock (CUDA C++ Programming Guide, Shared Memory)
# An SM's four processing blocks each have a warp scheduler that issues one warp instruction per clock (NVIDIA
# H100 Tensor Core GPU Architecture whitepaper, "H100 SM architecture"; the same since Volta).
WARP_SCHEDULERS_PER_SM = 4
PIPES = ("tensor", "cuda", "sfu", "smem", "issue")  # per SM, shared by its resident CTAs
MEMORY = ("hbm", "l2")  # shared by the whole GPU
UNITS = PIPES + MEMORY
BYTE_KEYS = ("hbm_read", "hbm_write", "l2_read", "l2_write", "hbm_write_deferred")
SCALAR_KEYS = ("tensor_flops", "cuda_ops", "exp_ops", "smem_bytes")  # Counters' work per unit


@dataclass
class Counters:
    """Bytes per tensor at each level, and work per unit."""

    l2_read: dict = field(default_factory=lambda: defaultdict(float))
    l2_write: dict = field(default_factory=lambda: defaultdict(float))
    hbm_read: dict = field(default_factory=lambda: defaultdict(float))
    hbm_write: dict = field(default_factory=lambda: defaultdict(float))
    hbm_write_deferred: dict = field(default_factory=lambda: defaultdict(float))  # dirty in L2 at kernel end
    tensor_flops: float = 0.0
    cuda_ops: float = 0.0  # exp included, as in the analytic model
    exp_ops: float = 0.0
    smem_bytes: float = 0.0

    def flush(self, dirty: list[tuple[str, float]]) -> None:
        """What is still dirty in L2 when the kernel ends reaches HBM later, outside the kernel
        (ncu's dram__bytes_write does not see it: measured, validation/results/h100)."""
        for tensor, nbytes in dirty:
            self.hbm_write_deferred[tensor] += nbytes

    def by_tensor(self) -> dict:
        names = set().union(*(getattr(self, key) for key in BYTE_KEYS))
        return {t: {key: getattr(self, key).get(t, 0.0) for key in BYTE_KEYS} for t in sorted(names)}

    def totals(self) -> dict:
        return {key: sum(getattr(self, key).values()) for key in BYTE_KEYS}


class Machine:
    def __init__(self, env: simpy.Environment, gpu: GPUSpec, ceilings: Ceilings, trace: bool = False):
        self.env, self.gpu, self.ceilings = env, gpu, ceilings
        self.sm_groups = SmGroups(env, PIPES, gpu.sm_count, trace=trace)
        self.units = {
            "hbm": FluidResource(env, "hbm", ceilings.hbm_bandwidth_bytes_per_s),
            "l2": FluidResource(env, "l2", ceilings.l2_bandwidth_bytes_per_s),
        }
        if trace:
            for unit in self.units.values():
                unit.busy_intervals = []
        self.smem_bytes_per_s = SMEM_BYTES_PER_CLK_PER_SM * gpu.clock_hz * gpu.sm_count
        self.l2 = L2Cache(gpu.l2_bytes, ceilings.l2_dirty_resident_bytes, ceilings.l2_dirty_lifetime_bytes,
                          ceilings.l2_shared_tile_age_weight, ceilings.l2_ways)
        self.counters = Counters()

    def busy_s(self) -> dict:
        """Seconds of full utilisation of each unit so far."""
        busy = {u: self.sm_groups.busy_until_now(u) for u in PIPES}
        busy.update({u: self.units[u].busy_until_now() for u in MEMORY})
        return busy

    def busy_intervals(self) -> dict:
        """unit -> [(start, end)] of each stretch it was in use (when tracing)."""
        intervals = self.sm_groups.busy_intervals()
        intervals.update({u: self.units[u].busy_intervals or [] for u in MEMORY})
        return intervals

    def tensor_seconds(self, flops: float, dtype: str) -> float:
        return flops / matrix_rate(self.gpu, self.ceilings, dtype)

    def cuda_seconds(self, ops: float) -> float:
        return ops / (self.ceilings.cuda_core_fp32_flops_per_s / 2)  # one simple op per lane per clock

    def sfu_seconds(self, ops: float) -> float:
        return ops / self.ceilings.sfu_ops_per_s

    def write_back(self, evicted: list[tuple[str, float]]) -> None:
        """Dirty tiles leaving L2 go to HBM in the background."""
        for tensor, nbytes in evicted:
            self.counters.hbm_write[tensor] += nbytes
            self.units["hbm"].use(nbytes)
