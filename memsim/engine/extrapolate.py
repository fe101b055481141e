"""Fast mode for very long launches: simulate a shorter one, add the rest at its steady rate.

A launch of G CTAs made of repeating units (`Launch.repeat_unit` consecutive CTAs doing the same
work on their own data, e.g. the q-blocks of one kv head) fills the GPU, runs at a steady rate,
then drains. A launch of G' < G CTAs (whole units) fills and drains the same way; only its
steady middle is shorter. memsim simulates it, measures the steady rate in CTAs per second and
the counters per CTA over windows of whole waves (so the saw-tooth of wave after wave averages
out), and adds the G - G' missing CTAs at that rate.

The error is at most about one wave (the last wave's fill may differ) out of the launch's
waves, so this is used only for launches of at least MIN_WAVES waves, and only when the rate
measured over the two halves of the steady stretch agrees within STEADY_TOLERANCE; otherwise the
whole launch is simulated.
"""

from dataclasses import dataclass, replace
from math import ceil

from memsim.schedules.steps import Launch

MIN_WAVES = 64
SHORT_WAVES = 24  # waves in the short launch: 2 to fill, 2 x STEADY_WAVES measured, the rest to drain
STEADY_WAVES = 8
STEADY_TOLERANCE = 0.005


@dataclass
class Snapshot:
    done_ctas: int
    time_s: float
    counters: dict  # (group, key) -> value
    busy_s: dict


def short_grid(launch: Launch, slots: int) -> int | None:
    """CTAs of the shorter launch (whole units), or None when the launch is not worth extrapolating."""
    unit = launch.repeat_unit
    if not unit or launch.order is not None or launch.grid % unit or launch.grid < MIN_WAVES * slots:
        return None
    return ceil(SHORT_WAVES * slots / unit) * unit


def shortened(launch: Launch, grid: int) -> Launch:
    return replace(launch, grid=grid)


def steady_rate(snapshots: list[Snapshot], slots: int) -> Snapshot | None:
    """Time and counters per CTA in the steady stretch: from the end of wave 2 over 2 x STEADY_WAVES
    waves, checked half against half. None if the halves disagree or the run was too short."""
    marks = [2 * slots, (2 + STEADY_WAVES) * slots, (2 + 2 * STEADY_WAVES) * slots]
    at = [_first_reaching(snapshots, mark) for mark in marks]
    if None in at:
        return None
    a, b, c = at
    rate_1 = (b.time_s - a.time_s) / (b.done_ctas - a.done_ctas)
    rate_2 = (c.time_s - b.time_s) / (c.done_ctas - b.done_ctas)
    if rate_1 <= 0 or abs(rate_1 - rate_2) > STEADY_TOLERANCE * rate_2:
        return None
    ctas = c.done_ctas - a.done_ctas
    return Snapshot(
        done_ctas=1, time_s=(c.time_s - a.time_s) / ctas,
        counters={k: (v - a.counters.get(k, 0.0)) / ctas for k, v in c.counters.items()},
        busy_s={k: (v - a.busy_s[k]) / ctas for k, v in c.busy_s.items()},
    )


def _first_reaching(snapshots: list[Snapshot], ctas: int) -> Snapshot | None:
    return next((s for s in snapshots if s.done_ctas >= ctas), None)
