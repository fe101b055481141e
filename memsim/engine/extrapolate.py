"""Fast mode for long launches: simulate until the launch runs at a steady rate, stop dispatching at
the next whole unit, let it drain, and add the CTAs never dispatched at that rate.

A launch of G CTAs made of repeating units (`Launch.repeat_unit` consecutive CTAs doing the same
work on their own data, e.g. the q-blocks of one kv head) fills the GPU, runs at a steady rate,
then drains. Ended after G' < G CTAs (whole units), it fills and drains the same way; only its
steady middle is shorter. memsim runs the launch and watches it as CTAs finish: over two
consecutive windows of whole units (at least STEADY_WAVES waves each), after the first WARM_WAVES
waves and after the L2 has taken in a dirty lifetime's worth of data (before that the write-backs
of the first outputs have not started: their rate is not steady yet), it compares the time and
every counter per CTA, window against window. Once the time agrees within STEADY_TOLERANCE and
every counter within COUNTER_TOLERANCE, dispatch stops at the end of the unit being dispatched;
the launch drains as the full one would, and the G - G' missing CTAs are added at the rate of the
two windows. A launch that never settles is simulated in full, with no time lost.

Only launches of at least MIN_WAVES waves in program-id order are watched (shorter ones have
little middle to skip). The error is that of the rate: two windows that agree within the
tolerances, scaled by the CTAs skipped (`tests/test_engine_extrapolate.py` checks shapes of 31
to 248 waves against the full simulation).
"""

from bisect import bisect_left
from dataclasses import dataclass
from math import ceil

from memsim.schedules.steps import Launch

MIN_WAVES = 16
WARM_WAVES = 2  # waves finished before the first window may start
STEADY_WAVES = 4  # the least length of each window
STEADY_TOLERANCE = 0.005  # time per CTA, window against window
COUNTER_TOLERANCE = 0.01  # every counter per CTA, window against window
MIN_SKIPPED = 0.25  # the least share of the launch worth skipping: later, it runs to its end


@dataclass
class Snapshot:
    done_ctas: int
    time_s: float
    counters: dict  # (group, key) -> value
    busy_s: dict
    filled_bytes: float = 0.0  # bytes the L2 has taken in so far (memsim.engine.l2cache.L2Cache.filled_bytes)


def watched(launch: Launch, slots: int) -> bool:
    """Whether fast mode may end this launch early and extrapolate it."""
    unit = launch.repeat_unit
    return bool(unit) and launch.order is None and launch.grid % unit == 0 and launch.grid >= MIN_WAVES * slots


class Cutoff:
    """Ends a launch's dispatch once it runs at a steady rate. `limit` is the CTA count to dispatch;
    `rate` is the steady time, counters and busy seconds per CTA once found.

    Windows start and end on whole waves (CTAs started together in lock-step finish together) and
    hold at least one unit. A window over which the time agrees but a counter does not is too short
    for that counter's own period (K/V of a new head every unit, write-backs in bursts): it doubles."""

    def __init__(self, launch: Launch, slots: int, lifetime_bytes: float | None):
        self.grid, self.unit, self.slots = launch.grid, launch.repeat_unit, slots
        self.window = ceil(max(STEADY_WAVES * slots, self.unit) / slots) * slots  # CTAs per window
        self.start = WARM_WAVES * slots  # where the first window starts
        self.lifetime_bytes = lifetime_bytes or 0.0
        self.limit = launch.grid
        self.dispatched = 0  # CTAs handed out so far (memsim.engine.dispatch.run_launch keeps it)
        self.rate: Snapshot | None = None
        self.snapshots: list[Snapshot] = []

    @property
    def settled(self) -> bool:
        return self.rate is not None

    def watch(self, snapshot: Snapshot) -> None:
        """Called as CTAs finish: tries every window pair that has ended, sliding a wave at a time."""
        self.snapshots.append(snapshot)
        while self.rate is None and snapshot.done_ctas >= self.start + 2 * self.window:
            a, b, c = (_first_reaching(self.snapshots, self.start + k * self.window) for k in range(3))
            if a.filled_bytes < self.lifetime_bytes:
                self.start += self.slots
                continue
            rate, why = steady_rate(a, b, c)
            if rate is not None:
                stop = ceil(self.dispatched / self.unit) * self.unit
                if self.grid - stop >= MIN_SKIPPED * self.grid:
                    self.rate, self.limit = rate, stop
                else:
                    self.start = self.grid  # too late to save anything: watch no more
                return
            if why == "counters":
                self.window *= 2
            else:
                self.start += self.slots


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
