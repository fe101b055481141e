"""A CTA (or a cohort of identical CTAs, weight > 1) running its program on the machine.

The processes read like the kernel: `load_tiles` (through L2, from HBM on a miss),
`compute` on the SM pipes (tensor cores, CUDA cores, SFU, shared memory), `store_tile` into L2.
A cohort of w CTAs started together, doing equal work on the same shared tiles, is
simulated once with weight w; its private tiles (region None) count w times.
"""

from dataclasses import dataclass, field
from math import ceil
from typing import Hashable, Iterable

import simpy

from memsim.engine.machine import WARP_SCHEDULERS_PER_SM, Machine
from memsim.schedules.steps import Atomic, CtaProgram, Load, Loop, Mma, SmemRoundTrip, Spill, Step, Store, Vector


@dataclass
class Cohort:
    pids: tuple[int, ...]  # each member's program id, in the order of `slots`
    program: CtaProgram
    slots: list[int]  # the CTA slot each member runs in: slot s is on SM s % sm_count
    sm_count: int
    group: "object" = None  # memsim.engine.sm_groups.SmGroup: the SMs whose pipes it shares
    start_s: float = 0.0
    end_s: float = 0.0
    first_pid: int = field(init=False)  # names the cohort's private tiles
    weight: int = field(init=False)  # its members (read on every step: kept, not recounted)

    def __post_init__(self):
        self.first_pid, self.weight = self.pids[0], len(self.pids)

    @property
    def sms(self) -> list[int]:
        """The SM each member runs on (for the trace)."""
        return [slot % self.sm_count for slot in self.slots]


def _key(step, cohort: Cohort) -> tuple[Hashable, float, int]:
    """The L2 key of a step's tile, the bytes that key holds and the members' tiles among them."""
    if step.region is None:  # private to each CTA: one key for the cohort, one tile per member
        return (step.tensor, ("cta", cohort.first_pid), step.index), step.bytes * cohort.weight, cohort.weight
    return (step.tensor, step.region, step.index), step.bytes, 1


def load_tiles(m: Machine, iterations: list[tuple[Load, ...]], cohort: Cohort):
    """Fetch what L2 lacks from HBM and deliver every tile to the SMs. Cut-through: lines go on from L2 to
    the SM as they arrive from HBM, so the delivery of a missed tile runs beside its HBM transfer, and a CTA
    waiting on another's fetch starts its delivery when that transfer starts (as a cohort's members do);
    the delivery of hits follows their latency.

    `iterations` holds one tuple of loads per loop iteration (several when fast mode loads a
    batch as one). Latency is paid per iteration, as tile by tile: HBM latency for one that
    misses, L2 hit latency for one that hits, none for one that waits on another CTA's fetch.
    So a CTA keeps the same bytes in flight per latency (Little's law) however it is batched.
    A shared tile is fetched once for the whole cohort; private tiles once per member, each
    member with its own share of HBM bandwidth."""
    env, l2, c = m.env, m.l2, m.counters
    missed, pending, streaming, deliver = {}, [], [], 0.0
    shared_bytes = private_bytes = 0.0
    miss_iterations = hit_iterations = 0
    for loads in iterations:
        outcome = True
        for load in loads:
            key, nbytes, members = _key(load, cohort)
            deliver += load.bytes
            c.l2_read[load.tensor] += load.bytes * cohort.weight
            if key in missed:  # named twice in one batch: fetched once
                continue
            if load.region is not None and l2.shared_age_weight != 1.0:
                m.write_back(l2.read_shared(key, nbytes, cohort.weight))
            found = l2.lookup(key)
            if found is False:
                fraction = l2.missing_fraction(key)  # part of a tile its L2 sets kept need not come again
                missed[key] = (nbytes, load.tensor, members, fraction)
                if load.region is None:
                    private_bytes += load.bytes * fraction
                else:
                    shared_bytes += nbytes * fraction
                outcome = False
            elif found is not True:
                pending.append(found)
                started = l2.transfer_started(key)
                if started is not None and not started.triggered:
                    streaming.append(started)
                if outcome is True:
                    outcome = None
        if outcome is False:
            miss_iterations += 1
        elif outcome is True:
            hit_iterations += 1
    latency_s = miss_iterations * m.ceilings.hbm_latency_s + hit_iterations * m.ceilings.l2_hit_latency_s
    delivery = None
    if missed:
        fetched, transfer = env.event(), env.event()
        for key in missed:
            l2.start_fetch(key, fetched, transfer)
        yield env.timeout(latency_s)
        transfer.succeed()
        yield from _all(env, streaming)
        delivery = m.units["l2"].use(deliver, cohort.weight)
        yield _both(env, m.units["hbm"].use(shared_bytes), m.units["hbm"].use(private_bytes, cohort.weight))
        for key, (nbytes, tensor, members, fraction) in missed.items():
            c.hbm_read[tensor] += nbytes * fraction
            m.write_back(l2.finish_fetch(key, nbytes, tensor, members))
        fetched.succeed()
    else:
        if latency_s:
            yield env.timeout(latency_s)
        if pending:
            yield from _all(env, streaming)
            delivery = m.units["l2"].use(deliver, cohort.weight)
    if len(pending) == 1:
        yield pending[0]
    elif pending:
        yield env.all_of(pending)
    if delivery is None:
        yield m.units["l2"].use(deliver, cohort.weight)
    elif not delivery.processed:
        yield delivery


