"""How many bytes of distinct tiles the L2 has touched since a given touch: a dirty tile's age.

A least-recently-used cache evicts the line whose last touch is oldest, so how close a dirty line is to
eviction is its stack distance: the bytes of the other lines touched (brought in, written or hit) since it
was last touched, each line counted once however often it was touched (Mattson et al., "Evaluation
techniques for storage hierarchies", IBM Systems Journal 9(2), 1970). A tile filled before a dirty tile was
written and read again after it (K and V of the heads in flight, re-read by every CTA of their head) is above
it in that order; reading it again and again moves it no further.

Every touch gets the next sequence number and puts the tile's bytes at that number in a Fenwick tree
(Fenwick, "A new data structure for cumulative frequency tables", Software: Practice and Experience 24(3),
1994), after taking them off the number of the tile's previous touch; the bytes touched since sequence
number s are then the sum over the numbers after s, in O(log n).
"""

from typing import Hashable


class Recency:
    __slots__ = ("_tree", "_size", "_last", "seq", "total")

    def __init__(self, capacity: int = 1 << 12):
        if capacity <= 0 or capacity & (capacity - 1):
            raise ValueError(f"capacity = {capacity}: must be a power of two (the tree grows by doubling)")
        self._size = capacity
        self._tree = [0.0] * (capacity + 1)
        self._last: dict[Hashable, tuple[int, float]] = {}  # key -> (its last touch, the bytes put there)
        self.seq = 0  # the last sequence number given
        self.total = 0.0

    def touch(self, key: Hashable, nbytes: float, watched_from: int | None = None) -> int:
        """`key` (nbytes of it now) is touched: its bytes move to a new sequence number, which is returned.
        `watched_from`: nobody asks `since` of a number before it (the oldest still asked is later); a tile last
        touched after it with the same bytes then stays where it is, which changes no answer: it is after every
        number asked about either way."""
        old = self._last.get(key)
        if old is not None:
            if watched_from is not None and old[0] > watched_from and old[1] == nbytes:
                return old[0]
            self._add(old[0], -old[1])
        self.seq += 1
        self._add(self.seq, nbytes)
        self._last[key] = (self.seq, nbytes)
        return self.seq

    def touch_bytes(self, nbytes: float) -> int:
        """Bytes touched that belong to no tile of their own (copies in the other L2 partition)."""
        self.seq += 1
        self._add(self.seq, nbytes)
        return self.seq

    def last_touch(self, key: Hashable) -> int | None:
        """The sequence number of the tile's last touch (None: never touched)."""
        last = self._last.get(key)
        return None if last is None else last[0]

    def since(self, seq: int) -> float:
        """Bytes of distinct tiles touched after sequence number `seq` (each at its last touch)."""
        i, prefix = min(seq, self._size), 0.0
        while i > 0:
            prefix += self._tree[i]
            i -= i & -i
        return self.total - prefix

    def clear(self) -> None:
        self.__init__()

    def _add(self, i: int, value: float) -> None:
        if i > self._size:
            self._grow(i)
        self.total += value
        tree, size = self._tree, self._size
        while i <= size:
            tree[i] += value
            i += i & -i

    def _grow(self, needed: int) -> None:
        """Double the tree until it holds `needed`: of the new nodes n+1 .. 2n only node 2n covers anything already
        counted (all of it), the others cover numbers not given yet."""
        while self._size < needed:
            n = self._size
            self._tree.extend([0.0] * n)
            self._tree[2 * n] = self.total
            self._size = 2 * n
