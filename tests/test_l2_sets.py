"""The L2's sets (memsim.engine.l2cache, "Sets"): a tile touched again after D bytes of other tiles keeps
P(Poisson(ways D / capacity) < ways) of its lines, and the DES fetches the rest from HBM again."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

from memsim.engine.l2cache import L2Cache, set_survival

MB = 1e6


def test_survival_is_one_at_no_distance_and_falls_with_it():
    assert set_survival(0.0, 50 * MB, 6) == 1.0
    values = [set_survival(d * MB, 50 * MB, 6) for d in range(0, 120, 5)]
    assert all(a > b for a, b in zip(values, values[1:]))
    assert values[-1] < 0.01


@given(st.floats(0.05, 3.0))
def test_many_ways_make_a_least_recently_used_cache(distance_over_capacity):
    """With ways enough, each set sees its share of the traffic: survival is 1 below the capacity, 0 above it."""
    survival = set_survival(distance_over_capacity * 50 * MB, 50 * MB, 2000)
    if distance_over_capacity < 0.85:
        assert survival > 0.999
    elif distance_over_capacity > 1.15:
        assert survival < 0.001


@pytest.mark.parametrize("ways, lines_between", [(6, 300), (6, 500), (16, 900), (4, 400)])
def test_survival_is_what_a_set_associative_lru_cache_keeps(ways, lines_between):
    """Simulated: 128 sets of `ways` lines, least recently used out of each, every line hashed to a random set.
    A line touched, then `lines_between` distinct others, then touched again is still there as often as the
    formula says (within the Monte Carlo's spread and the Poisson approximation of the binomial)."""
    sets, trials = 128, 4000
    rng = np.random.default_rng(7)
    others = rng.integers(0, sets, size=(trials, lines_between))
    target = rng.integers(0, sets, size=trials)
    kept = np.mean([(row == t).sum() < ways for row, t in zip(others, target)])
    expected = set_survival(lines_between, sets * ways, ways)
    assert kept == pytest.approx(expected, abs=0.03)


def test_a_tile_lost_in_part_is_fetched_again_in_part():
    l2 = L2Cache(capacity_bytes=100 * MB, ways=6)
    l2.insert("k", 1 * MB, "K", dirty=False)
    for i in range(60):  # 60 MB of other tiles touched since
        l2.insert(("other", i), 1 * MB, "V", dirty=False)
    filled = l2.filled_bytes
    assert l2.lookup("k") is False
    lost = l2.missing_fraction("k")
    assert lost == pytest.approx(1 - set_survival(60 * MB, 100 * MB, 6))
    assert 0 < lost < 1
    l2.finish_fetch("k", 1 * MB, "K")
    assert l2.filled_bytes == pytest.approx(filled + lost * MB)  # only the lost lines came in again
    assert l2.lookup("k") is True  # touched just now: all of it is there
    assert l2.missing_fraction("other") == 1.0  # a tile never seen is missed whole


def test_a_fully_associative_cache_loses_nothing_below_its_capacity():
    l2 = L2Cache(capacity_bytes=100 * MB)
    l2.insert("k", 1 * MB, "K", dirty=False)
    for i in range(95):
        l2.insert(("other", i), 1 * MB, "V", dirty=False)
    assert l2.lookup("k") is True


def test_dirty_tiles_are_left_to_the_write_back_rules():
    """A dirty tile's lines reach HBM by the dirty lifetime and limit; the sets do not drop them unwritten."""
    l2 = L2Cache(capacity_bytes=100 * MB, ways=6)
    l2.insert("o", 1 * MB, "O", dirty=True)
    for i in range(60):
        l2.insert(("other", i), 1 * MB, "V", dirty=False)
    assert l2.lookup("o") is True
