"""The block scheduler: CTAs go to SMs in program-id order as slots free up.

Each CTA goes to the SM with the fewest CTAs resident (ties: the lower SM number): the first
wave fills SMs breadth first (CTA 0 on SM 0, CTA 1 on SM 1, ...), and CTAs dispatched as
slots free up take the freed slots, again breadth first when several free at once (as at the
end of a wave; a last partial wave then puts at most one CTA more on an SM than on any
other). In fast mode, consecutive CTAs of one work class dispatched at the same instant
become one cohort, split by the group of SMs its members land on (memsim.engine.sm_groups).
"""

from itertools import groupby

import simpy

from memsim.engine.cta import Cohort, Issue, batch_size, run_cohort
from memsim.engine.machine import Machine
from memsim.occupancy import Occupancy
from memsim.schedules.steps import Launch


def longest_loop(launch: Launch) -> int:
    """The launch's longest CTA loop, as the schedule declares it or as its first and last CTAs show."""
    if launch.loop_iterations is not None:
        return launch.loop_iterations
    loops = (launch.program(pid).loop for pid in {0, launch.grid - 1})
    return max((loop.iterations for loop in loops if loop is not None), default=0)


def breadth_first(free_slots: list[int], slots_on_sm: list[int]) -> list[int]:
    """The free slots in the order CTAs take them: each to the SM with the fewest CTAs resident."""
    sm_count = len(slots_on_sm)
    free_on_sm = [0] * sm_count
    for slot in free_slots:
        free_on_sm[slot % sm_count] += 1
    rank, keyed = [0] * sm_count, []
    for slot in sorted(free_slots):
        sm = slot % sm_count
        keyed.append((slots_on_sm[sm] - free_on_sm[sm] + rank[sm], sm, slot))  # residents once it is taken
        rank[sm] += 1
    return [slot for *_, slot in sorted(keyed)]


def run_launch(m: Machine, launch: Launch, occ: Occupancy, fast: bool, cohorts_out: list,
               batch: int | None = None, on_finish=None, cutoff=None, on_dispatch=None):
    """A SimPy process that runs every CTA of `launch` and ends when the last one does.
    `batch`: loop iterations simulated as one (default: from the launch itself);
    `on_finish(cohort)` is called as each cohort ends and `on_dispatch(position, count)` before CTAs
    [position, position + count) are dispatched; `cutoff` (memsim.engine.extrapolate.Cutoff), if
    given, may lower the CTAs dispatched while the launch runs, and is told how many have been."""
    env = m.env
    free = simpy.Store(env)
    # Breadth first: one CTA on every SM before a second on any. occ.slots already holds a persistent
    # grid's cap on resident CTAs (memsim.engine.simulate.resident).
    sm_count = m.gpu.sm_count
    slots_on_sm = [0] * sm_count
    for slot in range(occ.slots):  # slot s is on SM s % sm_count
        free.put(slot)
        slots_on_sm[slot % sm_count] += 1
    order = launch.order or (lambda i: i)
    running: list[simpy.Process] = []
    position = 0
    if batch is None:
        batch = batch_size(longest_loop(launch), fast, occ.waves, launch.grid)
    issue = None if launch.loop_instructions is None else Issue(launch.loop_instructions, launch.warps_per_cta)

    def finish(cohort: Cohort, process: simpy.Process):
        yield process
        m.sm_groups.leave(cohort.group, cohort.weight)
        if on_finish is not None:
            on_finish(cohort)
        for slot in cohort.slots:
            free.put(slot)

    def limit() -> int:
        return launch.grid if cutoff is None else cutoff.limit

    while position < limit():
        first = yield free.get()
        yield env.timeout(0)  # let every CTA ending at this instant hand back its slot
        slots = breadth_first([first] + list(free.items), slots_on_sm)
        free.items.clear()
        if on_dispatch is not None:
            on_dispatch(position, min(limit() - position, len(slots)))
        pids = [order(i) for i in range(position, min(limit(), position + len(slots)))]
        position += len(pids)
        if cutoff is not None:
            cutoff.dispatched = position
        for slot in slots[len(pids):]:
            free.put(slot)
        classes, start = [], 0
        for _, group in groupby(pids, key=launch.work_class if fast else (lambda pid: pid)):
            members = list(group)
            classes.append((members, slots[start:start + len(members)]))
            start += len(members)
        for (members, member_slots), parts in zip(classes, m.sm_groups.place([s for _, s in classes])):
            for indices, sm_group in parts:
                cohort_pids = tuple(members[i] for i in indices)
                cohort = Cohort(pids=cohort_pids, program=launch.program(cohort_pids[0]),
                                slots=[member_slots[i] for i in indices], sm_count=m.gpu.sm_count, group=sm_group)
                process = env.process(run_cohort(m, cohort, launch.num_stages, lambda n: batch, issue))
                cohorts_out.append(cohort)
                running.append(env.process(finish(cohort, process)))
    yield env.all_of(running)
    # Dirty lines evicted during the launch go to HBM beside its loads, and a line's eviction is done before the
    # line takes new data: the launch is over once the write-backs it caused (and its spills into L2, which its
    # warps did not wait for) are served.
    yield env.all_of([m.units["hbm"].idle(), m.units["l2"].idle()])
