"""What one CTA of a launch holds, as the launch reports it: registers per thread and shared memory.

memsim estimates both from the tiles (memsim.algorithms.base.registers_estimate and each algorithm's
shared-memory buffers). A kernel someone else compiled may hold more or less: Nsight Compute reports
`launch__registers_per_thread` and `launch__shared_mem_per_block_{dynamic,static}`, and with them
given here the occupancy (CTAs per SM, so waves and overlap) is the measured launch's.
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

    def __post_init__(self):
        for name in ("registers_per_thread", "smem_bytes"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise MemsimError(f"{name} = {value!r} must be a positive whole number")
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
    return dataclasses.replace(launch, **changes)
