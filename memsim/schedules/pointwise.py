"""Closed-form streaming kernels (memsim.algorithms.pointwise: fills, casts, reductions of a tensor) as schedules,
for the algorithms that launch them beside their attention kernels."""

from memsim.kernel import KernelCost
from memsim.schedules.steps import CtaProgram, Launch, Load, Store, Vector


def pointwise(cost: KernelCost) -> Launch:
    """A closed-form kernel that streams each tensor once (memsim.algorithms.pointwise), as a schedule:
    every CTA reads and writes an equal share of each tensor, private to it."""
    grid = cost.grid_ctas
    reads = tuple(Load(t, None, 0, tr.l2_read / grid) for t, tr in cost.traffic.items() if tr.l2_read)
    writes = tuple(Store(t, None, 0, tr.l2_write / grid) for t, tr in cost.traffic.items() if tr.l2_write)
    work = Vector((cost.cuda_ops - cost.exp_ops) / grid, cost.exp_ops / grid)
    program = CtaProgram(prologue=reads + (work,), epilogue=writes)
    return Launch(
        name=cost.name, grid=grid, warps_per_cta=cost.warps_per_cta, smem_buffers=cost.smem_buffers,
        registers_per_thread=cost.registers_per_thread, num_stages=1, program=lambda pid: program,
    )
