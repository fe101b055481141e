"""merge_steps: iterations merged into one request keep every amount and every tile."""

import pytest
from hypothesis import given, strategies as st

from memsim.engine.cta import merge_steps
from memsim.schedules.steps import Load, Mma, SmemRoundTrip, Spill, Vector

amounts = st.floats(min_value=1.0, max_value=1e9, allow_nan=False)
steps = st.one_of(
    st.builds(Mma, amounts, st.just("bf16")),
    st.builds(Vector, amounts, amounts),
    st.builds(SmemRoundTrip, amounts),
    st.builds(Spill, st.integers(0, 3), amounts),
)
iteration = st.lists(steps, min_size=1, max_size=5).map(tuple)


def _totals(sequence) -> dict:
    out = {"flops": 0.0, "cuda": 0.0, "exp": 0.0, "smem": 0.0, "spill": 0.0, "spills": 0}
    for s in sequence:
        if isinstance(s, Mma):
            out["flops"] += s.flops
        elif isinstance(s, Vector):
            out["cuda"] += s.cuda_ops
            out["exp"] += s.exp_ops
        elif isinstance(s, SmemRoundTrip):
            out["smem"] += s.bytes
        else:
            out["spill"] += s.bytes
            out["spills"] += 1
    return out


def _close(a: dict, b: dict) -> bool:
    return all(abs(a[k] - b[k]) <= 1e-9 * max(abs(a[k]), abs(b[k]), 1.0) for k in a)


@given(iteration, st.integers(1, 64))
def test_equal_iterations_merge_into_n_times_the_steps(steps_of_one, n):
    merged, repeats = merge_steps([steps_of_one] * n)
    assert repeats == n
    assert _close(_totals(merged), _totals(steps_of_one * n))
    compute = [s for s in merged if not isinstance(s, Spill)]
    assert len(compute) == sum(not isinstance(s, Spill) for s in steps_of_one)  # one request per position


@given(st.lists(iteration, min_size=1, max_size=8))
def test_any_iterations_keep_their_amounts(iterations):
    merged, repeats = merge_steps(iterations)
    assert _close(_totals(merged), _totals([s for it in iterations for s in it]))
    assert repeats in (1, len(iterations))


def test_loads_are_not_merged():
    load = Load("K", (0, 0), 3, 1024.0)
    merged, _ = merge_steps([(load, Mma(10.0, "bf16"))] * 3)
    assert merged.count(load) == 3


def test_a_streamed_loop_gives_its_streams_and_runs_as_loads_and_compute():
    from memsim.schedules.steps import Load, Mma, Stream, streamed_loop

    plain, masked = (Mma(1.0, "bf16"),), (Mma(2.0, "bf16"),)
    loop = streamed_loop(5, (Stream("K", (0, 1), 7, -1, 64.0, 3, 16.0), Stream("Q", None, 0, 0, 8.0)),
                         ((0, plain), (3, masked)))
    assert [loop.loads(i) for i in range(5)] == [
        (Load("K", (0, 1), 7 - i, 16.0 if 7 - i == 3 else 64.0), Load("Q", None, 0, 8.0)) for i in range(5)]
    assert [loop.compute(i) for i in range(5)] == [plain] * 3 + [masked] * 2


@pytest.mark.parametrize("runs", [((1, ()),), ((0, ()), (0, ())), ()])
def test_a_streamed_loop_needs_runs_from_iteration_0_rising(runs):
    from memsim.schedules.steps import streamed_loop

    with pytest.raises(ValueError, match="runs must start at iteration 0"):
        streamed_loop(4, (), runs)
