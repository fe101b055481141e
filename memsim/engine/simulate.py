"""Run a list of kernel launches through the discrete-event model; results per launch."""

import dataclasses
from dataclasses import dataclass
from math import ceil

import simpy

from memsim.engine import compiled as engine_compiled
from memsim.engine import extrapolate
from memsim.engine.cta import batch_size
from memsim.engine.dispatch import longest_loop, run_launch
from memsim.engine.machine import BYTE_KEYS, SCALAR_KEYS, Machine
from memsim.hardware.spec import Ceilings, GPUSpec
from memsim.occupancy import Occupancy, occupancy
from memsim.schedules.steps import Launch, ordered_atomic_rounds


@dataclass
class LaunchResult:
    launch: Launch
    occupancy: Occupancy
    start_s: float
    end_s: float
    counters: "object"  # memsim.engine.machine.Counters of this launch alone
    busy_s: dict  # unit -> seconds of full utilisation during the launch
    cohorts: list
    unit_intervals: dict  # unit -> [(start, end)] when tracing
    extrapolated_ctas: int = 0  # CTAs added at the steady rate instead of simulated (memsim.engine.extrapolate)
    ordered_atomic_wait_s: float = 0.0  # each CTA's wait for its threads' ordered atomics (memsim.engine.cta)
    pooled_joins: int = 0  # cohorts whose SM group's pipes were pooled over unlike SMs (memsim.engine.sm_groups)

    @property
    def latency_s(self) -> float:
        return self.end_s - self.start_s

    def utilisation(self) -> dict:
        span = self.latency_s or 1.0
        return {unit: busy / span for unit, busy in self.busy_s.items()}


def simulate(gpu: GPUSpec, ceilings: Ceilings, launches: list[Launch], fast: bool = True,
             trace: bool = False, progress=None, compiled: bool | None = None) -> list[LaunchResult]:
    """Each launch starts with a cold L2 (as under ncu) after one launch overhead.
    `progress(ctas_done, ctas_total)`, if given, is called as CTAs finish (over all launches).
    `compiled`: run on the compiled engine (memsim.engine.compiled: the same model, event for event), or on SimPy;
    None: compiled where it is built, except when tracing (only the SimPy engine traces)."""
    if compiled is None:
        compiled = engine_compiled.available() and not trace
    elif compiled and (trace or not engine_compiled.available()):
        raise ValueError("the compiled engine " + ("does not trace" if trace else "is not built (pip install -e .)"))
    results = []
    clock_s = 0.0
    total = sum(launch.grid for launch in launches)
    counted = Progress(progress, total)
    for launch in launches:
        occ = resident(launch, occupancy(gpu, launch.smem_bytes_per_cta, launch.warps_per_cta,
                                         launch.registers_per_thread, launch.grid, launch.name))
        batch = batch_size(longest_loop(launch), fast, occ.waves, launch.grid)
        cutoff = None
        if fast and not trace and extrapolate.watched(launch, occ.slots):
            cutoff = extrapolate.Cutoff(launch, occ.slots, ceilings.l2_dirty_lifetime_bytes)
        if compiled:
            result = engine_compiled.run(gpu, ceilings, launch, occ, fast, batch, clock_s, counted, cutoff)
        else:
            result = _run(gpu, ceilings, launch, occ, fast, batch, trace, clock_s, counted=counted, cutoff=cutoff)
        result.ordered_atomic_wait_s = ordered_atomic_rounds(launch) * ceilings.ordered_atomic_latency_s
        if cutoff is not None and cutoff.settled:
            result = _extended(result, cutoff)
        counted.launch_done(launch.grid)
        results.append(result)
        clock_s = result.end_s
    return results


def resident(launch: Launch, occ: Occupancy) -> Occupancy:
    """The launch's occupancy with at most launch.resident_ctas CTAs resident (a dynamic persistent grid)."""
    cap = launch.resident_ctas
    if cap is None or cap >= occ.slots:
        return occ
    return dataclasses.replace(occ, slots=cap, waves=ceil(launch.grid / cap), limiter="persistent grid")


class Progress:
    """CTAs finished over a list of launches, reported to a callback (or to nobody)."""

    def __init__(self, callback, total: int):
        self.callback, self.total, self.before = callback, total, 0  # CTAs of the launches already done

    def ctas_done(self, in_launch: int) -> None:
        if self.callback is not None:
            self.callback(min(self.total, self.before + in_launch), self.total)

    def launch_done(self, grid: int) -> None:
        self.before += grid
        self.ctas_done(0)


def _run(gpu, ceilings, launch, occ, fast, batch, trace, clock_s, counted=None, cutoff=None) -> LaunchResult:
    """Simulate one launch; with a `cutoff`, it sees the machine each time CTAs finish (or, for a launch whose
    CTAs differ, each time a unit starts) until it settles."""
    env = simpy.Environment(initial_time=clock_s + ceilings.launch_overhead_s)
    m = Machine(env, gpu, ceilings, trace=trace)
    cohorts: list = []
    done = [0]

    def on_finish(cohort):
        done[0] += cohort.weight
        if cutoff is not None and not cutoff.settled and not cutoff.by_dispatch:
            cutoff.watch(_snapshot(m, done[0]))
        if counted is not None:
            counted.ctas_done(done[0])

    def on_dispatch(position, count):
        cutoff.dispatching(position, count, lambda ctas: _snapshot(m, ctas))

    start = env.now
    env.run(env.process(run_launch(m, launch, occ, fast, cohorts, batch, on_finish, cutoff,
                                   on_dispatch=None if cutoff is None else on_dispatch)))
    end = env.now
    m.counters.flush(m.l2.flush())  # the next kernel starts cold, as under ncu
    return LaunchResult(
        launch=launch, occupancy=occ, start_s=start - ceilings.launch_overhead_s, end_s=end,
        counters=m.counters, busy_s=m.busy_s(), cohorts=cohorts, unit_intervals=m.busy_intervals(),
        pooled_joins=m.sm_groups.pooled_joins,
    )


def _snapshot(m: Machine, done_ctas: int) -> extrapolate.Snapshot:
    c = m.counters
    flat = extrapolate.counters_seen({group: getattr(c, group).items() for group in BYTE_KEYS},
                                     m.l2.dirty_by_tensor().items(), {name: getattr(c, name) for name in SCALAR_KEYS})
    return extrapolate.Snapshot(done_ctas, m.env.now, flat, m.busy_s(), m.l2.filled_bytes)


def _extended(result: LaunchResult, cutoff: extrapolate.Cutoff) -> LaunchResult:
    """The launch as if the CTAs it never dispatched had run at its steady rate."""
    rate, extra = cutoff.rate, cutoff.grid - cutoff.limit
    c = result.counters
    for (group, key), per_cta in rate.counters.items():
        if group == "scalar":
            setattr(c, key, getattr(c, key) + extra * per_cta)
        else:
            getattr(c, group)[key] += extra * per_cta
    busy = {u: result.busy_s[u] + extra * rate.busy_s[u] for u in result.busy_s}
    return dataclasses.replace(result, end_s=result.end_s + extra * rate.time_s, counters=c, busy_s=busy,
                               extrapolated_ctas=extra)
