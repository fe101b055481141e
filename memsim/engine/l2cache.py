"""The L2 as a least-recently-used store of tiles, shared by every SM.

Granularity is the tile a schedule names, not the 128-byte line: CTAs that read the
same tile read the same lines. A request for a tile whose fetch from HBM is still in
flight waits for that fetch and counts as a hit (the miss-status registers merge it).
Dirty tiles are written back to HBM when evicted, or when the kernel ends (ncu flushes
the cache between kernels, so each kernel starts cold: DESIGN.md). Two calibrated limits
(memsim.writes says the same for the analytic model), under which the oldest dirty tiles are
written back and stay in L2, clean:
- `dirty_lifetime_bytes` (the GPU's `l2_dirty_lifetime_bytes`): a dirty tile reaches HBM once that many
  bytes of other tiles have been touched since it was last touched: its least-recently-used stack distance
  (memsim.engine.recency). That is the bytes brought into L2 after it (tiles filled from HBM and tiles written:
  rewriting a resident tile, as a spill or an atomic does, takes no new line but moves it up), plus the tiles
  that were there before it and are read again after it, each once: K and V of the heads in flight, which
  their CTAs keep reading while the outputs of earlier CTAs wait. A tile read again and again counts once, as
  the microbenchmark says (hits on 4 MiB of data read after the stores sent nothing to HBM). The write-backs
  are checked as tiles are brought in or written. The analytic model (memsim.writes) ages by bytes brought
  in only: it does not follow tiles;
- `dirty_limit_bytes` (`l2_dirty_resident_bytes`): no more than that stays dirty.

The H100's L2 is two partitions, each caching for the SMs next to it (A100 whitepaper, "L2 cache";
the H100 keeps the design). A tile read from an SM on the far side crosses between them
(`lts__t_sectors_srcunit_ltcfabric`: half of a streamed kernel's DRAM reads, all of FA2's, whose K/V
every head's CTAs read on both sides: results/h100/l2-fabric-*-ncu-2026-11-23.csv) and is kept on
both, so it brings more into L2 than a tile read once. Measured (validation/l2_dirty_lifetime.py): data
read by 8 CTAs each ages dirty lines `shared_age_weight` = 1.85 times as fast as data read once, data
read by 2 CTAs 1.29 times (python3 -m validation.fit_l2_dirty_lifetime). memsim counts a shared tile's
k-th reader as bringing in (weight - 1) x (the rise in the chance that k readers are not all on one side,
memsim.writes.on_both_partitions) of its bytes: 1.43 for 2 readers, 1.85 from about 8. Its readers are counted
while its lines stay: a tile evicted and fetched again is copied across again by its next readers, and one that
its sets lost in part is so on the part lost, while the part kept goes on counting its readers (as the analytic
model weighs every HBM read of a shared tensor).

Sets. The H100's L2 is set-associative: a line lives in one of its sets, and a line touched again after D bytes of
other lines have been touched survives only while fewer than `ways` of those landed in its set. With addresses
hashed evenly over the sets, the lines landing in one set are Poisson with mean ways x D / capacity, so a tile touched
again at stack distance D still holds P(Poisson(ways D / C) < ways) of its lines (the set-associative stack model:
A. J. Smith, "A comparative study of set associative memory mapping algorithms and their use for cache and main
memory", IEEE Trans. Software Engineering SE-4(2), 1978). The rest comes from HBM again. That is what a walk of key
blocks last to first re-reads on the H100, where a fully associative LRU of 50 MiB keeps everything: K and V of a
head wait there 18-30 MB apart (validation/key_order_probe.py, validation/ACCURACY.md). `ways` None: fully
associative; the least recently used tiles still leave first once the capacity is full.

An entry may hold several equal tiles put in together, one per member of a cohort of CTAs
(memsim.engine.cta: each member's private Q or O tile, in program-id order). The entry keeps
them as members, oldest first, and evicts or writes back only as many members as each limit
needs, each with its own age: exactly what the members' tiles one by one would do.
"""

from collections import OrderedDict
from math import ceil, exp, lgamma, log
from typing import Hashable

