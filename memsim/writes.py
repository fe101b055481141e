"""How much of what a kernel writes reaches HBM while the kernel runs (the analytic model's rule).

Writes land in L2, a write-back cache: dirty lines reach HBM when they are evicted, or after the kernel
ends, and Nsight Compute's dram__bytes_write counts only the first (DESIGN.md: ncu flushes between
kernels). Two limits on what is still dirty at the end (`hbm_write_deferred`):
- LRU: writes spread over the kernel, and a line written at fraction x of it survives only if less than
  the L2's capacity was brought in after it (the kernel's HBM reads and writes, (1 - x) of them); so a
  fraction min(1, L2 bytes / (HBM reads + writes)) of the writes survives. A decode streaming gigabytes
  through L2 keeps almost none of its output there.
- the GPU's `l2_dirty_resident_bytes`, where its ceilings have one (calibrated: see its source), caps it.
Without that ceiling every written byte counts as written during the kernel. The discrete-event engine
follows the tiles themselves through its LRU, under the same cap (memsim.engine.l2cache).
"""

import dataclasses
from collections.abc import Mapping

from memsim.hardware.spec import Ceilings
from memsim.kernel import KernelCost, Traffic


def resident_writes(traffic: Mapping[str, Traffic], resident_bytes: float | None,
                    l2_bytes: float = float("inf")) -> dict[str, Traffic]:
    """`traffic` with the writes still dirty in L2 at the end (module docstring) moved to hbm_write_deferred,
    shared among the written tensors in proportion to what each writes (they are written side by side)."""
    total = sum(t.hbm_write for t in traffic.values())
    if not resident_bytes or total <= 0:
        return dict(traffic)
    brought_in = total + sum(t.hbm_read for t in traffic.values())
    surviving = total * min(1.0, l2_bytes / brought_in)
    kept = min(surviving, resident_bytes) / total
    return {name: dataclasses.replace(t, hbm_write=t.hbm_write * (1 - kept),
                                      hbm_write_deferred=t.hbm_write_deferred + t.hbm_write * kept)
            for name, t in traffic.items()}


def with_resident_writes(cost: KernelCost, ceilings: Ceilings, l2_bytes: float) -> KernelCost:
    return dataclasses.replace(cost, traffic=resident_writes(cost.traffic, ceilings.l2_dirty_resident_bytes,
                                                             l2_bytes))
