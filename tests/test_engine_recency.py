"""memsim.engine.recency: the bytes of distinct tiles touched since a touch, against counting them one by one,
as the tree grows past its first size."""

import pytest
from hypothesis import given, settings, strategies as st

from memsim.engine.recency import Recency


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["touch", "bytes"]), st.integers(0, 20), st.integers(1, 1000)),
                max_size=300), st.integers(0, 400))
def test_since_counts_each_tile_at_its_last_touch(ops, asked):
    r = Recency(capacity=4)
    last = {}  # key -> (sequence number, bytes)
    loose = []  # (sequence number, bytes) of bytes that belong to no tile
    for op, key, nbytes in ops:
        if op == "touch":
            last[key] = (r.touch(key, nbytes), nbytes)
        else:
            loose.append((r.touch_bytes(nbytes), nbytes))
    after = min(asked, r.seq)
    want = sum(b for s, b in list(last.values()) + loose if s > after)
    assert r.since(after) == pytest.approx(want)
    assert r.since(r.seq) == 0


def test_a_tile_touched_again_after_every_watched_number_stays_put():
    r = Recency()
    r.touch("K", 10)
    watched = r.touch("O", 5)
    moved = r.touch("V", 7)
    assert r.touch("V", 7, watched_from=watched) == moved  # after O either way: nothing to move
    assert r.since(watched) == 7
    assert r.touch("K", 10, watched_from=watched) > moved  # K was before O: now it is after
    assert r.since(watched) == 17