import simpy

from memsim.engine.recency import Recency
from memsim.writes import on_both_partitions

_BYTE_ROUNDING = 1e-9  # relative: a fraction of a member this small is float rounding, not a member
_EXP_UNDERFLOW = 600.0  # exp(-x) of a double underflows near x = 745
_NEGLIGIBLE_LOSS = 1e-4  # a tile whose sets lost less than this of it counts as a hit
_ON_BOTH_SURELY = 64  # readers after which 1 - 2^(1 - readers) is 1 to a double: later readers copy nothing


class _Entry:
    __slots__ = ("member_bytes", "members", "stamps", "tensor", "first")

    def __init__(self, member_bytes: float, members: int, tensor: str):
        self.member_bytes, self.members, self.tensor = member_bytes, members, tensor
        # each dirty member's last touch (memsim.engine.recency's sequence number), oldest first: the newest members
        # are the dirty ones
        self.stamps: list[int] = []
        self.first = 0  # the oldest member still here: member i of the cohort is tile (key, i) to memsim.engine.recency

    @property
    def nbytes(self) -> float:
        return self.member_bytes * self.members

    @property
    def dirty(self) -> int:
        return len(self.stamps)


class L2Cache:
    def __init__(self, capacity_bytes: float, dirty_limit_bytes: float | None = None,
                 dirty_lifetime_bytes: float | None = None, shared_age_weight: float = 1.0, ways: int | None = None):
        self.capacity_bytes = capacity_bytes
        self.ways = ways
        # up to this stack distance the sets lose a negligible part of a tile: no need to ask them
        self._lossless_bytes = None if ways is None else negligible_loss_distance(capacity_bytes, ways)
        self._missing: dict[Hashable, float] = {}  # tiles lost in part to their sets: the fraction to fetch again
        self.dirty_limit_bytes = dirty_limit_bytes
        self.dirty_lifetime_bytes = dirty_lifetime_bytes
        self.shared_age_weight = shared_age_weight
        self._readers: dict[Hashable, int] = {}  # shared tile -> CTAs that have read it since it was fetched
        # shared tile its sets lost in part -> [(fraction of its lines, CTAs that have read them since they came)]
        self._parts: dict[Hashable, list[tuple[float, int]]] = {}
        self._lines: OrderedDict[Hashable, _Entry] = OrderedDict()  # least recently used first
        self._dirty: OrderedDict[Hashable, None] = OrderedDict()  # keys with dirty members, least recently touched first
        self.filled_bytes = 0.0  # bytes brought into L2 so far (filled or newly written)
        self.recency = Recency()  # bytes of distinct tiles touched since each touch: a dirty tile's age
        self._newest_stamp = 0  # the latest sequence number a dirty tile was stamped with
        self._inflight: dict[Hashable, simpy.Event] = {}
        self._transfers: dict[Hashable, simpy.Event] = {}  # fetches in flight -> when their HBM transfer starts
        self.used_bytes = 0.0
        self.dirty_bytes = 0.0

    def lookup(self, key: Hashable) -> bool | simpy.Event:
        """True on a hit (and the tile becomes most recent), the pending fetch's event, or False on a miss (then
        `missing_fraction(key)` says how much of it is to be fetched)."""
        entry = self._lines.get(key)
        if entry is not None:
            lost = self._lost_to_sets(key, entry)
            if lost <= _NEGLIGIBLE_LOSS:
                self._lines.move_to_end(key)
                self._touch(key, entry)
                return True
            self._missing[key] = lost
            self._forget_readers(key, lost)
            del self._lines[key]
            self.used_bytes -= entry.nbytes
            return False
        return self._inflight.get(key, False)

    def missing_fraction(self, key: Hashable) -> float:
        """The fraction of a missed tile that must come from HBM: all of it, unless its set lost only part of it."""
        return self._missing.get(key, 1.0)

    def _lost_to_sets(self, key: Hashable, entry: _Entry) -> float:
        """The fraction of a resident tile's lines its sets have evicted since it was last touched (module
        docstring, "Sets"). Only a clean tile of one member is followed (K and V; a cohort's private tiles are
        read once)."""
        if self.ways is None or entry.stamps or entry.members != 1 or entry.first:
            return 0.0
        last = self.recency.last_touch(key)
        if last is None:
            return 0.0
        distance = self.recency.since(last)
        if distance <= self._lossless_bytes:
            return 0.0
        return 1.0 - set_survival(distance, self.capacity_bytes, self.ways)

    def read_shared(self, key: Hashable, nbytes: float, readers: int) -> list[tuple[str, float]]:
        """`readers` more CTAs read a tile that CTAs share: the copies they make in the far partition age dirty
        tiles (module docstring). Returns the dirty (tensor, bytes) that this sends to HBM."""
        extra = (self.shared_age_weight - 1.0) * nbytes * self._copied_across(key, readers)
        if extra <= 0:
            return []
        self.filled_bytes += extra
        self.recency.touch_bytes(extra)
        return self._write_back_oldest()

    def _copied_across(self, key: Hashable, readers: int) -> float:
        """`readers` more CTAs read a shared tile: the fraction of its bytes this copies into the far partition."""
        parts = self._parts.get(key)
        if parts is None:
            before = self._readers.get(key, 0)
            after = self._readers[key] = before + readers
            return on_both_partitions(after) - on_both_partitions(before)
        self._parts[key] = [(f, r + readers) for f, r in parts if r + readers < _ON_BOTH_SURELY]
        return sum(f * (on_both_partitions(r + readers) - on_both_partitions(r)) for f, r in parts)

    def _forget_readers(self, key: Hashable, lost: float = 1.0) -> None:
        """A shared tile's lines (the fraction `lost` of them) left L2: their next readers copy them across again,
        and the part kept goes on counting its readers."""
        if lost >= 1.0:
            self._readers.pop(key, None)
            self._parts.pop(key, None)
            return
        parts = self._parts.get(key)
        if parts is None:
            readers = self._readers.pop(key, None)
            if readers is None:
                return  # never read as shared
            parts = [(1.0, readers)]
        self._parts[key] = [(f * (1.0 - lost), r) for f, r in parts if r < _ON_BOTH_SURELY] + [(lost, 0)]

    def start_fetch(self, key: Hashable, event: simpy.Event, transfer: simpy.Event | None = None) -> None:
        """`event` fires when the tile is in L2; `transfer`, if given, when its lines start to arrive."""
        self._inflight[key] = event
        if transfer is not None:
            self._transfers[key] = transfer

    def transfer_started(self, key: Hashable) -> simpy.Event | None:
        """When the lines of a tile being fetched start to arrive (None: not known)."""
        return self._transfers.get(key)

    def finish_fetch(self, key: Hashable, nbytes: float, tensor: str, members: int = 1) -> list[tuple[str, float]]:
        """Install a fetched tile (or `members` equal tiles); returns the dirty (tensor, bytes) it evicted."""
        self._inflight.pop(key, None)
        self._transfers.pop(key, None)
        fetched = self._missing.pop(key, 1.0)
        written_back = self.insert(key, nbytes, tensor, dirty=False, members=members)
        self.filled_bytes -= (1.0 - fetched) * nbytes  # the lines its sets had kept were not brought in again
        return written_back

    def insert(self, key: Hashable, nbytes: float, tensor: str, dirty: bool,
               members: int = 1) -> list[tuple[str, float]]:
        """Install or overwrite `members` equal tiles of `nbytes` in all, put in one after another;
        returns the dirty (tensor, bytes) written back to make room."""
        member_bytes = nbytes / members
        old = self._lines.get(key)
        if old is None:
            self._lines[key] = entry = _Entry(member_bytes, 0, tensor)
            return self._add_members(key, entry, members, dirty)
        # Rewritten (a clean fill never lands on a present tile): member by member, each replacing its own old
        # tile, which counts as written now; the old entry keeps its place until its last member is replaced.
        new_key = ("rewrite of", key)
        self._lines[new_key] = entry = _Entry(member_bytes, 0, tensor)
        written_back = []
        for k in range(members):
            resident = old.members > 0 and k >= members - old.members  # member k's old tile is still there
            if resident:
                self._drop_oldest(key, old)
            written_back += self._add_members(new_key, entry, 1, dirty, brought_in=not resident, tiles_of=key)
        self._lines.pop(key, None)
        self._dirty.pop(key, None)
        self._lines[key] = self._lines.pop(new_key)
        if new_key in self._dirty:
            self._dirty.pop(new_key)
            self._dirty[key] = None
        return written_back

    def _add_members(self, key: Hashable, entry: _Entry, count: int, dirty: bool, brought_in: bool = True,
                     tiles_of: Hashable | None = None) -> list[tuple[str, float]]:
        """`count` members put in after the entry's others. `tiles_of`: the key their tiles have (while a rewrite
        builds the entry under another)."""
        entry.members += count
        self.used_bytes += count * entry.member_bytes
        if brought_in:
            self.filled_bytes += count * entry.member_bytes
        if dirty:
            entry.stamps.extend([0] * count)  # set by _touch
            self.dirty_bytes += count * entry.member_bytes
            self._dirty[key] = None
        self._touch(key, entry, newest=count, tiles_of=tiles_of)
        return self._evict() + self._write_back_oldest()

    def _touch(self, key: Hashable, entry: _Entry, newest: int | None = None, tiles_of: Hashable | None = None) -> None:
        """The entry's members (its `newest` only, if given) are touched one by one, oldest first, each its own tile
        (member 0: tiles_of or key; member i: (that key, i)): a dirty member's age starts again."""
        members = entry.members if newest is None else newest
        start = entry.first + entry.members - members
        tiles_of = key if tiles_of is None else tiles_of
        touch, nbytes = self.recency.touch, entry.member_bytes
        if not entry.stamps:  # a clean entry can move no dirty tile's age back
            watched = self._newest_stamp if self.ways is None else None  # with sets, every tile's distance is asked
            for member in range(start, start + members):
                touch((tiles_of, member) if member else tiles_of, nbytes, watched)
            return
        dirty_from = entry.first + entry.members - len(entry.stamps)  # the newest members are the dirty ones
        for member in range(start, start + members):
            seq = touch((tiles_of, member) if member else tiles_of, nbytes)
            if member >= dirty_from:
                entry.stamps[member - dirty_from] = seq
                self._newest_stamp = seq
        self._dirty.move_to_end(key)

    def _drop_oldest(self, key: Hashable, entry: _Entry) -> None:
        """Its oldest member leaves without a write-back (it is being rewritten)."""
        if entry.dirty == entry.members:
            entry.stamps.pop(0)
            self.dirty_bytes -= entry.member_bytes
            if not entry.dirty:
                self._dirty.pop(key, None)
        entry.members -= 1
        entry.first += 1
        self.used_bytes -= entry.member_bytes
        if not entry.members:
            del self._lines[key]

    def _evict(self) -> list[tuple[str, float]]:
        """Least recently used first, oldest member first, until the tiles fit (one tile may stay alone)."""
        written_back = []
        lines = self._lines
        while self.used_bytes > self.capacity_bytes:
            key = next(iter(lines))
            entry = lines[key]
            count = min(entry.members - (len(lines) == 1),
                        _members_covering(self.used_bytes - self.capacity_bytes, entry.member_bytes))
            if count <= 0:
                break
            if entry.stamps:
                dirty = max(0, count - (entry.members - len(entry.stamps)))  # the clean members are the oldest
                if dirty:
                    written_back.append((entry.tensor, dirty * entry.member_bytes))
                    self.dirty_bytes -= dirty * entry.member_bytes
                    del entry.stamps[:dirty]
                if not entry.stamps:
                    self._dirty.pop(key, None)
            self.used_bytes -= count * entry.member_bytes
            entry.members -= count
            entry.first += count
            if not entry.members:
                lines.popitem(last=False)
                self._forget_readers(key)
        return written_back

    def _write_back_oldest(self) -> list[tuple[str, float]]:
        """Dirty tiles older than the dirty lifetime, then the oldest above the dirty limit, go to HBM and stay
        in L2, clean. Under the limit the newest dirty tile always stays (one tile may be larger than it)."""
        written_back = []
        lifetime, limit = self.dirty_lifetime_bytes, self.dirty_limit_bytes
        while self._dirty:
            key = next(iter(self._dirty))
            entry = self._lines[key]
            count = 0
            if lifetime is not None:  # aged: more than the lifetime touched since it was (stamps oldest first: ages falling)
                while count < len(entry.stamps) and self.recency.since(entry.stamps[count]) > lifetime:
                    count += 1
            if limit is not None and self.dirty_bytes > limit:
                keep = 1 if len(self._dirty) == 1 else 0  # the newest dirty tile stays
                over = _members_covering(self.dirty_bytes - limit, entry.member_bytes)
                count = max(count, min(entry.dirty - keep, over))
            if count <= 0:
                break
            written_back.append((entry.tensor, count * entry.member_bytes))
            self.dirty_bytes -= count * entry.member_bytes
            del entry.stamps[:count]
            if entry.dirty:
                break  # its newer members are younger than the lifetime and the limit holds
            del self._dirty[key]
        return written_back

    def dirty_by_tensor(self) -> dict[str, float]:
        """tensor -> bytes dirty in L2 now: written, not yet written back."""
        out: dict[str, float] = {}
        for key in self._dirty:
            entry = self._lines[key]
            out[entry.tensor] = out.get(entry.tensor, 0.0) + entry.dirty * entry.member_bytes
        return out

    def oldest_dirty_age_bytes(self) -> float:
        """Bytes of other tiles touched since the least recently touched dirty tile (0 when none is dirty)."""
        if not self._dirty:
            return 0.0
        return self.recency.since(self._lines[next(iter(self._dirty))].stamps[0])

    def flush(self) -> list[tuple[str, float]]:
        """Empty the cache (kernel end); returns the dirty (tensor, bytes) written back."""
        dirty = [(e.tensor, e.dirty * e.member_bytes) for e in self._lines.values() if e.dirty]
        self._lines.clear()
        self._dirty.clear()
        self._inflight.clear()
        self._transfers.clear()
        self._missing.clear()
        self._readers.clear()
        self._parts.clear()
        self.recency.clear()
        self._newest_stamp = 0
        self.used_bytes = 0.0
        self.dirty_bytes = 0.0
        return dirty


