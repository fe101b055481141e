"""Turn simulated launches into the same KernelPrediction records the analytic model gives."""

from memsim.engine.simulate import LaunchResult
from memsim.result import KernelPrediction, achieved

SATURATED = 0.6  # a unit busier than this sets the pace; below it for all, latency does

_CLASS = {"tensor": "compute", "cuda": "compute", "sfu": "compute", "smem": "compute", "issue": "compute",
          "hbm": "memory", "l2": "memory"}


def critical_unit(utilisation: dict) -> tuple[str, str]:
    """(bound, unit): the busiest unit, or latency when no unit is near full."""
    unit = max(utilisation, key=utilisation.get)
    if utilisation[unit] < SATURATED:
        return "latency", "memory_latency"
    return _CLASS[unit], unit


def kernel_prediction(r: LaunchResult) -> KernelPrediction:
    launch, c = r.launch, r.counters
    utilisation = r.utilisation()
    bound, critical = critical_unit(utilisation)
    totals = c.totals()
    return KernelPrediction(
        name=launch.name, grid_ctas=launch.grid, latency_s=r.end_s - r.start_s, bound=bound, critical=critical,
        ctas_per_sm=r.occupancy.ctas_per_sm, occupancy_limiter=r.occupancy.limiter, waves=r.occupancy.waves,
        smem_bytes_per_cta=launch.smem_bytes_per_cta, smem_buffers=dict(launch.smem_buffers),
        registers_per_thread=launch.registers_per_thread, tensor_flops=c.tensor_flops, cuda_ops=c.cuda_ops,
        exp_ops=c.exp_ops, bytes=totals, bytes_by_tensor=c.by_tensor(),
        resource_s=dict(r.busy_s), utilisation=utilisation,
        achieved=achieved(c.tensor_flops, totals["hbm_read"] + totals["hbm_write"],
                          totals["l2_read"] + totals["l2_write"], r.latency_s),
        slots=r.occupancy.slots, warps_per_cta=launch.warps_per_cta, loop_instructions=launch.loop_instructions,
        ordered_atomic_wait_s=r.ordered_atomic_wait_s,
    )