def _all(env: simpy.Environment, events: list[simpy.Event]):
    """Wait for every event of the list that has not happened yet."""
    waiting = [event for event in events if not event.triggered]
    if len(waiting) == 1:
        yield waiting[0]
    elif waiting:
        yield env.all_of(waiting)


def _both(env: simpy.Environment, a: simpy.Event, b: simpy.Event) -> simpy.Event:
    """An event for when a and b have both happened (one of them, when the other already has)."""
    if a.triggered:
        return b
    if b.triggered:
        return a
    both, waiting = env.event(), [2]

    def one_done(_event):
        waiting[0] -= 1
        if not waiting[0]:
            both.succeed()

    a.callbacks.append(one_done)
    b.callbacks.append(one_done)
    return both


def store_tile(m: Machine, step: Store | Atomic, cohort: Cohort):
    """Write into L2 (write-back cache). An atomic needs its line in L2: a missing line comes from HBM.
    A relaxed one (red.global.add) moves no data to the SM; an ordered one (acq_rel, ATOMG) hands each old
    value back to its thread, so its bytes cross from L2 to the SM as well (ncu: our linear state kernel's
    L2 -> SM bytes are K, V and its atomics' bytes, to the byte), and keeps the CTA a fenced round trip per
    atomic each thread issues (validation/atomic_probe.py: measured with the values handed back, so that
    round trip is their time too)."""
    key, nbytes, members = _key(step, cohort)
    atomic = isinstance(step, Atomic)
    if atomic:
        yield from _fetch_line(m, key, nbytes, step.tensor, members)
    returned = step.bytes if atomic and step.ordered_rounds else 0.0
    m.counters.l2_write[step.tensor] += step.bytes * cohort.weight
    m.counters.l2_read[step.tensor] += returned * cohort.weight
    yield m.units["l2"].use(step.bytes, cohort.weight)
    m.write_back(m.l2.insert(key, nbytes, step.tensor, dirty=True, members=members))
    if atomic and step.ordered_rounds:
        yield m.env.timeout(step.ordered_rounds * m.ceilings.ordered_atomic_latency_s)


def spill(m: Machine, step: Spill, cohort: Cohort) -> None:
    """Local-memory stores into L2; the warps go on without waiting for them. Local memory is backed per
    resident warp, so a CTA spills into the lines its slot's previous CTA used: rewritten in place, they
    reach HBM only if the L2 brings in a dirty lifetime's worth of other data between two spills
    (validation/results/h100/spill-probe-ncu-2026-11-23.csv and validation/ACCURACY.md)."""
    m.counters.l2_write["spill"] += step.bytes * cohort.weight
    m.units["l2"].use(step.bytes, cohort.weight)
    for slot in cohort.slots:
        m.write_back(m.l2.insert(("spill", slot, step.index), step.bytes, "spill", dirty=True))