def set_survival(distance_bytes: float, capacity_bytes: float, ways: int) -> float:
    """The chance that a line touched again after `distance_bytes` of other lines is still in a `ways`-way
    set-associative cache of `capacity_bytes`: fewer than `ways` of them landed in its set, P(Poisson(ways x
    distance / capacity) < ways) (module docstring, "Sets")."""
    mean = ways * distance_bytes / capacity_bytes
    if mean <= 0:
        return 1.0
    if mean < _EXP_UNDERFLOW:
        term = total = exp(-mean)
        for k in range(1, ways):
            term *= mean / k
            total += term
        return min(1.0, total)
    logs = [k * log(mean) - mean - lgamma(k + 1) for k in range(ways)]  # exp(-mean) alone would underflow
    top = max(logs)
    return min(1.0, exp(top) * sum(exp(v - top) for v in logs))


def negligible_loss_distance(capacity_bytes: float, ways: int) -> float:
    """A stack distance at which the sets have lost no more than _NEGLIGIBLE_LOSS of a tile, as far up as a
    bisection finds (the loss rises with the distance: any distance below it loses no more)."""
    low, high = 0.0, capacity_bytes
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if 1.0 - set_survival(mid, capacity_bytes, ways) <= _NEGLIGIBLE_LOSS else (low, mid)
    return low


def _members_covering(nbytes: float, member_bytes: float) -> int:
    """The fewest whole members holding at least `nbytes`."""
    if nbytes <= member_bytes:
        return 1
    return max(1, ceil(nbytes / member_bytes - _BYTE_ROUNDING))
