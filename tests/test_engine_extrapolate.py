"""Fast mode's extrapolation of long launches (memsim.engine.extrapolate) against simulating every CTA:
the issue's own target shape, FA2 forward B=1 H=64 N=131072 d=128 on an H100 (248 waves), and a causal
launch of 62 waves whose CTAs all differ in length."""

import sys

import pytest

import memsim.engine  # noqa: F401  (loads memsim.engine.simulate)
from memsim import AttentionShape, TileConfig, predict
from memsim.engine import extrapolate
from memsim.engine.extrapolate import Cutoff, Snapshot, steady_rate, watched

SIMULATE = sys.modules["memsim.engine.simulate"]
SHAPE = AttentionShape(batch=1, q_heads=64, q_len=131072)
CAUSAL = (AttentionShape(batch=4, q_heads=32, q_len=8192, causal=True),
          TileConfig(block_m=128, block_n=128, num_warps=4, num_stages=3))


def _written(p) -> float:
    return p.bytes["hbm_write"] + p.bytes["hbm_write_deferred"]


@pytest.mark.parametrize("shape, tiles", [(SHAPE, None), CAUSAL], ids=["B1-H64-N131072", "B4-H32-N8192-causal"])
def test_extrapolated_launch_matches_the_fully_simulated_one(monkeypatch, shape, tiles):
    extended = []
    real = SIMULATE._extended
    monkeypatch.setattr(SIMULATE, "_extended", lambda result, cutoff: extended.append(cutoff) or real(result, cutoff))
    fast = predict("flash2", shape, tiles=tiles, engine="des")
    assert len(extended) == 1 and extended[0].limit <= 0.75 * extended[0].grid  # it did skip most of the launch
    cutoff = extended[0]
    assert cutoff.by_dispatch == shape.causal  # a causal launch is seen at its unit starts
    if cutoff.by_dispatch:
        assert all(s.done_ctas % cutoff.unit == 0 for s in cutoff.snapshots)
    monkeypatch.setattr(SIMULATE.extrapolate, "watched", lambda *args: False)
    full = predict("flash2", shape, tiles=tiles, engine="des")
    print(f"latency extrapolated {fast.latency_s * 1e3:.3f} ms, simulated {full.latency_s * 1e3:.3f} ms")
    assert fast.latency_s == pytest.approx(full.latency_s, rel=0.005)
    for key in ("hbm_read", "l2_read", "l2_write"):
        assert fast.bytes[key] == pytest.approx(full.bytes[key], rel=0.005), key
    assert _written(fast) == pytest.approx(_written(full), rel=0.01)  # when a tile is written back may move
    assert fast.flops == pytest.approx(full.flops, rel=0.005)


def test_short_launches_are_not_watched():
    from memsim.schedules.flash2 import forward
    assert not watched(forward(AttentionShape(q_len=4096), TileConfig()), slots=264)  # 4 waves
    assert watched(forward(SHAPE, TileConfig()), slots=264)


def _snapshot(done: int, time_s: float, hbm: float, filled: float = 1e12) -> Snapshot:
    return Snapshot(done, time_s, {("hbm_read", "K"): hbm}, {"hbm": time_s / 2}, filled)


def test_windows_that_agree_give_the_rate_per_cta():
    rate, why = steady_rate(_snapshot(100, 1.0, 1000.0), _snapshot(200, 2.0, 2000.0), _snapshot(300, 3.0, 3000.0))
    assert why == ""
    assert rate.time_s == pytest.approx(0.01)
    assert rate.counters[("hbm_read", "K")] == pytest.approx(10.0)
    assert rate.busy_s["hbm"] == pytest.approx(0.005)


@pytest.mark.parametrize("c, why", [(_snapshot(300, 3.1, 3000.0), "time"), (_snapshot(300, 3.0, 3100.0), "counters")])
def test_windows_that_differ_give_no_rate(c, why):
    assert steady_rate(_snapshot(100, 1.0, 1000.0), _snapshot(200, 2.0, 2000.0), c) == (None, why)


def test_a_launch_that_never_settles_runs_in_full():
    from memsim.schedules.flash2 import forward
    launch = forward(SHAPE, TileConfig())
    cutoff = Cutoff(launch, slots=264, lifetime_bytes=None)
    for done in range(264, launch.grid, 264):  # every window slower than the last
        cutoff.dispatched = done + 264
        cutoff.watch(_snapshot(done, (done / 264) ** 2, float(done)))
    assert not cutoff.settled and cutoff.limit == launch.grid


