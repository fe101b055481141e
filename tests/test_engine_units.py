"""The engine's building blocks: shared-rate units and the L2."""

import simpy
from hypothesis import given, strategies as st

from memsim.engine.fluid import FluidResource
from memsim.engine.l2cache import L2Cache


def finish_times(rate, cap, jobs):
    env = simpy.Environment()
    unit = FluidResource(env, "u", rate, cap)
    out = {}

    def job(name, start, amount, weight):
        yield env.timeout(start)
        yield unit.use(amount, weight)
        out[name] = env.now

    for name, (start, amount, weight) in jobs.items():
        env.process(job(name, start, amount, weight))
    env.run()
    return out, unit


def test_processor_sharing_worked_example():
    # a and b share 100/s; c arrives at 0.5 s and takes a third until it is done at 2.0 s.
    out, unit = finish_times(100.0, float("inf"), {"a": (0, 100, 1), "b": (0, 100, 1), "c": (0.5, 50, 1)})
    assert out == {"a": 2.5, "b": 2.5, "c": 2.0}
    assert unit.busy_s == 2.5 and unit.served == 250


def test_cap_limits_a_lone_job():
    out, unit = finish_times(100.0, 10.0, {"a": (0, 100, 1)})
    assert out["a"] == 10.0 and unit.busy_s == 1.0  # 10% busy for 10 s


@given(st.integers(1, 20), st.floats(0.1, 100.0), st.floats(1.0, 50.0))
def test_a_weighted_request_finishes_with_its_equal_parts(weight, amount, cap):
    merged, _ = finish_times(40.0, cap, {"w": (0, amount, weight)})
    parts, _ = finish_times(40.0, cap, {i: (0, amount, 1) for i in range(weight)})
    assert all(abs(t - merged["w"]) <= 1e-9 * merged["w"] for t in parts.values())


@given(st.lists(st.tuples(st.floats(0, 5), st.floats(0.01, 50), st.integers(1, 4)), min_size=1, max_size=12))
def test_work_is_conserved_and_never_beats_the_rate(jobs):
    out, unit = finish_times(10.0, float("inf"), {i: j for i, j in enumerate(jobs)})
    total = sum(a * w for _, a, w in jobs)
    assert abs(unit.served - total) < 1e-9 * total
    assert max(out.values()) >= total / 10.0 - 1e-9  # cannot serve faster than the rate
    assert abs(unit.busy_s * 10.0 - total) < 1e-6 * total  # busy time x rate = work


def test_l2_evicts_least_recent_and_writes_back_dirty():
    l2 = L2Cache(capacity_bytes=100)
    assert l2.insert("a", 40, "O", dirty=True) == []
    l2.insert("b", 40, "K", dirty=False)
    assert l2.lookup("a") is True  # a becomes most recent
    assert l2.insert("c", 40, "K", dirty=False) == []  # b (clean) is evicted, not a
    assert l2.lookup("b") is False
    assert l2.insert("d", 40, "K", dirty=False) == [("O", 40)]  # now a goes, dirty
    assert sorted(l2.flush()) == []
    assert l2.used_bytes == 0


@given(st.lists(st.tuples(st.sampled_from("OQK"), st.integers(1, 60), st.booleans()), min_size=1, max_size=40))
def test_dirty_by_tensor_is_what_was_written_and_not_yet_written_back(inserts):
    """Fast mode's extrapolation reads the dirty stock per tensor (memsim.engine.simulate._snapshot): every byte
    written is either written back or still dirty, tensor by tensor, and the stock sums to dirty_bytes."""
    l2 = L2Cache(capacity_bytes=200, dirty_limit_bytes=90)
    written, written_back = {}, {}
    for n, (tensor, nbytes, dirty) in enumerate(inserts):
        for t, b in l2.insert((tensor, n), nbytes, tensor, dirty=dirty):
            written_back[t] = written_back.get(t, 0) + b
        if dirty:
            written[tensor] = written.get(tensor, 0) + nbytes
    stock = l2.dirty_by_tensor()
    assert sum(stock.values()) == l2.dirty_bytes
    for tensor, nbytes in written.items():
        assert stock.get(tensor, 0) + written_back.get(tensor, 0) == nbytes


def test_inflight_fetch_is_returned_to_later_readers():
    env = simpy.Environment()
    l2 = L2Cache(1000)
    pending = env.event()
    assert l2.lookup("k") is False
    l2.start_fetch("k", pending)
    assert l2.lookup("k") is pending
    l2.finish_fetch("k", 10, "K")
    assert l2.lookup("k") is True


def reference_finish_times(rate, cap, jobs):
    """Processor sharing worked out directly, event by event, with no service clock and no timers."""
    pending = sorted((start, name) for name, (start, _, _) in jobs.items())
    left = {}
    now, out = 0.0, {}
    while pending or left:
        weight = sum(jobs[n][2] for n in left)
        per_weight = min(cap, rate / weight) if left else 0.0
        next_done = min((a / per_weight for a in left.values()), default=float("inf"))
        next_arrival = pending[0][0] - now if pending else float("inf")
        step = min(next_done, next_arrival)
        now += step
        for n in left:
            left[n] -= per_weight * step
        for n in [n for n, a in left.items() if a <= 1e-9 * jobs[n][1]]:
            out[n] = now
            del left[n]
        while pending and pending[0][0] <= now + 1e-15:
            _, n = pending.pop(0)
            left[n] = jobs[n][1]
    return out


@given(st.lists(st.tuples(st.floats(0, 5), st.floats(0.01, 50), st.integers(1, 4)), min_size=1, max_size=10),
       st.floats(0.5, 20.0))
def test_finish_times_match_processor_sharing_worked_out_directly(jobs, cap):
    """Arrivals re-arm the unit's timer only when they would finish first; a timer that fires early (an
    arrival slowed everyone) changes nothing: every finish time is the exact one."""
    named = {i: j for i, j in enumerate(jobs)}
    out, _ = finish_times(10.0, cap, named)
    want = reference_finish_times(10.0, cap, named)
    assert out.keys() == want.keys()
    assert all(abs(out[n] - want[n]) <= 1e-7 * max(1.0, want[n]) for n in want)
