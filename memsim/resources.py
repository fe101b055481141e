"""What one CTA of a launch holds and runs, as the launch reports it: registers per thread, shared memory, and
the instructions each warp issues per loop iteration.

memsim estimates the first two from the tiles (memsim.algorithms.base.registers_estimate and each algorithm's
shared-memory buffers). A kernel someone else compiled may hold more or less: Nsight Compute reports
`launch__registers_per_thread` and `launch__shared_mem_per_block_{dynamic,static}`, and with them
given here the occupancy (CTAs per SM, so waves and overlap) is the measured launch's.

The instruction count has no estimate: where it is given (SASS of the loop, or ncu's `smsp__inst_executed.sum`
over the launch's warps x loop iterations), the discrete-event engine charges each loop iteration that many
instructions per warp on its SM's warp schedulers, and a warp alone issues one every
`warp_cycles_per_instruction` clocks (memsim.engine.cta.compute).
"""

import dataclasses
from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence

from memsim.errors import MemsimError

FIRST_LAUNCH = None  # a resources key that means the pass's first launch, whatever its name


@dataclass(frozen=True)
class CtaResources:
    registers_per_thread: int | None = None
    smem_bytes: int | None = None  # dynamic + static shared memory per CTA
    loop_instructions: float | None = None  # SASS instructions each warp issues per loop iteration

    def __post_init__(self):
        for name in ("registers_per_thread", "smem_bytes"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise MemsimError(f"{name} = {value!r} must be a positive whole number")
        value = self.loop_instructions
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0
                                  or value == float("inf")):
            raise MemsimError(f"loop_instructions = {value!r} must be a positive number of instructions per warp "
                              f"per loop iteration")
        if self.registers_per_thread is not None and self.registers_per_thread > 255:
            raise MemsimError(f"registers_per_thread = {self.registers_per_thread}: a thread holds at most 255")


def with_resources(launches: Sequence, by_name: Mapping[Hashable, CtaResources] | None) -> list:
    """The launches (memsim.kernel.KernelCost or memsim.schedules.steps.Launch) with the given resources in
    place of memsim's estimates; a name that is not among them is refused, naming those that are."""
    out = list(launches)
    if not by_name:
        return out
    names = [k.name for k in out]
    for name, resources in by_name.items():
        if name is FIRST_LAUNCH and out:
            out[0] = _replaced(out[0], resources)
        elif name in names:
            i = names.index(name)
            out[i] = _replaced(out[i], resources)
        else:
            raise MemsimError(f"no launch named {name!r} to give resources to; this pass has {', '.join(names)}")
    return out


def _replaced(launch, resources: CtaResources):
    changes = {}
    if resources.registers_per_thread is not None:
        changes["registers_per_thread"] = resources.registers_per_thread
    if resources.smem_bytes is not None:
        changes["smem_buffers"] = {"as launched": resources.smem_bytes}
    if resources.loop_instructions is not None and hasattr(launch, "loop_instructions"):
        changes["loop_instructions"] = float(resources.loop_instructions)
    return dataclasses.replace(launch, **changes)


def gives_instructions(by_name: Mapping[Hashable, CtaResources] | None) -> bool:
    """Whether any launch is given its instruction count (which only the discrete-event engine uses)."""
    return any(r.loop_instructions is not None for r in (by_name or {}).values())