def test_no_window_starts_before_the_l2_has_taken_in_a_dirty_lifetime():
    from memsim.schedules.flash2 import forward
    launch = forward(SHAPE, TileConfig())
    cutoff = Cutoff(launch, slots=264, lifetime_bytes=1e9)
    for done in range(264, launch.grid // 2, 264):  # steady, but the L2 has taken in under 1 GB
        cutoff.dispatched = done + 264
        cutoff.watch(_snapshot(done, done * 1e-6, float(done), filled=1e8))
    assert not cutoff.settled
    for done in range(launch.grid // 2, launch.grid, 264):
        cutoff.dispatched = done + 264
        cutoff.watch(_snapshot(done, done * 1e-6, float(done), filled=2e9))
    assert cutoff.settled and cutoff.limit < launch.grid and cutoff.limit % launch.repeat_unit == 0
    assert extrapolate.MIN_WAVES * 264 <= launch.grid


def test_causal_launches_are_not_in_lock_step():
    from memsim.schedules.flash2 import forward
    assert extrapolate.lockstep(forward(AttentionShape(q_len=8192), TileConfig()))
    assert not extrapolate.lockstep(forward(AttentionShape(q_len=8192, causal=True), TileConfig()))


def _settle(launch, slots: int) -> Cutoff:
    """A cutoff fed a launch that is steady from the start, CTA for CTA."""
    cutoff = Cutoff(launch, slots=slots, lifetime_bytes=None)
    for done in range(slots, launch.grid, slots):
        cutoff.dispatched = done + slots
        cutoff.watch(_snapshot(done, done * 1e-6, float(done)))
        if cutoff.settled:
            return cutoff
    raise AssertionError("never settled")


def test_a_lockstep_launch_keeps_its_partial_last_wave():
    from math import lcm
    from memsim.schedules.flash2 import forward
    launch = forward(AttentionShape(q_heads=8, q_len=131072), TileConfig())  # 8192 CTAs, units of 1024
    cutoff = _settle(launch, slots=384)  # 21.3 waves: the last one a third full
    period = lcm(launch.repeat_unit, 384)
    assert cutoff.limit < launch.grid and (launch.grid - cutoff.limit) % period == 0
    assert cutoff.limit >= cutoff.dispatched


def test_a_causal_launch_stops_at_the_next_whole_unit():
    from memsim.schedules.flash2 import forward
    launch = forward(AttentionShape(q_heads=8, q_len=131072, causal=True), TileConfig())
    cutoff = _settle(launch, slots=384)
    assert cutoff.window % launch.repeat_unit == 0 and cutoff.start % launch.repeat_unit == 0
    assert cutoff.limit == -(-cutoff.dispatched // launch.repeat_unit) * launch.repeat_unit < launch.grid


def test_a_causal_launch_is_seen_as_each_unit_starts_and_a_lockstep_one_as_ctas_finish():
    """Causal CTAs finish as a changing mix of light and heavy ones; at each unit's start the machine holds the
    same mix, so the cutoff takes its snapshots there, keyed by the CTAs dispatched before that unit."""
    from memsim.schedules.flash2 import forward
    causal = forward(AttentionShape(q_heads=8, q_len=131072, causal=True), TileConfig())
    unit = causal.repeat_unit
    cutoff = Cutoff(causal, slots=384, lifetime_bytes=None)
    assert cutoff.by_dispatch
    taken = []
    cutoff.dispatching(unit + 1, unit - 2, lambda ctas: taken.append(ctas) or _snapshot(ctas, 0.0, 0.0))
    assert taken == []  # inside a unit: nothing starts
    cutoff.dispatching(2 * unit - 3, 5, lambda ctas: taken.append(ctas) or _snapshot(ctas, 0.0, 0.0))
    assert taken == [2 * unit] and cutoff.dispatched == 2 * unit - 3  # the group holds unit 2's first CTAs
    lockstep = Cutoff(forward(SHAPE, TileConfig()), slots=264, lifetime_bytes=None)
    assert not lockstep.by_dispatch
    lockstep.dispatching(0, 264, lambda ctas: taken.append(ctas))
    assert taken == [2 * unit]


def test_a_causal_launch_steady_at_its_unit_starts_stops_dispatch_at_one():
    from memsim.schedules.flash2 import forward
    launch = forward(AttentionShape(q_heads=8, q_len=131072, causal=True), TileConfig())
    unit = launch.repeat_unit
    cutoff = Cutoff(launch, slots=384, lifetime_bytes=None)
    for position in range(0, launch.grid, 128):  # dispatch groups of 128 CTAs, one unit every unit / 128 groups
        cutoff.dispatching(position, 128, lambda ctas: _snapshot(ctas, ctas * 1e-6, float(ctas)))
        if cutoff.settled:
            break
    assert cutoff.settled and cutoff.limit % unit == 0 and cutoff.limit <= position + 128
    assert cutoff.rate.time_s == pytest.approx(1e-6) and cutoff.rate.counters[("hbm_read", "K")] == pytest.approx(1.0)


def test_a_counter_that_disagrees_once_is_slid_past_before_the_window_doubles():
    # Steady in time; the K/V reads jump once, just after the first window opens (counters accrue as CTAs run,
    # windows are cut as they finish): the pair a step later agrees, and the window keeps its length. A counter
    # that never settles doubles it.
    from memsim.schedules.flash2 import forward
    launch = forward(SHAPE, TileConfig())

    def fed(counter) -> tuple[Cutoff, int]:
        cutoff = Cutoff(launch, slots=264, lifetime_bytes=None)
        first, opens = cutoff.window, cutoff.start
        for done in range(264, launch.grid, 264):
            cutoff.dispatched = done + 264
            cutoff.watch(_snapshot(done, done * 1e-6, counter(done, opens)))
            if cutoff.settled:
                break
        return cutoff, first

    once, first = fed(lambda done, opens: float(done) + (50.0 if done > opens else 0.0))
    assert once.settled and once.window == first and extrapolate.SLIDES_BEFORE_DOUBLING >= 1
    growing, first = fed(lambda done, opens: float(done) ** 1.5)
    assert growing.window > first
