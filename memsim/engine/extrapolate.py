"""Fast mode for long launches: simulate until the launch runs at a steady rate, stop dispatching at
the next whole unit, let it drain, and add the CTAs never dispatched at that rate.

A launch of G CTAs made of repeating units (`Launch.repeat_unit` consecutive CTAs doing the same
work on their own data, e.g. the q-blocks of one kv head) fills the GPU, runs at a steady rate,
then drains. Ended after G' < G CTAs (whole units), it fills and drains the same way; only its
steady middle is shorter. memsim runs the launch and watches it as CTAs finish (a launch whose CTAs
differ, as each time a unit starts: Cutoff says why): over two
consecutive windows of whole units (at least STEADY_WAVES waves each), after the first WARM_WAVES
waves and after the L2 has taken in a dirty lifetime's worth of data (before that the write-backs
of the first outputs have not started: their rate is not steady yet), it compares the time and
every counter per CTA, window against window. Once the time agrees within STEADY_TOLERANCE and
every counter within COUNTER_TOLERANCE, dispatch stops at the end of the unit being dispatched;
the launch drains as the full one would, and the G - G' missing CTAs are added at the rate of the
two windows. A launch that never settles is simulated in full, with no time lost. HBM writes are watched as
bytes written back or still dirty in L2 (memsim.engine.simulate._snapshot): write-backs come in bursts, that
sum grows smoothly, and in the steady state every dirty byte reaches HBM.

Only launches of at least MIN_WAVES waves in program-id order are watched (shorter ones have
little middle to skip). The error is that of the rate: two windows that agree within the
tolerances, scaled by the CTAs skipped (`tests/test_engine_extrapolate.py` checks shapes of 31
to 248 waves against the full simulation).
"""

from bisect import bisect_left
from dataclasses import dataclass
from math import ceil, lcm

from memsim.schedules.steps import Launch

MIN_WAVES = 8
WARM_WAVES = 2  # waves finished before the first window may start
STEADY_WAVES = 2  # the least length of each window
STEADY_TOLERANCE = 0.005  # time per CTA, window against window
COUNTER_TOLERANCE = 0.01  # every counter per CTA, window against window
LONG_WAVES = 64  # from here a partial last wave is at most 1/64 of the time: any whole unit may end dispatch
MIN_SKIPPED = 0.25  # the least share of the launch worth skipping: later, it runs to its end
SLIDES_BEFORE_DOUBLING = 1  # window pairs tried a step later, when only a counter disagrees, before it doubles


@dataclass
class Snapshot:
    done_ctas: int
    time_s: float
    counters: dict  # (group, key) -> value
    busy_s: dict
    filled_bytes: float = 0.0  # bytes the L2 has taken in so far (memsim.engine.l2cache.L2Cache.filled_bytes)


def counters_seen(by_group: dict, dirty, scalars: dict) -> dict:
    """A snapshot's counters, (group, key) -> value: each byte group's (tensor, bytes) in the order given, HBM writes
    with the bytes still dirty in L2 (`dirty`: (tensor, bytes)) added, and the scalars under "scalar".
    Write-backs come in bursts (a head's outputs age out together), so the bytes written back per CTA wander from
    window to window; what has been written back or is still dirty grows smoothly, and in the steady state every
    dirty byte reaches HBM in the end: that is the rate at which skipped CTAs write back."""
    flat = {(group, tensor): value for group, items in by_group.items() for tensor, value in items}
    for tensor, nbytes in dirty:
        flat[("hbm_write", tensor)] = flat.get(("hbm_write", tensor), 0.0) + nbytes
    flat.update({("scalar", name): value for name, value in scalars.items()})
    return flat


def watched(launch: Launch, slots: int) -> bool:
    """Whether fast mode may end this launch early and extrapolate it."""
    unit = launch.repeat_unit
    return bool(unit) and launch.order is None and launch.grid % unit == 0 and launch.grid >= MIN_WAVES * slots


def lockstep(launch: Launch) -> bool:
    """Whether the CTAs of a unit all do the same work (as their loops' lengths show): started
    together, they then finish together."""
    lengths = {_loop_length(launch.program(pid)) for pid in range(launch.repeat_unit)}
    return len(lengths) == 1


def _loop_length(program) -> int:
    return program.loop.iterations if program.loop is not None else 0


