"""How often data shared by several CTAs comes from HBM, under the analytic model's L2 assumption.

CTAs are dispatched in program-id order as slots free up (DESIGN.md), so CTAs with
neighbouring ids run at the same time. The analytic model assumes:

1. If everything the kernel shares fits in L2, each shared byte comes from HBM once.
2. Otherwise a group of CTAs sharing data (say, the q-blocks of one head, which all
   stream that head's K and V) fetches it from HBM once per wave the group spans:
   CTAs running together stream it in step and hit in L2, but by the next wave the
   lines were evicted by other groups.

Measured on an H100 (DESIGN.md): FlashAttention-2, B=1, H=16, N=4096, d=128 read
877 MB from L2 but 52 MB from HBM; rule 1 predicts exactly Q+K+V once.
"""

import numpy as np


def waves_spanned(groups: int, ctas_per_group: int, slots: int) -> np.ndarray:
    """For each group of consecutive program ids, the number of waves its CTAs fall in."""
    first = np.arange(groups, dtype=np.int64) * ctas_per_group
    last = first + ctas_per_group - 1
    return last // slots - first // slots + 1


def shared_hbm_reads(groups: int, ctas_per_group: int, slots: int, bytes_per_group: float,
                     l2_bytes: float) -> float:
    """HBM bytes read for data that each group of `ctas_per_group` consecutive CTAs shares."""
    if groups * bytes_per_group <= l2_bytes:
        return groups * bytes_per_group
    return float(waves_spanned(groups, ctas_per_group, slots).sum()) * bytes_per_group
