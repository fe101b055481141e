"""A prediction: frozen, printable as a table (memsim.cli.render) or as JSON (`as_dict`).

Units: bytes, FLOPs (an FMA counts two), seconds. `l2_read`/`l2_write` are bytes
between L2 and the SMs; `hbm_read`/`hbm_write` between HBM and L2 during the kernel;
`hbm_write_deferred` is what is still dirty in L2 when the kernel ends (written back later,
outside the kernel, so Nsight Compute does not count it).

`utilisation` is, per unit, the fraction of the kernel's latency the unit is busy: simulated by
the discrete-event engine; resource time over latency in the analytic model. `achieved` is
work over latency: tensor-core FLOP/s, and bytes per second between HBM and L2 and between
L2 and the SMs (reads plus writes).
"""

from dataclasses import dataclass, field

from memsim.roofline import KernelTime


@dataclass(frozen=True)
class KernelPrediction:
    name: str
    grid_ctas: int
    latency_s: float
    bound: str
    critical: str
    ctas_per_sm: int
    occupancy_limiter: str
    waves: int
    smem_bytes_per_cta: int
    smem_buffers: dict
    registers_per_thread: int
    tensor_flops: float
    cuda_ops: float
    exp_ops: float
    bytes: dict  # BYTE_KEYS: hbm_write is what reaches HBM during the kernel, hbm_write_deferred what stays dirty in L2
    bytes_by_tensor: dict  # tensor -> the same four keys
    resource_s: dict
    utilisation: dict = field(default_factory=dict)  # unit -> busy fraction of latency_s (0..1)
    achieved: dict = field(default_factory=dict)  # ACHIEVED_KEYS -> per second over latency_s
    slots: int = 0  # CTAs resident on the whole GPU at once (ctas_per_sm x SMs)
    warps_per_cta: int = 0
    loop_instructions: float | None = None  # each warp's per loop iteration, where given (DES only)
    ordered_atomic_wait_s: float = 0.0  # what each CTA waits out at its end for its threads' ordered atomics

    @staticmethod
    def from_time(t: KernelTime) -> "KernelPrediction":
        c = t.cost
        total = c.total
        return KernelPrediction(
            name=c.name, grid_ctas=c.grid_ctas, latency_s=t.latency_s, bound=t.bound, critical=t.critical,
            ctas_per_sm=t.occupancy.ctas_per_sm, occupancy_limiter=t.occupancy.limiter, waves=t.occupancy.waves,
            smem_bytes_per_cta=c.smem_bytes_per_cta, smem_buffers=dict(c.smem_buffers),
            registers_per_thread=c.registers_per_thread, tensor_flops=c.tensor_flops, cuda_ops=c.cuda_ops,
            exp_ops=c.exp_ops, bytes=_four(c.total),
            bytes_by_tensor={k: _four(v) for k, v in c.traffic.items()}, resource_s=dict(t.resource_s),
            utilisation={u: t.resource_s[u] / t.latency_s for u in ANALYTIC_UNITS},
            achieved=achieved(c.tensor_flops, total.hbm_read + total.hbm_write, total.l2_read + total.l2_write,
                              t.latency_s),
            slots=t.occupancy.slots, warps_per_cta=c.warps_per_cta,
            ordered_atomic_wait_s=t.resource_s.get("ordered_atomics", 0.0) / max(t.occupancy.waves, 1),
        )


ANALYTIC_UNITS = ("tensor", "cuda", "sfu", "hbm", "l2")  # the roofline's resources that are hardware units
ACHIEVED_KEYS = ("tensor_flops_per_s", "hbm_bytes_per_s", "l2_bytes_per_s")


def achieved(tensor_flops: float, hbm_bytes: float, l2_bytes: float, latency_s: float) -> dict:
    """Rates over the whole latency; HBM bytes are those moved during the kernel (deferred write-backs excluded)."""
    span = latency_s or 1.0
    return dict(zip(ACHIEVED_KEYS, (tensor_flops / span, hbm_bytes / span, l2_bytes / span)))


BYTE_KEYS = ("hbm_read", "hbm_write", "l2_read", "l2_write", "hbm_write_deferred")


def _four(t) -> dict:
    """The analytic model's bytes per level; written bytes left dirty in L2 at the end are deferred (memsim.writes)."""
    return {"hbm_read": t.hbm_read, "hbm_write": t.hbm_write, "l2_read": t.l2_read, "l2_write": t.l2_write,
            "hbm_write_deferred": t.hbm_write_deferred}


@dataclass(frozen=True)
class Prediction:
    gpu: str
    algo: str
    pass_: str
    engine: str
    ceilings: str  # where the rates came from
    shape: dict
    tiles: dict
    kernels: tuple[KernelPrediction, ...]
    sram_limit_bytes: int
    assumptions: tuple[str, ...]

    @property
    def latency_s(self) -> float:
        return sum(k.latency_s for k in self.kernels)

    @property
    def main_kernel(self) -> KernelPrediction:
        """The kernel that takes longest: its bound, occupancy and SRAM speak for the call."""
        return max(self.kernels, key=lambda k: k.latency_s)

    @property
    def bound(self) -> str:
        return self.main_kernel.bound

    @property
    def flops(self) -> dict:
        return {"tensor": sum(k.tensor_flops for k in self.kernels),
                "cuda": sum(k.cuda_ops for k in self.kernels),
                "exp": sum(k.exp_ops for k in self.kernels)}

    @property
    def bytes(self) -> dict:
        return {key: sum(k.bytes[key] for k in self.kernels) for key in BYTE_KEYS}

    @property
    def bytes_by_tensor(self) -> dict:
        out: dict[str, dict] = {}
        for k in self.kernels:
            for tensor, b in k.bytes_by_tensor.items():
                acc = out.setdefault(tensor, dict.fromkeys(b, 0.0))
                for key, v in b.items():
                    acc[key] += v
        return out

    @property
    def utilisation(self) -> dict:
        """Per unit, the busy fraction over the whole call: each kernel's weighted by its latency."""
        span = self.latency_s or 1.0
        units = dict.fromkeys(u for k in self.kernels for u in k.utilisation)
        return {u: sum(k.utilisation.get(u, 0.0) * k.latency_s for k in self.kernels) / span for u in units}

    @property
    def achieved(self) -> dict:
        b = self.bytes
        return achieved(self.flops["tensor"], b["hbm_read"] + b["hbm_write"], b["l2_read"] + b["l2_write"],
                        self.latency_s)

    def as_dict(self) -> dict:
        main = self.main_kernel
        smem = max(k.smem_bytes_per_cta for k in self.kernels)
        return {
            "gpu": self.gpu, "algo": self.algo, "pass": self.pass_, "engine": self.engine,
            "ceilings": self.ceilings, "shape": self.shape, "tiles": self.tiles,
            "flops": self.flops, "bytes": self.bytes, "bytes_by_tensor": self.bytes_by_tensor,
            "sram": {"bytes_per_cta": smem, "limit_bytes": self.sram_limit_bytes, "fits": smem <= self.sram_limit_bytes},
            "occupancy": {"ctas_per_sm": main.ctas_per_sm, "waves": main.waves, "limiter": main.occupancy_limiter},
            "latency_s": self.latency_s, "bound": self.bound, "critical_resource": main.critical,
            "utilisation": self.utilisation, "achieved": self.achieved,
            "kernels": [k.__dict__ for k in self.kernels], "assumptions": list(self.assumptions),
        }
