"""A unit shared by everything in flight on it: HBM bandwidth, L2 bandwidth, the tensor cores.

Processor sharing: every unit of weight in service progresses at
min(cap, rate / total weight). A request of weight w stands for w identical requests
made at the same instant (w CTAs of one cohort), and finishes exactly when each of
them would: that is what makes merging identical CTAs exact. `cap` is the most one
unit of weight may take (one CTA cannot use more than its own SM's tensor cores).

All requests progress at the same rate, so the unit keeps one clock of service per unit
of weight, `served_per_weight` (virtual time, as in fair-queueing schedulers: Demers,
Keshav and Shenker, SIGCOMM 1989): a request of amount a arriving when it reads V is done
when it reads V + a. Arrivals and departures cost O(log n), not O(n).
"""

import heapq
import math

import simpy

_DONE = 1e-9  # relative remainder at which a request counts as served (float rounding)
_CLOCK_RESOLUTION = 1e-12  # relative: a remainder needing less time than this cannot move the clock


def serve_due(queue: list, clock: float, rate: float, now_s: float) -> float:
    """Pop and succeed every request of `queue` (a heap of (finish on the service clock, id, weight, event,
    amount)) that the service clock has reached, or would reach in less time than the clock can resolve at
    `rate` per second; returns the weight that left."""
    tiny_s = _CLOCK_RESOLUTION * max(now_s, 1e-9)
    left = 0.0
    while queue:
        remaining = queue[0][0] - clock
        if remaining > _DONE * queue[0][4] and (rate <= 0 or remaining / rate > tiny_s):
            break
        _, _, weight, done, _ = heapq.heappop(queue)
        left += weight
        done.succeed()
    return left


class FluidResource:
    def __init__(self, env: simpy.Environment, name: str, rate: float, cap: float = math.inf):
        if rate <= 0:
            raise ValueError(f"{name}: rate must be > 0, got {rate}")
        self.env, self.name, self.rate, self.cap = env, name, rate, cap
        self._queue: list = []  # heap of (finish on the service clock, id, weight, event, amount)
        self._next_id = 0
        self._weight = 0.0
        self._served_per_weight = 0.0  # the service clock
        self._last_s = env.now
        self._version = 0
        self._timer_s = math.inf  # when the live timer fires (inf: none)
        self.busy_s = 0.0  # integral of utilisation (0..1) over time
        self.served = 0.0  # total amount served, weights included
        self.busy_intervals: list[tuple[float, float]] | None = None  # filled when tracing
        self._idle_waiters: list[simpy.Event] = []

    def use(self, amount: float, weight: float = 1.0) -> simpy.Event:
        """An event that fires once `amount` (per unit of weight) has been served."""
        done = self.env.event()
        if amount <= 0 or weight <= 0:
            return done.succeed()
        self._advance()
        if not self._queue and self.busy_intervals is not None:
            self.busy_intervals.append((self.env.now, math.nan))
        heapq.heappush(self._queue, (self._served_per_weight + amount, self._next_id, weight, done, amount))
        self._next_id += 1
        self._weight += weight
        self.served += amount * weight
        # An arrival only slows the others down: a live timer then fires early, which is harmless (it finds
        # nothing done and sets the next). A new timer is needed only when this request is the first to finish.
        if self._timer_s == math.inf or self._queue[0][1] == self._next_id - 1:
            self._reschedule()
        return done

    def idle(self) -> simpy.Event:
        """An event for when nothing is left in flight (now, if nothing is)."""
        event = self.env.event()
        if not self._queue:
            return event.succeed()
        self._idle_waiters.append(event)
        return event

    def busy_until_now(self) -> float:
        """busy_s including the stretch since the last change; reads without advancing the service
        clock, so that looking (a snapshot) never moves a result by a rounding."""
        dt = self.env.now - self._last_s
        if dt > 0 and self._queue:
            return self.busy_s + dt * min(1.0, self._unit_rate() * self._weight / self.rate)
        return self.busy_s

    def _unit_rate(self) -> float:
        return min(self.cap, self.rate / self._weight)

    def _advance(self) -> None:
        dt = self.env.now - self._last_s
        if dt > 0 and self._queue:
            r = self._unit_rate()
            self._served_per_weight += r * dt
            self.busy_s += dt * min(1.0, r * self._weight / self.rate)
        self._last_s = self.env.now

    def _reschedule(self) -> None:
        self._version += 1
        if not self._queue:
            self._timer_s = math.inf
            return
        remaining = self._queue[0][0] - self._served_per_weight
        version = self._version
        delay_s = max(remaining, 0.0) / self._unit_rate()
        self._timer_s = self.env.now + delay_s
        timer = self.env.timeout(delay_s)
        timer.callbacks.append(lambda _event: self._on_timer(version))

    def _on_timer(self, version: int) -> None:
        if version != self._version:
            return  # superseded by a later arrival or departure
        self._advance()
        queue = self._queue
        self._weight -= serve_due(queue, self._served_per_weight, self._unit_rate(), self.env.now)
        if not queue:
            self._weight = 0.0
            if self.busy_intervals is not None:
                start, _ = self.busy_intervals[-1]
                self.busy_intervals[-1] = (start, self.env.now)
            waiters, self._idle_waiters = self._idle_waiters, []
            for event in waiters:
                event.succeed()
        self._reschedule()
