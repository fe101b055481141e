"""The SM pipes (tensor cores, CUDA cores, SFU, shared memory) shared by every resident CTA.

A CTA's compute between two waits (e.g. one loop iteration's QK^T, softmax and PV) is one
request with a demand on each pipe. On the GPU the warps of co-resident CTAs interleave at
instruction granularity, so one CTA's softmax runs on the CUDA cores while another's matmul
runs on the tensor cores; within one CTA the steps depend on each other and run one after
another. So a request is limited by:

- its chain: it cannot finish sooner than its steps one after another at a whole SM's rates
  (`chain_s`), which is also the most one CTA can take from any pipe (one SM's share);
- the pipes: the resident CTAs together never use more of a pipe than there is.

Within those limits the pipes are shared by dominant-resource fairness (Ghodsi et al.,
"Dominant Resource Fairness", NSDI 2011): every request progresses at the same rate in
its dominant pipe's share, raised together (progressive filling) until a pipe saturates or
a request reaches its chain limit. With one pipe this is processor sharing.

Work is measured in GPU-seconds (work / whole-GPU rate), as in memsim.engine.machine; one
SharedPipes stands for a group of SMs (memsim.engine.sm_groups) and has capacity
(its SMs / all SMs) GPU-seconds per second of each pipe. Requests whose demands point the same way and
have the same chain limit share a class and progress in step, so each class keeps one service
clock (virtual time, as memsim.engine.fluid does per unit) and a change costs O(classes x pipes).
A request of weight w stands for w identical CTAs started together.
"""

import heapq
import math
import operator

import simpy

from memsim.engine.fluid import serve_due

_KEY_DIGITS = 12  # significant digits that make two requests' directions and limits the same class


class _Class:
    """Requests whose demands are proportional and whose chain limits per amount are equal."""

    __slots__ = ("direction", "uses", "cap", "queue", "weight", "clock", "rate")

    def __init__(self, direction: tuple[float, ...], cap: float):
        self.direction = direction  # share of each pipe used per unit of dominant-share rate (max 1)
        self.uses = tuple((p, share) for p, share in enumerate(direction) if share > 0)  # the pipes it needs
        self.cap = cap  # the most dominant-share rate one member may take (its chain limit)
        self.queue: list = []  # heap of (finish on the class clock, id, weight, event, amount)
        self.weight = 0.0
        self.clock = 0.0  # dominant-seconds served per member
        self.rate = 0.0


def _class_key(demands: tuple[float, ...], chain_s: float) -> tuple[tuple, float]:
    """((direction, cap), seconds on the dominant pipe) of a request: its class and its amount."""
    scale = max(demands, default=0.0)  # seconds on its dominant pipe, alone on the GPU
    if scale <= 0:
        return ((), 0.0), scale
    direction = tuple(round(seconds / scale, _KEY_DIGITS) for seconds in demands)
    cap = float(f"{scale / chain_s:.{_KEY_DIGITS}g}") if chain_s > 0 else math.inf
    return (direction, cap), scale


_by_cap = operator.attrgetter("cap")