class Cutoff:
    """Ends a launch's dispatch once it runs at a steady rate. `limit` is the CTA count to dispatch;
    `rate` is the steady time, counters and busy seconds per CTA once found.

    In a lock-step launch (every CTA of a unit does the same work: CTAs started together finish
    together) windows start and end on whole waves and slide a wave at a time, seen as CTAs finish. In one
    whose CTAs differ (causal: each q-block sees its own share of the keys) nothing finishes in waves, and
    the CTAs finished at any instant are a changing mix of light and heavy ones, so counters per finished
    CTA wander by a few percent however long the windows. There the machine is seen as each unit starts to
    be dispatched (`dispatching`): in the steady state the machine then holds the same mix of CTAs at the
    same points of their work every time, so what it did between two unit starts is exactly the work of the
    units between them. Windows are whole units and slide a unit at a time. Either
    holds at least STEADY_WAVES waves and one unit. A window over which the time agrees but a counter
    does not may straddle a burst (K/V of a new head every unit, write-backs in bursts): the pair is tried
    again a step later, SLIDES_BEFORE_DOUBLING times, and if the counter still disagrees the window is too
    short for its period: it doubles. (B=4 H=16/4 N=8192 d=128 causal, 64 x 32: its 3-unit windows first
    disagreed by 1/64 of a head's K/V reads; doubled at once, they agreed only after 7,680 of 8,192 CTAs.)"""

    def __init__(self, launch: Launch, slots: int, lifetime_bytes: float | None):
        self.grid, self.unit, self.slots = launch.grid, launch.repeat_unit, slots
        self.lockstep = lockstep(launch)
        self.step = slots if self.lockstep else self.unit  # windows are multiples of this many CTAs
        self.window = ceil(max(STEADY_WAVES * slots, self.unit) / self.step) * self.step  # CTAs per window
        self.start = ceil(WARM_WAVES * slots / self.step) * self.step  # where the first window starts
        self.lifetime_bytes = lifetime_bytes or 0.0
        self.limit = launch.grid
        self.dispatched = 0  # CTAs handed out so far (memsim.engine.dispatch.run_launch keeps it)
        self.rate: Snapshot | None = None
        self.snapshots: list[Snapshot] = []
        self.slides = 0  # steps slid since the window last doubled
        self.by_dispatch = not self.lockstep  # seen at unit starts (dispatching), else as CTAs finish (watch)

    @property
    def settled(self) -> bool:
        return self.rate is not None

    def dispatching(self, position: int, count: int, snapshot) -> None:
        """Called before CTAs [position, position + count) are dispatched: when they start a unit, the machine
        now (`snapshot(ctas)`, keyed by the CTAs dispatched before that unit) is watched. Dispatch then goes on
        up to `limit`, which a settled rate may just have lowered to this unit's start."""
        if not self.by_dispatch or self.settled:
            return
        boundary = -(-position // self.unit) * self.unit
        if boundary < position + count:
            self.dispatched = position
            self.watch(snapshot(boundary))

    def watch(self, snapshot: Snapshot) -> None:
        """Called with each snapshot (as CTAs finish, or as units start: `dispatching`): tries every window pair
        that has ended, sliding a step at a time."""
        self.snapshots.append(snapshot)
        while self.rate is None and snapshot.done_ctas >= self.start + 2 * self.window:
            a, b, c = (_first_reaching(self.snapshots, self.start + k * self.window) for k in range(3))
            if a.filled_bytes < self.lifetime_bytes:
                self.start += self.step
                continue
            rate, why = steady_rate(a, b, c)
            if rate is not None:
                stop = self._stop()
                if stop is not None:
                    self.rate, self.limit = rate, stop
                else:
                    self.start = self.grid  # too late to save enough: watch no more
                return
            if why == "counters" and self.slides >= SLIDES_BEFORE_DOUBLING:
                self.window *= 2
                self.slides = 0
            else:
                self.slides += why == "counters"
                self.start += self.step

    def _stop(self) -> int | None:
        """Where dispatch ends: the next whole unit. In a lock-step launch of fewer than LONG_WAVES waves,
        also whole waves before the launch's end, so that the shortened launch drains through the same
        partial last wave as the full one (a last wave of a few CTAs takes as long as a full one). None
        when that would skip less than MIN_SKIPPED of the launch."""
        first = ceil(self.dispatched / self.unit) * self.unit
        if not self.lockstep or self.grid >= LONG_WAVES * self.slots:
            stop = first
        else:
            period = lcm(self.unit, self.slots)
            stop = self.grid - (self.grid - first) // period * period
        return stop if self.grid - stop >= MIN_SKIPPED * self.grid else None


def steady_rate(a: Snapshot, b: Snapshot, c: Snapshot) -> tuple[Snapshot | None, str]:
    """(time, counters and busy seconds per CTA from a to c, "") if the windows a-b and b-c agree, else
    (None, what disagreed: "time" or "counters")."""
    if not (a.done_ctas < b.done_ctas < c.done_ctas):
        return None, "time"
    first, second = b.done_ctas - a.done_ctas, c.done_ctas - b.done_ctas
    rate_1, rate_2 = (b.time_s - a.time_s) / first, (c.time_s - b.time_s) / second
    if rate_1 <= 0 or abs(rate_1 - rate_2) > STEADY_TOLERANCE * rate_2:
        return None, "time"
    for key, value in c.counters.items():
        per_1 = (b.counters.get(key, 0.0) - a.counters.get(key, 0.0)) / first
        per_2 = (value - b.counters.get(key, 0.0)) / second
        if abs(per_1 - per_2) > COUNTER_TOLERANCE * max(abs(per_1), abs(per_2)):
            return None, "counters"
    ctas = c.done_ctas - a.done_ctas
    return Snapshot(
        done_ctas=1, time_s=(c.time_s - a.time_s) / ctas,
        counters={k: (v - a.counters.get(k, 0.0)) / ctas for k, v in c.counters.items()},
        busy_s={k: (v - a.busy_s[k]) / ctas for k, v in c.busy_s.items()},
    ), ""


def _first_reaching(snapshots: list[Snapshot], ctas: int) -> Snapshot | None:
    at = bisect_left(snapshots, ctas, key=_done)
    return snapshots[at] if at < len(snapshots) else None


def _done(snapshot: Snapshot) -> int:
    return snapshot.done_ctas