def _fetch_line(m: Machine, key, nbytes: float, tensor: str, members: int):
    """Bring a tile into L2 for an atomic: wait for a fetch in flight, or fetch it from HBM."""
    found = m.l2.lookup(key)
    if found is True:
        return
    if found is not False:
        yield found
        return
    fetched = m.env.event()
    m.l2.start_fetch(key, fetched)
    yield m.env.timeout(m.ceilings.hbm_latency_s)
    fraction = m.l2.missing_fraction(key)
    yield m.units["hbm"].use(nbytes * fraction)
    m.counters.hbm_read[tensor] += nbytes * fraction
    m.write_back(m.l2.finish_fetch(key, nbytes, tensor, members))
    fetched.succeed()


COMPUTE = (Mma, Vector, SmemRoundTrip)


def compute(m: Machine, steps: list[Step], cohort: Cohort, repeats: int = 1, ping_pong: bool = False,
            issue: "Issue | None" = None):
    """Steps that depend on one another (QK^T, softmax, PV) as one request on the SM pipes: each
    pipe does its share, and the whole takes at least the steps one after another at one SM's
    rates (memsim.engine.sharing), plus one dependent-step latency per step, on the pipes of the
    cohort's SMs (memsim.engine.sm_groups). `repeats`: the
    steps stand for that many iterations merged position by position (merge_steps), each of
    which pays its own latencies. `ping_pong`: steps of a warp-specialised kernel whose matmuls of one
    block run beside the softmax of the previous (FlashAttention-3), where the SFU work is its own.

    `issue`: the instructions each of the CTA's warps issues for these steps, where the launch gives them
    (Launch.loop_instructions). Every SM has WARP_SCHEDULERS_PER_SM schedulers, each issuing one warp
    instruction per clock: the CTA's warps take that much of the SM's "issue" pipe, shared with the other
    CTAs resident there. A warp alone on its scheduler issues one instruction every
    `warp_cycles_per_instruction` clocks, while its previous ones complete: the steps then take at least
    that long, whatever their work (fitted on the calibration subset: 3.6 on the H100; ncu shows our flash2
    forward's warps issuing every 4.0-5.1 clocks, two to a scheduler, results/h100/instructions-ours-*)."""
    demand_s = {"tensor": 0.0, "cuda": 0.0, "sfu": 0.0, "smem": 0.0}
    chain_s, dependent, weight = 0.0, 0, cohort.weight
    c = m.counters
    for step in steps:
        if isinstance(step, Mma):
            seconds = m.tensor_seconds(step.flops, step.dtype)
            demand_s[m.ceilings.mma_pipe] += seconds
            if m.ceilings.mma_pipe == "tensor":
                c.tensor_flops += step.flops * weight
            else:  # FMA on the CUDA cores: one operation per multiply-add
                c.cuda_ops += step.flops / 2 * weight
        elif isinstance(step, Vector):
            cuda_s, sfu_s = m.cuda_seconds(step.cuda_ops), m.sfu_seconds(step.exp_ops)
            demand_s["cuda"] += cuda_s
            demand_s["sfu"] += sfu_s
            seconds = max(cuda_s, sfu_s)  # CUDA cores and SFU work side by side
            c.cuda_ops += (step.cuda_ops + step.exp_ops) * weight
            c.exp_ops += step.exp_ops * weight
        else:
            seconds = step.bytes / m.smem_bytes_per_s
            demand_s["smem"] += seconds
            c.smem_bytes += step.bytes * weight
        chain_s += seconds
        dependent += seconds > 0  # a step with no work (nothing to normalise) waits on nothing
    if not ping_pong and m.ceilings.mma_pipe == "tensor":
        # Outside warp-specialised ping-pong, an SM's matmuls and exponentials hardly overlap: ncu shows the
        # tensor pipe and the XU (SFU) pipe busy 75-85% together, never near 100% each, in our FA2, SDPA's and
        # flex_attention's (validation/results/h100/l2-read-probe-2026-11-22.csv); cuDNN's ping-pong 114%.
        demand_s["tensor"] += demand_s["sfu"]
    chain_s = chain_s * m.gpu.sm_count + dependent * repeats * m.ceilings.dependent_step_latency_s  # GPU- to SM-seconds
    if issue is not None:
        clock_hz = m.gpu.clock_hz
        demand_s["issue"] = issue.instructions * issue.warps / (WARP_SCHEDULERS_PER_SM * clock_hz) / m.gpu.sm_count
        chain_s = max(chain_s, issue.instructions * m.ceilings.warp_cycles_per_instruction / clock_hz)
    yield cohort.group.pipes.use(demand_s, chain_s, weight)


