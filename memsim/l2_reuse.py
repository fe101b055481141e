"""How often data shared by several CTAs comes from HBM, under the analytic model's L2 assumption.

CTAs are dispatched in program-id order as slots free up (DESIGN.md), so CTAs with
neighbouring ids run at the same time. A group is a run of consecutive CTAs that read
the same data (say the q-blocks of one head, which all stream that head's K and V).
The analytic model assumes:

1. If the data of the groups in flight at once fits in L2, each group's data comes from
   HBM once: CTAs running together stream it in step and hit, and a group that spans
   several waves finds its data still there. Groups in flight: ceil(slots / group) + 1
   (a wave may straddle a group boundary).
2. Otherwise a group fetches its data from HBM once per wave it spans: by the next wave
   the lines were evicted by other groups.
3. Never more than the CTAs read from L2.

Measured on an H100 (DESIGN.md): FlashAttention-2, B=1, H=16, N=4096, d=128 read
877 MB from L2 but 52 MB from HBM; rule 1 predicts exactly Q+K+V once (50.3 MB).
The discrete-event engine replaces these rules with an LRU over tiles.
"""

from math import ceil, inf

import numpy as np


def waves_spanned(groups: int, ctas_per_group: int, slots: int) -> np.ndarray:
    """For each group of consecutive program ids, the number of waves its CTAs fall in."""
    first = np.arange(groups, dtype=np.int64) * ctas_per_group
    last = first + ctas_per_group - 1
    return last // slots - first // slots + 1


def groups_in_flight(groups: int, ctas_per_group: int, slots: int) -> int:
    return min(groups, ceil(slots / ctas_per_group) + 1)


def shared_hbm_reads(groups: int, ctas_per_group: int, slots: int, bytes_per_group: float, l2_bytes: float,
                     l2_read_bytes: float = inf, working_set_per_group: float | None = None) -> float:
    """HBM bytes for `bytes_per_group` that each of `groups` runs of `ctas_per_group` consecutive CTAs shares.

    `working_set_per_group`: all a group keeps in L2 at once, this tensor and the others it
    streams beside it (default: this tensor alone); `l2_read_bytes`: what the CTAs read from L2, the cap.
    """
    working_set = bytes_per_group if working_set_per_group is None else working_set_per_group
    if groups_in_flight(groups, ctas_per_group, slots) * working_set <= l2_bytes:
        return min(l2_read_bytes, groups * bytes_per_group)
    per_wave = float(waves_spanned(groups, ctas_per_group, slots).sum()) * bytes_per_group
    return min(l2_read_bytes, per_wave)