class SharedPipes:
    def __init__(self, env: simpy.Environment, names: tuple[str, ...], trace: bool = False, capacity: float = 1.0,
                 keys: dict | None = None):
        if capacity <= 0:
            raise ValueError(f"pipes: capacity must be > 0, got {capacity}")
        self.env, self.names, self.capacity = env, names, capacity
        self._classes: dict = {}
        # (demands, chain_s) -> (class key, seconds on the dominant pipe): requests repeat, also on other SMs'
        # pipes, so SMs may share one dict (memsim.engine.sm_groups)
        self._keys: dict = {} if keys is None else keys
        self._active: list[_Class] = []
        self._next_id = 0
        self._last_s = env.now
        self._version = 0
        self.busy_s = dict.fromkeys(names, 0.0)  # integral of each pipe's use (0..capacity) over time
        self.served = dict.fromkeys(names, 0.0)  # GPU-seconds of work per pipe, weights included
        self._use = dict.fromkeys(names, 0.0)  # utilisation now
        self.busy_intervals = {name: [] for name in names} if trace else None

    def use(self, demand_s: dict[str, float], chain_s: float, weight: float = 1.0) -> simpy.Event:
        """An event that fires once every pipe has done `demand_s` (GPU-seconds per member) of this
        request, and no sooner than `chain_s` after it started."""
        done = self.env.event()
        demands = tuple(demand_s.get(n, 0.0) for n in self.names)
        known = self._keys.get((demands, chain_s))
        if known is None:
            known = self._keys[(demands, chain_s)] = _class_key(demands, chain_s)
        key, scale = known
        if scale <= 0 or weight <= 0:
            return done.succeed()
        self._advance()
        cls = self._classes.get(key)
        if cls is None:
            cls = self._classes[key] = _Class(*key)
        if not cls.queue:
            self._active.append(cls)
        heapq.heappush(cls.queue, (cls.clock + scale, self._next_id, weight, done, scale))
        self._next_id += 1
        cls.weight += weight
        for n, seconds in zip(self.names, demands):
            self.served[n] += seconds * weight
        self._rebalance()
        return done

    def busy_until_now(self, name: str) -> float:
        """busy_s[name] including the stretch since the last change; reads without advancing the
        clocks, so that looking (a snapshot) never moves a result by a rounding."""
        dt = self.env.now - self._last_s
        if dt > 0 and self._active:
            return self.busy_s[name] + dt * min(self.capacity, self._use[name])
        return self.busy_s[name]

    def _advance(self) -> None:
        dt = self.env.now - self._last_s
        if dt > 0 and self._active:
            for cls in self._active:
                cls.clock += cls.rate * dt
            for n in self.names:
                self.busy_s[n] += dt * min(self.capacity, self._use[n])
        self._last_s = self.env.now

    def _rebalance(self) -> None:
        """Set every active class's rate by progressive filling (_fill; _fill_alone where one class is active, the
        same rate without the rounds) and time the next finish."""
        used = self._fill_alone() if len(self._active) <= 1 else self._fill()
        self._trace_changes(used)
        self._use = dict(zip(self.names, used))
        self._reschedule()

    def _fill(self) -> list[float]:
        """Progressive filling: raise every request's rate together until a pipe fills or a
        request reaches its chain limit; freeze those; go on with the rest. Sets each class's rate;
        returns each pipe's use.

        All rising classes share one level, so each pipe's load is its frozen use plus the level
        times the rising classes' demand. Classes reach their chain limits in the order of their
        caps, and at most one pipe fills per round: O(classes x pipes + classes x log classes)."""
        pipes, capacity = range(len(self.names)), self.capacity
        used = [0.0] * len(self.names)  # by frozen classes
        demand = [0.0] * len(self.names)  # per unit of level, by rising classes
        users = [0] * len(self.names)  # rising classes with work on each pipe
        for cls in self._active:
            cls.rate = -1.0  # rising
            for p, share in cls.uses:
                demand[p] += cls.weight * share
                users[p] += 1
        by_cap = sorted(self._active, key=_by_cap)
        rising, next_cap = len(by_cap), 0

        def freeze(cls, rate):
            cls.rate = rate
            for p, share in cls.uses:
                share = cls.weight * share
                used[p] += share * rate
                demand[p] -= share
                users[p] -= 1

        while rising:
            while by_cap[next_cap].rate >= 0:
                next_cap += 1
            level, full = by_cap[next_cap].cap, None
            for p in pipes:
                if users[p] and (capacity - used[p]) < level * demand[p]:
                    level, full = max(0.0, (capacity - used[p]) / demand[p]), p
            if full is None:
                while next_cap < len(by_cap) and by_cap[next_cap].cap <= level:
                    if by_cap[next_cap].rate < 0:
                        freeze(by_cap[next_cap], by_cap[next_cap].cap)
                        rising -= 1
                    next_cap += 1
            else:
                for cls in by_cap:
                    if cls.rate < 0 and cls.direction[full] > 0:
                        freeze(cls, min(level, cls.cap))
                        rising -= 1
        return used

    def _fill_alone(self) -> list[float]:
        """_fill with at most one class active, as most changes on one SM's pipes leave it: the class rises
        until its chain limit or its first pipe to fill, with the same arithmetic as _fill's one round (so the
        same rate, to the bit, without its bookkeeping)."""
        used = [0.0] * len(self.names)
        if self._active:
            cls = self._active[0]
            level, capacity = cls.cap, self.capacity
            for _, share in cls.uses:
                demand = cls.weight * share
                if capacity < level * demand:
                    level = max(0.0, capacity / demand)
            cls.rate = level
            for p, share in cls.uses:
                used[p] = cls.weight * share * level
        return used

    def _trace_changes(self, used: list[float]) -> None:
        if self.busy_intervals is None:
            return
        for n, now_used in zip(self.names, used):
            was, intervals = self._use[n] > 0, self.busy_intervals[n]
            if now_used > 0 and not was:
                intervals.append((self.env.now, math.nan))
            elif was and now_used <= 0:
                intervals[-1] = (intervals[-1][0], self.env.now)

    def _reschedule(self) -> None:
        self._version += 1
        delay_s = min(((cls.queue[0][0] - cls.clock) / cls.rate for cls in self._active if cls.rate > 0),
                      default=math.inf)
        if delay_s == math.inf:
            return
        version = self._version
        timer = self.env.timeout(max(delay_s, 0.0))
        timer.callbacks.append(lambda _event: self._on_timer(version))

    def _on_timer(self, version: int) -> None:
        if version != self._version:
            return  # superseded by a later arrival or departure
        self._advance()
        for cls in self._active:
            cls.weight -= serve_due(cls.queue, cls.clock, cls.rate, self.env.now)
            if not cls.queue:
                cls.weight = 0.0
        self._active = [cls for cls in self._active if cls.queue]
        self._rebalance()
