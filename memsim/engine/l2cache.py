"""The L2 as a least-recently-used store of tiles, shared by every SM.

Granularity is the tile a schedule names, not the 128-byte line: CTAs that read the
same tile read the same lines. A request for a tile whose fetch from HBM is still in
flight waits for that fetch and counts as a hit (the miss-status registers merge it).
Dirty tiles are written back to HBM when evicted, or when the kernel ends (ncu flushes
the cache between kernels, so each kernel starts cold: DESIGN.md).
"""

from collections import OrderedDict
from typing import Hashable

import simpy


class L2Cache:
    def __init__(self, capacity_bytes: float):
        self.capacity_bytes = capacity_bytes
        self._lines: OrderedDict[Hashable, list] = OrderedDict()  # key -> [bytes, dirty, tensor]
        self._inflight: dict[Hashable, simpy.Event] = {}
        self.used_bytes = 0.0

    def lookup(self, key: Hashable) -> bool | simpy.Event:
        """True on a hit (and the tile becomes most recent), the pending fetch's event, or False on a miss."""
        line = self._lines.get(key)
        if line is not None:
            self._lines.move_to_end(key)
            return True
        return self._inflight.get(key, False)

    def start_fetch(self, key: Hashable, event: simpy.Event) -> None:
        self._inflight[key] = event

    def finish_fetch(self, key: Hashable, nbytes: float, tensor: str) -> list[tuple[str, float]]:
        """Install a fetched tile; returns the dirty (tensor, bytes) it evicted."""
        self._inflight.pop(key, None)
        return self.insert(key, nbytes, tensor, dirty=False)

    def insert(self, key: Hashable, nbytes: float, tensor: str, dirty: bool) -> list[tuple[str, float]]:
        line = self._lines.get(key)
        if line is not None:
            self.used_bytes -= line[0]
            dirty = dirty or line[1]
        self._lines[key] = [nbytes, dirty, tensor]
        self._lines.move_to_end(key)
        self.used_bytes += nbytes
        return self._evict()

    def _evict(self) -> list[tuple[str, float]]:
        written_back = []
        while self.used_bytes > self.capacity_bytes and len(self._lines) > 1:
            _, (nbytes, dirty, tensor) = self._lines.popitem(last=False)
            self.used_bytes -= nbytes
            if dirty:
                written_back.append((tensor, nbytes))
        return written_back

    def flush(self) -> list[tuple[str, float]]:
        """Empty the cache (kernel end); returns the dirty (tensor, bytes) written back."""
        dirty = [(tensor, nbytes) for nbytes, is_dirty, tensor in self._lines.values() if is_dirty]
        self._lines.clear()
        self._inflight.clear()
        self.used_bytes = 0.0
        return dirty
