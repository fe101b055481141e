"""The SM pipes shared by resident CTAs: dominant-resource fair sharing with chain limits."""

import math

import simpy
from hypothesis import given, settings, strategies as st

from memsim.engine.sharing import SharedPipes

PIPES = ("a", "b")


def finish_times(jobs: dict) -> tuple[dict, SharedPipes, float]:
    """jobs: name -> (start s, {pipe: seconds}, chain s, weight)."""
    env = simpy.Environment()
    pipes = SharedPipes(env, PIPES, trace=True)
    out = {}

    def job(name, start, demand, chain, weight):
        yield env.timeout(start)
        yield pipes.use(demand, chain, weight)
        out[name] = env.now

    for name, spec in jobs.items():
        env.process(job(name, *spec))
    env.run()
    return out, pipes, env.now


def test_one_pipe_is_processor_sharing():
    # x and y share pipe a; z arrives at 0.5 s and takes a third until it is done at 2.0 s.
    out, pipes, _ = finish_times({"x": (0, {"a": 1.0}, 0, 1), "y": (0, {"a": 1.0}, 0, 1),
                                  "z": (0.5, {"a": 0.5}, 0, 1)})
    assert out == {"x": 2.5, "y": 2.5, "z": 2.0}
    assert pipes.busy_s["a"] == 2.5 and pipes.busy_s["b"] == 0.0


def test_a_lone_request_takes_its_chain():
    out, pipes, _ = finish_times({"x": (0, {"a": 1.0, "b": 1.0}, 2.0, 1)})
    assert out["x"] == 2.0 and pipes.busy_s == {"a": 1.0, "b": 1.0}  # each pipe half busy for 2 s


def test_requests_on_different_pipes_overlap():
    # one CTA's matmul and another's softmax run side by side, each as if alone
    out, _, _ = finish_times({"x": (0, {"a": 1.0}, 1.0, 1), "y": (0, {"b": 1.0}, 1.0, 1)})
    assert out == {"x": 1.0, "y": 1.0}


def test_identical_chains_are_bound_by_the_busier_pipe_or_the_chain():
    # each needs 1 s on a and 0.5 s on b, one after the other (chain 1.5 s): n of them take max(1.5, n x 1)
    for n in (1, 2, 3):
        out, _, end = finish_times({i: (0, {"a": 1.0, "b": 0.5}, 1.5, 1) for i in range(n)})
        assert math.isclose(end, max(1.5, n * 1.0))


def test_a_capped_request_leaves_the_rest_to_others():
    # x may use at most half of pipe a (chain 2 s for 1 s of work); y takes the other half, then all
    out, _, _ = finish_times({"x": (0, {"a": 1.0}, 2.0, 1), "y": (0, {"a": 1.5}, 0, 1)})
    assert math.isclose(out["x"], 2.0) and math.isclose(out["y"], 2.5)


def reference_finish_times(jobs: dict) -> dict:
    """Progressive filling worked out request by request, with no classes, clocks or timers."""
    pending = sorted((spec[0], name) for name, spec in jobs.items())
    left: dict = {}  # name -> remaining dominant seconds
    now, out = 0.0, {}
    while pending or left:
        rate = {}
        used = dict.fromkeys(PIPES, 0.0)
        rising = set(left)
        while rising:
            def scale(n):
                return max(jobs[n][1].values())
            cap = {n: scale(n) / jobs[n][2] if jobs[n][2] > 0 else math.inf for n in rising}
            level, full = min(cap.values()), None
            for p in PIPES:
                demand = sum(jobs[n][3] * jobs[n][1].get(p, 0.0) / scale(n) for n in rising)
                if demand > 0 and (1 - used[p]) / demand < level:
                    level, full = (1 - used[p]) / demand, p
            frozen = ({n for n in rising if cap[n] <= level} if full is None
                      else {n for n in rising if jobs[n][1].get(full, 0.0) > 0})
            for n in frozen:
                rate[n] = min(level, cap[n])
                for p in PIPES:
                    used[p] += jobs[n][3] * rate[n] * jobs[n][1].get(p, 0.0) / scale(n)
            rising -= frozen
        next_done = min((left[n] / rate[n] for n in left), default=math.inf)
        next_arrival = pending[0][0] - now if pending else math.inf
        step = min(next_done, next_arrival)
        now += step
        for n in left:
            left[n] -= rate[n] * step
        for n in [n for n, a in left.items() if a <= 1e-9 * max(jobs[n][1].values())]:
            out[n] = now
            del left[n]
        while pending and pending[0][0] <= now + 1e-15:
            _, n = pending.pop(0)
            left[n] = max(jobs[n][1].values())
    return out


demands = st.fixed_dictionaries({}, optional={"a": st.floats(0.01, 5.0), "b": st.floats(0.01, 5.0)}).filter(bool)
job = st.tuples(st.floats(0, 4), demands, st.floats(0, 8), st.integers(1, 3))


@settings(deadline=None)
@given(st.lists(job, min_size=1, max_size=8))
def test_finish_times_match_progressive_filling_worked_out_directly(jobs):
    named = {i: j for i, j in enumerate(jobs)}
    out, _, _ = finish_times(named)
    want = reference_finish_times(named)
    assert out.keys() == want.keys()
    assert all(abs(out[n] - want[n]) <= 1e-6 * max(1.0, want[n]) for n in want)


@settings(deadline=None)
@given(st.lists(job, min_size=1, max_size=8))
def test_work_is_conserved_no_pipe_is_overused_and_no_chain_is_beaten(jobs):
    named = {i: j for i, j in enumerate(jobs)}
    out, pipes, end = finish_times(named)
    for p in PIPES:
        work = sum(w * d.get(p, 0.0) for _, d, _, w in jobs)
        assert math.isclose(pipes.served[p], work, rel_tol=1e-9, abs_tol=1e-12)
        assert math.isclose(pipes.busy_s[p], work, rel_tol=1e-6, abs_tol=1e-9)  # capacity 1: busy time = work
        assert end >= work - 1e-9
        assert sum(b - a for a, b in pipes.busy_intervals[p]) >= pipes.busy_s[p] - 1e-9
    for n, (start, demand, chain, _) in named.items():
        assert out[n] >= start + max(chain, *demand.values()) - 1e-9


@settings(deadline=None)
@given(st.integers(1, 6), demands, st.floats(0, 8))
def test_a_weighted_request_finishes_with_its_equal_parts(weight, demand, chain):
    merged, _, _ = finish_times({"w": (0, demand, chain, weight)})
    parts, _, _ = finish_times({i: (0, demand, chain, 1) for i in range(weight)})
    assert all(math.isclose(t, merged["w"], rel_tol=1e-9) for t in parts.values())


@settings(deadline=None)
@given(st.integers(1, 6), demands, st.floats(0, 8), st.floats(0.05, 2.0))
def test_a_lone_class_gets_the_same_rate_as_the_rounds_give_it(weight, demand, chain, capacity):
    # _fill_alone is the shortcut for one active class; _fill's rounds must agree with it to the bit
    pipes = SharedPipes(simpy.Environment(), PIPES, capacity=capacity)
    pipes.use(demand, chain, weight)
    (cls,) = pipes._active
    alone = pipes._fill_alone(), cls.rate
    assert (pipes._fill(), cls.rate) == alone
    assert 0 < cls.rate <= cls.cap
