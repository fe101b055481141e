"""The L2's unit of transfer: a 32-byte sector.

A sector is the smallest unit the L2 takes in from the SMs and writes back to HBM (CUDA C++ Best Practices
Guide, "Coalesced Access to Global Memory"), and Nsight Compute's lts__t_sectors_* counters count them. A store
of a few bytes still costs its whole sector: a decode CTA's one 4-byte LSE is a 32-byte write
(validation/ACCURACY.md, SM -> L2 writes).
"""

from math import gcd

SECTOR_BYTES = 32


def sector_bytes(first: int, count: int, stride: int, element_bytes: int) -> int:
    """Bytes of the sectors that `count` elements of `element_bytes`, `stride` elements apart from element
    `first`, fall in: what storing them costs L2 and HBM."""
    if count <= 0:
        return 0
    if stride == 1:  # one contiguous run
        low, high = first * element_bytes, (first + count) * element_bytes - 1
        return (high // SECTOR_BYTES - low // SECTOR_BYTES + 1) * SECTOR_BYTES
    if stride * element_bytes >= SECTOR_BYTES and SECTOR_BYTES % element_bytes == 0:
        return count * SECTOR_BYTES  # a sector or more apart, and none straddles two: one sector each
    sectors = set()
    for k in range(count):
        low = (first + k * stride) * element_bytes
        sectors.update(range(low // SECTOR_BYTES, (low + element_bytes - 1) // SECTOR_BYTES + 1))
    return len(sectors) * SECTOR_BYTES


def sector_period(element_bytes: int) -> int:
    """How many elements a start can move by and fall on the same place in a sector: sector_bytes is the same
    for `first` and `first` + k x this."""
    return SECTOR_BYTES // gcd(SECTOR_BYTES, element_bytes)
