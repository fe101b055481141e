"""The SMs as groups of identical residents, each group with its own pipes.

A CTA's tensor cores, CUDA cores, SFU and shared memory are those of its own SM: it shares them with
the CTAs resident on that SM and no other (CUDA C++ Programming Guide, Hardware Implementation: the
warps of a block run on one multiprocessor). So each SM has its own pipes (memsim.engine.sharing).

Fast mode simulates w identical CTAs started together as one cohort of weight w. That stays exact
with per-SM pipes when every SM the cohort occupies holds the same residents: those SMs then evolve
alike, and one set of pipes with their summed capacity stands for each of them. So the SMs are kept
in groups:

- the cohorts dispatched at one instant onto idle SMs form new groups, SMs holding the same members
  of the same cohorts together (a last partial wave puts two CTAs on some SMs and one on others: those
  are two groups, and the SMs with one finish sooner); a cohort is split by the group it lands in;
- cohorts landing on SMs of a busy group join that group's pipes. When they cover every SM of the
  group alike, its SMs stay identical and this is exact; when they cover only some of them (fast
  mode only: a faithful-mode cohort is one CTA on one SM, and its group is that SM), the group's
  pipes are pooled over its SMs, and `pooled_joins` counts it;
- a group whose last resident leaves is dissolved and its SMs are idle again.

Pipe work is measured in GPU-seconds (work / whole-GPU rate), so a group of k SMs has capacity
k / sm_count of each pipe.
"""

import math
from collections import Counter, defaultdict

import simpy

from memsim.engine.sharing import SharedPipes


class SmGroup:
    __slots__ = ("sms", "pipes", "residents")

    def __init__(self, sms: frozenset, pipes: SharedPipes):
        self.sms, self.pipes, self.residents = sms, pipes, 0


class SmGroups:
    def __init__(self, env: simpy.Environment, names: tuple[str, ...], sm_count: int, trace: bool = False):
        self.env, self.names, self.sm_count, self.trace = env, names, sm_count, trace
        self._of_sm: dict[int, SmGroup] = {}  # busy SM -> its group
        self._live: set[SmGroup] = set()
        self._busy_done_s = dict.fromkeys(names, 0.0)  # busy seconds of dissolved groups
        self._intervals_done = {name: [] for name in names} if trace else None
        self.pooled_joins = 0  # cohorts that joined a group covering only some of its SMs
        self._class_keys: dict = {}  # memsim.engine.sharing's request -> class cache, the same for every group

    def place(self, cohorts: list[list[int]]) -> list[list[tuple[list[int], SmGroup]]]:
        """Place the cohorts dispatched at one instant, each given as the slots of its members (slot s is on
        SM s % sm_count): for each, [(indices into its slots, group)], one entry per group it lands in.

        SMs are told apart by what they hold once the dispatch is done: their group so far (None: idle)
        and how many members of each cohort. Idle SMs that end up holding the same form one new group."""
        holds = defaultdict(list)  # SM -> [(cohort, index into its slots)]
        for c, slots in enumerate(cohorts):
            for index, slot in enumerate(slots):
                holds[slot % self.sm_count].append((c, index))
        by_signature = defaultdict(list)  # (group so far, members per cohort) -> SMs
        for sm, members in holds.items():
            counts = Counter(c for c, _ in members)
            by_signature[(id(self._of_sm.get(sm)), tuple(sorted(counts.items())))].append(sm)
        covered = defaultdict(list)  # busy group -> its SMs' signatures
        group_of = {}
        for signature, sms in by_signature.items():
            group = self._of_sm.get(sms[0])
            if group is None:
                group = SmGroup(frozenset(sms), SharedPipes(self.env, self.names, trace=self.trace,
                                                            capacity=len(sms) / self.sm_count, keys=self._class_keys))
                self._live.add(group)
                for sm in sms:
                    self._of_sm[sm] = group
            else:
                covered[group].append(len(sms))
            for sm in sms:
                group_of[sm] = group
        self.pooled_joins += sum(len(sizes) > 1 or sizes[0] != len(group.sms) for group, sizes in covered.items())
        placed = []
        for slots in cohorts:
            parts = defaultdict(list)
            for index, slot in enumerate(slots):
                parts[group_of[slot % self.sm_count]].append(index)
            for group, indices in parts.items():
                group.residents += len(indices)
            placed.append([(indices, group) for group, indices in parts.items()])
        return placed

    def leave(self, group: SmGroup, members: int) -> None:
        """`members` CTAs of `group` have finished; a group left with none is dissolved."""
        group.residents -= members
        if group.residents > 0:
            return
        self._live.discard(group)
        for sm in group.sms:  # a busy SM belongs to one group until that group is dissolved
            del self._of_sm[sm]
        for name in self.names:
            self._busy_done_s[name] += group.pipes.busy_until_now(name)
            if self.trace:
                self._intervals_done[name] += group.pipes.busy_intervals[name]

    def busy_until_now(self, name: str) -> float:
        """GPU-seconds of full use of pipe `name` so far, over every group."""
        return self._busy_done_s[name] + sum(group.pipes.busy_until_now(name) for group in self._live)

    def busy_intervals(self) -> dict:
        """pipe -> [(start, end)] of each stretch some SM used it (when tracing)."""
        if not self.trace:
            return {}
        out = {}
        for name in self.names:
            spans = sorted(self._intervals_done[name] + [i for g in self._live for i in g.pipes.busy_intervals[name]])
            merged: list[tuple[float, float]] = []
            for start, end in spans:
                if merged and (math.isnan(merged[-1][1]) or start <= merged[-1][1]):
                    last_start, last_end = merged[-1]
                    merged[-1] = (last_start, math.nan if math.isnan(last_end) or math.isnan(end)
                                  else max(last_end, end))
                else:
                    merged.append((start, end))
            out[name] = merged
        return out
