"""Per-SM pipes: SMs kept in groups of identical residents (memsim.engine.sm_groups), and the block
scheduler's breadth-first choice of slots (memsim.engine.dispatch.breadth_first)."""

import simpy
from hypothesis import assume, given, settings, strategies as st

from memsim import AttentionShape, TileConfig
from memsim.algorithms import ALGORITHMS
from memsim.engine import simulate
from memsim.engine.dispatch import breadth_first
from memsim.engine.machine import PIPES
from memsim.engine.sm_groups import SmGroups
from memsim.errors import MemsimError
from memsim.hardware import load_gpu

from checks import attention_shapes

H100 = load_gpu("H100-SXM5-80GB")
SMS = 4


def groups(trace: bool = False) -> SmGroups:
    return SmGroups(simpy.Environment(), PIPES, SMS, trace=trace)


def test_a_wave_on_idle_sms_is_one_group_with_every_sm():
    g = groups()
    (parts,) = g.place([list(range(2 * SMS))])  # two CTAs on each SM
    assert len(parts) == 1
    indices, group = parts[0]
    assert sorted(indices) == list(range(2 * SMS))
    assert group.sms == frozenset(range(SMS)) and group.pipes.capacity == 1.0 and group.residents == 2 * SMS


def test_a_partial_last_wave_splits_into_sms_with_two_and_sms_with_one():
    g = groups()
    (parts,) = g.place([list(range(SMS + 1))])  # slots 0..4: SM 0 holds two, SMs 1..3 one each
    by_sms = {group.sms: sorted(indices) for indices, group in parts}
    assert by_sms == {frozenset({0}): [0, SMS], frozenset({1, 2, 3}): [1, 2, 3]}
    assert {group.sms: group.pipes.capacity for _, group in parts} == {frozenset({0}): 0.25,
                                                                        frozenset({1, 2, 3}): 0.75}


def test_cohorts_of_one_dispatch_are_split_by_what_their_sms_hold():
    g = groups()
    a, b = g.place([[0, 1, 2], [3, 4, 5, 6, 7]])  # A on SMs 0-2; B on SM 3 (first slot) and SMs 0-3 (second)
    assert {grp.sms for _, grp in a} == {frozenset({0, 1, 2})}
    b_groups = {grp.sms: sorted(idx) for idx, grp in b}
    assert b_groups == {frozenset({0, 1, 2}): [1, 2, 3], frozenset({3}): [0, 4]}
    assert a[0][1] is next(grp for _, grp in b if grp.sms == frozenset({0, 1, 2}))  # A and B share those SMs' pipes
    assert g.pooled_joins == 0


def test_joining_a_busy_group_whole_is_exact_and_in_part_is_counted():
    g = groups()
    ((_, group),), = g.place([[0, 1, 2, 3]])
    ((_, joined),), = g.place([[4, 5, 6, 7]])  # a second CTA on every SM of the group
    assert joined is group and g.pooled_joins == 0
    ((_, joined),), = g.place([[8, 9]])  # a third on SMs 0 and 1 only
    assert joined is group and g.pooled_joins == 1
    assert group.residents == 10


def test_a_group_whose_residents_leave_is_dissolved_and_its_busy_time_kept():
    env = simpy.Environment()
    g = SmGroups(env, PIPES, SMS, trace=True)
    ((_, group),), = g.place([[0, 1]])  # SMs 0 and 1: half the GPU
    done = group.pipes.use({"tensor": 0.5}, chain_s=0.0, weight=2)  # 0.5 GPU-s each, 1 GPU-s in all
    env.run(done)
    assert env.now == 2.0  # 1 GPU-second of work on half the GPU's tensor cores
    g.leave(group, 2)
    assert g.busy_until_now("tensor") == 1.0
    assert g.busy_intervals()["tensor"] == [(0.0, 2.0)]
    ((_, fresh),), = g.place([[0]])
    assert fresh is not group and fresh.sms == frozenset({0})


def test_groups_on_disjoint_sms_do_not_share_pipes():
    """The per-SM point: a CTA alone on its SM is not slowed by a crowded SM elsewhere."""
    env = simpy.Environment()
    g = SmGroups(env, PIPES, SMS)
    (parts,) = g.place([[0, 1, 2, 3, 4]])  # SM 0 holds two CTAs, SMs 1-3 one each
    ends = {}
    for indices, group in parts:
        event = group.pipes.use({"tensor": 1.0 / SMS}, chain_s=1.0, weight=len(indices))  # one SM-second each
        event.callbacks.append(lambda _e, sms=group.sms: ends.__setitem__(sms, env.now))
    env.run()
    assert ends == {frozenset({0}): 2.0, frozenset({1, 2, 3}): 1.0}


@given(st.integers(1, 6), st.integers(1, 4), st.data())
def test_breadth_first_gives_each_cta_the_sm_with_the_fewest_residents(sm_count, per_sm, data):
    slots = sm_count * per_sm
    free = data.draw(st.lists(st.integers(0, slots - 1), min_size=1, unique=True))
    residents = [per_sm] * sm_count
    for slot in free:
        residents[slot % sm_count] -= 1
    order = breadth_first(free, [per_sm] * sm_count)
    assert sorted(order) == sorted(free)
    left = list(order)
    for slot in order:
        sm = slot % sm_count
        candidates = {s % sm_count for s in left}
        assert residents[sm] == min(residents[c] for c in candidates)
        residents[sm] += 1
        left.remove(slot)


FAITHFUL_CASES = settings(max_examples=10, deadline=None)


@FAITHFUL_CASES
@given(st.sampled_from(sorted(n for n, a in ALGORITHMS.items() if a.schedule is not None)).flatmap(
    lambda name: st.tuples(st.just(name), attention_shapes(
        ALGORITHMS[name], kv_heads=(1, 2), groups=(1, 2), kv_len=(16, 1024), q_len=(1, 512), batch=(1, 2),
        head_dims=(64,), dtypes=("fp16",)))))
def test_faithful_mode_gives_every_cta_its_own_sms_pipes(case):
    """One CTA per cohort: its group is its SM, never pipes pooled over unlike SMs, whatever the algorithm. (The SimPy
    engine's groups: the compiled engine's are held to them by tests/test_engine_compiled.py.)"""
    name, shape = case
    alg = ALGORITHMS[name]
    try:
        launches = alg.schedule(shape, TileConfig(), "fwd")
    except MemsimError:  # a default tile this algorithm refuses for the shape
        assume(False)
    for r in simulate(H100, H100.ceilings(), launches, fast=False, compiled=False):
        assert r.pooled_joins == 0, (name, r.launch.name)
        assert all(len(cohort.group.sms) == 1 for cohort in r.cohorts), (name, r.launch.name)


def test_a_uniform_launch_in_fast_mode_never_pools():
    """FA2's forward of one head without a mask: a whole wave of one cohort, then a partial one split by
    CTAs per SM."""
    shape = AttentionShape(batch=1, q_heads=1, q_len=65536, head_dim=64)
    (r,) = simulate(H100, H100.ceilings(), ALGORITHMS["flash2"].schedule(shape, TileConfig(), "fwd"), fast=True)
    assert r.occupancy.waves > 1 and r.launch.grid % r.occupancy.slots
    assert r.pooled_joins == 0
    assert len(r.cohorts) < r.launch.grid / 10
