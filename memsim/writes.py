"""How much of what a kernel writes reaches HBM while the kernel runs (the analytic model's rule).

Writes land in L2, a write-back cache: dirty lines reach HBM when they are evicted, or after the kernel
ends, and Nsight Compute's dram__bytes_write counts only the first (DESIGN.md: ncu flushes between
kernels). Two limits on what is still dirty at the end (`hbm_write_deferred`):
- lifetime: writes spread over the kernel, and a line written at fraction x of it is still dirty only if
  less than the GPU's `l2_dirty_lifetime_bytes` was brought into L2 after it (the kernel's HBM reads and
  writes, (1 - x) of them); so a fraction min(1, lifetime / (HBM reads + writes)) of the writes survives.
  A decode streaming gigabytes through L2 keeps almost none of its output there. Without a calibrated
  lifetime, the L2's capacity (plain LRU). A tensor read by several CTAs (its L2 -> SM reads k times its HBM
  reads) is kept in both of the L2's partitions and counts `l2_shared_tile_age_weight` times as much once k
  readers are on both sides (memsim.engine.l2cache says how: 1 + (weight - 1)(1 - 2^(1 - k)) per byte).
  On the H100 both are measured by microbenchmark (validation/l2_dirty_lifetime.py,
  validation/fit_l2_dirty_lifetime.py): 44.2 MB of data read once, and a weight of 1.85.
- the GPU's `l2_dirty_resident_bytes` caps it (measured by a store-only kernel: validation/l2_write_back.py).
Without either ceiling every written byte counts as written during the kernel. The discrete-event engine
follows the tiles themselves through its L2 under the same two limits (memsim.engine.l2cache).
"""

import dataclasses
import functools
from collections.abc import Mapping

from memsim.hardware.spec import Ceilings
from memsim.kernel import KernelCost, Traffic


def resident_writes(traffic: Mapping[str, Traffic], resident_bytes: float | None,
                    lifetime_bytes: float | None = None, shared_age_weight: float = 1.0) -> dict[str, Traffic]:
    """`traffic` with the writes still dirty in L2 at the end (module docstring) moved to hbm_write_deferred,
    shared among the written tensors in proportion to what each writes (they are written side by side).
    `resident_bytes`: the cap on dirty data; `lifetime_bytes`: the traffic a dirty line outlives (None: no limit);
    `shared_age_weight`: how much more a byte read by CTAs on both L2 partitions ages dirty lines."""
    total = sum(t.hbm_write for t in traffic.values())
    if (resident_bytes is None and lifetime_bytes is None) or total <= 0:
        return dict(traffic)
    brought_in = total + sum(t.hbm_read * age_per_byte(t, shared_age_weight) for t in traffic.values())
    surviving = total if lifetime_bytes is None else total * min(1.0, lifetime_bytes / brought_in)
    kept = (surviving if resident_bytes is None else min(surviving, resident_bytes)) / total
    return {name: dataclasses.replace(t, hbm_write=t.hbm_write * (1 - kept),
                                      hbm_write_deferred=t.hbm_write_deferred + t.hbm_write * kept)
            for name, t in traffic.items()}


@functools.lru_cache(maxsize=4096)  # the engine asks for small whole numbers of readers, tile after tile
def on_both_partitions(readers: float) -> float:
    """The chance that `readers` CTAs placed at random are not all next to one of the L2's two partitions,
    1 - 2^(1 - readers): 0 for one reader, 1/2 for two, near 1 from about 8 (memsim.engine.l2cache)."""
    return max(0.0, 1.0 - 2.0 ** (1.0 - readers)) if readers > 0 else 0.0


def age_per_byte(t: Traffic, shared_age_weight: float) -> float:
    """How much each HBM byte read of this tensor ages dirty lines: 1 for a tensor each CTA reads alone, up to
    `shared_age_weight` for one read by many (k = L2 -> SM reads over HBM reads, its readers per byte)."""
    if t.hbm_read <= 0 or shared_age_weight == 1.0:
        return 1.0
    return 1.0 + (shared_age_weight - 1.0) * on_both_partitions(t.l2_read / t.hbm_read)


def with_resident_writes(cost: KernelCost, ceilings: Ceilings, l2_bytes: float) -> KernelCost:
    """The kernel's writes under the GPU's calibrated dirty-data ceilings (none: every write reaches HBM in it);
    with a cap but no lifetime, dirty lines live as long as plain LRU over `l2_bytes` keeps them."""
    if ceilings.l2_dirty_resident_bytes is None and ceilings.l2_dirty_lifetime_bytes is None:
        return cost
    lifetime = min(ceilings.l2_dirty_lifetime_bytes or l2_bytes, l2_bytes)  # LRU evicts at capacity regardless
    return dataclasses.replace(cost, traffic=resident_writes(cost.traffic, ceilings.l2_dirty_resident_bytes,
                                                             lifetime, ceilings.l2_shared_tile_age_weight))
