"""Latency of a kernel from its costs: the slowest of the resources it needs, plus fixed costs.

Each resource gives a time (work over rate). Loads are pipelined, so memory and
compute overlap; a kernel takes as long as its busiest resource:

    compute  tensor-core FLOPs / rate, plus softmax work on CUDA cores and the SFU
             (added, since one warp does its matmul and its softmax in turn, unless the
             kernel ping-pongs them across warpgroups as FlashAttention-3 does), scaled
             by the wave tail: SMs that get fewer CTAs than the busiest sit idle
    hbm      bytes between L2 and HBM / HBM bandwidth
    l2       bytes between SMs and L2 / L2 bandwidth
    latency  Little's law: a CTA with B bytes in flight and latency L streams at most B/L
             bytes per second, so a CTA that loads X bytes needs X/B round trips; waves
             of CTAs run one after the other

plus one launch overhead. The bound is the class of the largest term.
"""

from dataclasses import dataclass

from memsim.hardware.spec import Ceilings, GPUSpec, matrix_rate
from memsim.kernel import KernelCost
from memsim.occupancy import Occupancy, occupancy

BOUND_OF = {"tensor": "compute", "cuda": "compute", "sfu": "compute", "hbm": "memory", "l2": "memory",
            "memory_latency": "latency", "launch": "latency"}


@dataclass(frozen=True)
class KernelTime:
    cost: KernelCost
    occupancy: Occupancy
    resource_s: dict[str, float]  # resource -> seconds it is busy
    latency_s: float
    critical: str  # the resource whose time sets the latency

    @property
    def bound(self) -> str:
        return BOUND_OF[self.critical]


def wave_tail(grid_ctas: int, sm_count: int) -> float:
    """How much longer than a perfectly balanced run the compute takes (>= 1).

    CTAs of equal work go breadth first to the SMs as slots free up, so each SM ends up
    running ceil(grid / SMs) or floor(grid / SMs) of them, whatever their concurrency;
    the busiest SM sets the time. 112 CTAs on 132 SMs: each gets a whole SM, 132/112 = 1.18.
    """
    return -(-grid_ctas // sm_count) * sm_count / grid_ctas


def kernel_time(gpu: GPUSpec, ceilings: Ceilings, cost: KernelCost) -> KernelTime:
    occ = occupancy(gpu, cost.smem_bytes_per_cta, cost.warps_per_cta, cost.registers_per_thread, cost.grid_ctas,
                    cost.name)
    tail = wave_tail(cost.grid_ctas, gpu.sm_count)
    tensor_s = cost.tensor_flops / matrix_rate(gpu, ceilings, cost.tensor_dtype) if cost.tensor_flops else 0.0
    cuda_s = (cost.cuda_ops - cost.exp_ops) / (ceilings.cuda_core_fp32_flops_per_s / 2)
    if ceilings.mma_pipe == "cuda":  # the matrix products are FMA on the CUDA cores too
        tensor_s, cuda_s = 0.0, cuda_s + tensor_s
    sfu_s = cost.exp_ops / ceilings.sfu_ops_per_s
    vector_s = cuda_s + sfu_s
    compute_s = max(tensor_s, vector_s) if cost.softmax_overlaps_mma else tensor_s + vector_s
    total = cost.total
    round_trips = cost.l2_read_bytes_per_cta / max(cost.inflight_bytes_per_cta, 1.0)
    resource_s = {
        "tensor": tensor_s * tail,
        "cuda": cuda_s * tail,
        "sfu": sfu_s * tail,
        "hbm": (total.hbm_read + total.hbm_write) / ceilings.hbm_bandwidth_bytes_per_s,
        "l2": (total.l2_read + total.l2_write) / ceilings.l2_bandwidth_bytes_per_s,
        "memory_latency": occ.waves * round_trips * ceilings.hbm_latency_s,
        # Each CTA ends waiting out its threads' ordered atomics one after another, holding its slot: a tail per
        # wave that the closed form adds rather than overlaps (the DES overlaps it with the CTAs still loading).
        "ordered_atomics": occ.waves * cost.ordered_atomic_rounds * ceilings.ordered_atomic_latency_s,
        "launch": ceilings.launch_overhead_s,
    }
    busy = {"compute": compute_s * tail, **{k: resource_s[k] for k in ("hbm", "l2", "memory_latency")}}
    slowest = max(busy, key=busy.get)
    critical = slowest if slowest != "compute" else max(("tensor", "cuda", "sfu"), key=resource_s.get)
    latency_s = busy[slowest] + resource_s["ordered_atomics"] + ceilings.launch_overhead_s
    if ceilings.launch_overhead_s > busy[slowest]:
        critical = "launch"
    return KernelTime(cost, occ, resource_s, latency_s, critical)
