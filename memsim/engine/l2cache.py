"""The L2 as a least-recently-used store of tiles, shared by every SM.

Granularity is the tile a schedule names, not the 128-byte line: CTAs that read the
same tile read the same lines. A request for a tile whose fetch from HBM is still in
flight waits for that fetch and counts as a hit (the miss-status registers merge it).
Dirty tiles are written back to HBM when evicted, or when the kernel ends (ncu flushes
the cache between kernels, so each kernel starts cold: DESIGN.md). Two calibrated limits
(memsim.writes says the same for the analytic model), under which the oldest dirty tiles are
written back and stay in L2, clean:
- `dirty_lifetime_bytes` (the GPU's `l2_dirty_lifetime_bytes`): a dirty tile reaches HBM once
  that many bytes have been put into L2 after it (tiles filled from HBM and tiles written);
- `dirty_limit_bytes` (`l2_dirty_resident_bytes`): no more than that stays dirty.
"""

from collections import OrderedDict
from typing import Hashable

import simpy


class L2Cache:
    def __init__(self, capacity_bytes: float, dirty_limit_bytes: float | None = None,
                 dirty_lifetime_bytes: float | None = None):
        self.capacity_bytes = capacity_bytes
        self.dirty_limit_bytes = dirty_limit_bytes
        self.dirty_lifetime_bytes = dirty_lifetime_bytes
        self._lines: OrderedDict[Hashable, list] = OrderedDict()  # key -> [bytes, dirty, tensor]
        # dirty keys, oldest write first -> filled_bytes when written
        self._dirty: OrderedDict[Hashable, float] = OrderedDict()
        self.filled_bytes = 0.0  # bytes put into L2 so far (filled from HBM or written): the age of a dirty tile
        self._inflight: dict[Hashable, simpy.Event] = {}
        self.used_bytes = 0.0
        self.dirty_bytes = 0.0

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
        """Install or overwrite a tile; returns the dirty (tensor, bytes) written back to make room."""
        line = self._lines.get(key)
        if line is not None:
            self.used_bytes -= line[0]
            if line[1]:  # rewritten: it counts as written now (a clean fill never lands on a present tile)
                self._clean(key, line)
        line = [nbytes, False, tensor]
        self._lines[key] = line
        self._lines.move_to_end(key)
        self.used_bytes += nbytes
        self.filled_bytes += nbytes
        if dirty:
            line[1] = True
            self._dirty[key] = self.filled_bytes
            self.dirty_bytes += nbytes
        return self._evict() + self._write_back_oldest()

    def _clean(self, key: Hashable, line: list) -> None:
        line[1] = False
        self._dirty.pop(key, None)
        self.dirty_bytes -= line[0]

    def _evict(self) -> list[tuple[str, float]]:
        written_back = []
        while self.used_bytes > self.capacity_bytes and len(self._lines) > 1:
            key, line = self._lines.popitem(last=False)
            self.used_bytes -= line[0]
            if line[1]:
                self._clean(key, line)
                written_back.append((line[2], line[0]))
        return written_back

    def _write_back_oldest(self) -> list[tuple[str, float]]:
        """Dirty tiles older than the dirty lifetime, then the oldest above the dirty limit, go to HBM and stay
        in L2, clean. Under the limit the newest dirty tile always stays (one tile may be larger than it)."""
        written_back = []
        lifetime, limit = self.dirty_lifetime_bytes, self.dirty_limit_bytes
        while self._dirty:
            key, written_at = next(iter(self._dirty.items()))
            aged = lifetime is not None and self.filled_bytes - written_at > lifetime
            if not aged and (limit is None or self.dirty_bytes <= limit or len(self._dirty) == 1):
                break
            line = self._lines[key]
            self._clean(key, line)
            written_back.append((line[2], line[0]))
        return written_back

    def flush(self) -> list[tuple[str, float]]:
        """Empty the cache (kernel end); returns the dirty (tensor, bytes) written back."""
        dirty = [(tensor, nbytes) for nbytes, is_dirty, tensor in self._lines.values() if is_dirty]
        self._lines.clear()
        self._dirty.clear()
        self._inflight.clear()
        self.used_bytes = 0.0
        self.dirty_bytes = 0.0
        return dirty