@dataclass(frozen=True)
class Issue:
    """Instructions each warp of a CTA issues for one compute request, and the CTA's warps."""

    instructions: float
    warps: int


def run_steps(m: Machine, steps: Iterable[Step], cohort: Cohort, repeats: int = 1, ping_pong: bool = False,
              issue: Issue | None = None):
    """Loads and stores one by one; each run of consecutive compute steps as one request.
    `repeats`: iterations merged into these steps (merge_steps). `issue`: the steps' instructions, charged
    with the first compute request."""
    pending: list[Step] = []
    for step in steps:
        if isinstance(step, COMPUTE):
            pending.append(step)
            continue
        if pending:
            yield from compute(m, pending, cohort, repeats, ping_pong, issue)
            pending, issue = [], None
        if isinstance(step, Load):
            yield from load_tiles(m, [(step,)], cohort)
        elif isinstance(step, (Store, Atomic)):
            yield from store_tile(m, step, cohort)
        elif isinstance(step, Spill):
            spill(m, step, cohort)
        else:
            raise TypeError(f"unknown step {step!r}")
    if pending:
        yield from compute(m, pending, cohort, repeats, ping_pong, issue)


def merge_steps(iterations: list[tuple[Step, ...]]) -> tuple[tuple[Step, ...], int]:
    """The compute of several iterations as one, and how many iterations each step stands for:
    amounts summed position by position where the iterations have the same steps (each step then
    stands for all of them); otherwise the steps one after another (each stands for itself)."""
    first = iterations[0]
    n = len(iterations)
    if n > 1 and all(it == first for it in iterations):  # the steady loop: n times the same steps
        return tuple(m for s in first for m in _times(s, n)), n
    if len(iterations) == 1 or any(len(it) != len(first) or any(type(a) is not type(b) for a, b in zip(it, first))
                                   for it in iterations):
        return tuple(s for it in iterations for s in it), 1
    merged = []
    for position in zip(*iterations):
        s = position[0]
        if isinstance(s, Mma):
            merged.append(Mma(sum(p.flops for p in position), s.dtype))
        elif isinstance(s, Vector):
            merged.append(Vector(sum(p.cuda_ops for p in position), sum(p.exp_ops for p in position)))
        elif isinstance(s, SmemRoundTrip):
            merged.append(SmemRoundTrip(sum(p.bytes for p in position)))
        else:
            merged.extend(position)  # stores and loads keep their own tiles
    return tuple(merged), len(iterations)


def _times(step: Step, n: int) -> tuple[Step, ...]:
    """What merge_steps makes of n equal steps: one compute step with n times the amounts; n of any other."""
    if isinstance(step, Mma):
        return (Mma(step.flops * n, step.dtype),)
    if isinstance(step, Vector):
        return (Vector(step.cuda_ops * n, step.exp_ops * n),)
    if isinstance(step, SmemRoundTrip):
        return (SmemRoundTrip(step.bytes * n),)
    return (step,) * n


def spans(iterations: int, batch: int) -> list[tuple[int, int]]:
    """[first, last) iterations of each simulated step: 1, 2, 4, ... up to `batch`, then `batch` each.

    The doubling start keeps the pipeline's fill as short as tile by tile (one tile's load is
    exposed, not a whole batch's); after it, batches of equal work run at the same steady rate."""
    out, start, size = [], 0, 1
    while start < iterations:
        end = min(iterations, start + size)
        out.append((start, end))
        start, size = end, min(batch, size * 2)
    return out


def run_loop(m: Machine, loop: Loop, cohort: Cohort, stages: int, batch: int, issue: Issue | None = None):
    """Loads run up to `stages` (batches of) iterations ahead of compute: multi-buffered shared memory.
    The load of span j + stages starts when the compute of span j has freed its buffer.
    Up to `batch` iterations are simulated as one (fast mode); 1 simulates every tile.
    `issue`: each iteration's instructions per warp, where the launch gives them."""
    env = m.env
    spans_ = spans(loop.iterations, batch)

    def fetch(a: int, b: int):
        return load_tiles(m, [loop.loads(i) for i in range(a, b)], cohort)

    if stages == 1:  # no prefetch: each load runs when the previous compute is done, as part of this process
        fetches = []
    else:
        fetches = [env.process(fetch(a, b)) for a, b in spans_[:stages]]
    vector_chain = None
    for j, (a, b) in enumerate(spans_):
        if stages == 1:
            yield from fetch(a, b)
        else:
            yield fetches[j]
        steps, repeats = merge_steps([loop.compute(i) for i in range(a, b)])
        span_issue = None if issue is None else Issue(issue.instructions * (b - a), issue.warps)
        if loop.overlap_vector:
            vector_chain = yield from _overlapped(m, steps, cohort, vector_chain, repeats, span_issue)
        else:
            yield from run_steps(m, steps, cohort, repeats, issue=span_issue)
        if stages > 1 and j + stages < len(spans_):
            fetches.append(env.process(fetch(*spans_[j + stages])))
    if vector_chain is not None:
        yield vector_chain


def _overlapped(m: Machine, steps: tuple[Step, ...], cohort: Cohort, previous_vector, repeats: int,
                issue: Issue | None = None):
    """FlashAttention-3 ping-pong: this iteration's matmuls run while the previous softmax finishes."""
    yield from run_steps(m, [s for s in steps if not isinstance(s, Vector)], cohort, repeats, True, issue)
    vectors = [s for s in steps if isinstance(s, Vector)]

    def chained():
        if previous_vector is not None:
            yield previous_vector
        yield from run_steps(m, vectors, cohort, repeats, True)

    return m.env.process(chained())


def run_cohort(m: Machine, cohort: Cohort, stages: int, batch_for, issue: Issue | None = None):
    """The whole program of one cohort. `batch_for(iterations)` says how many to simulate as one.
    `issue`: instructions per warp per loop iteration, where the launch gives them."""
    cohort.start_s = m.env.now
    p = cohort.program
    yield from run_steps(m, p.prologue, cohort)
    if p.loop is not None and p.loop.iterations > 0:
        yield from run_loop(m, p.loop, cohort, stages, batch_for(p.loop.iterations), issue)
    yield from run_steps(m, p.epilogue, cohort)
    cohort.end_s = m.env.now


STEPS_PER_LAUNCH = 4000  # fast mode: loop steps simulated per CTA x waves, about
STEPS_PER_CTA = (12, 128)  # fast mode: at least / at most this many steps per CTA loop
TILE_BY_TILE_UP_TO = 100_000  # CTAs x loop iterations: launches this small are simulated tile by tile


def batch_size(iterations: int, fast: bool, waves: int = 1, grid: int = 1) -> int:
    """How many loop iterations fast mode simulates as one.

    Small launches (grid x iterations up to TILE_BY_TILE_UP_TO) go tile by tile: fast mode then
    differs from faithful mode only in merging identical CTAs, which is exact. Larger ones
    batch every CTA's loop alike, about STEPS_PER_LAUNCH / waves steps per CTA."""
    if not fast or grid * iterations <= TILE_BY_TILE_UP_TO:
        return 1
    low, high = STEPS_PER_CTA
    steps = max(low, min(high, STEPS_PER_LAUNCH // max(waves, 1)))
    return max(1, ceil(iterations / steps))
