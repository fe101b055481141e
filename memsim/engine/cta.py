"""A CTA (or a cohort of identical CTAs, weight > 1) running its program on the machine.

The processes read like the kernel: `load_tiles` (through L2, from HBM on a miss),
`mma` on tensor cores, `softmax` on CUDA cores and the SFU, `store_tile` into L2.
A cohort of w CTAs started together, doing equal work on the same shared tiles, is
simulated once with weight w; its private tiles (region None) count w times.
"""

from dataclasses import dataclass
from math import ceil
from typing import Hashable, Iterable

import simpy

from memsim.engine.machine import Machine
from memsim.schedules.steps import Atomic, CtaProgram, Load, Loop, Mma, SmemRoundTrip, Step, Store, Vector


@dataclass
class Cohort:
    first_pid: int
    weight: int
    program: CtaProgram
    sms: list[int]  # the SM each member runs on (for the trace)
    start_s: float = 0.0
    end_s: float = 0.0


def _key(step, cohort: Cohort) -> tuple[Hashable, float]:
    """The L2 key of a step's tile and the bytes that key holds."""
    if step.region is None:  # private to each CTA: one key for the cohort, w times the bytes
        return (step.tensor, ("cta", cohort.first_pid), step.index), step.bytes * cohort.weight
    return (step.tensor, step.region, step.index), step.bytes


def load_tiles(m: Machine, loads: Iterable[Load], cohort: Cohort):
    """Fetch what L2 lacks from HBM (one latency, then the bytes), then deliver every tile to the SMs."""
    env, l2, c = m.env, m.l2, m.counters
    missed, pending, deliver = [], [], 0.0
    for load in loads:
        key, nbytes = _key(load, cohort)
        found = l2.lookup(key)
        if found is False:
            missed.append((key, nbytes, load.tensor))
        elif found is not True:
            pending.append(found)
        deliver += load.bytes
        c.l2_read[load.tensor] += load.bytes * cohort.weight
    if missed:
        fetched = env.event()
        for key, _, _ in missed:
            l2.start_fetch(key, fetched)
        yield env.timeout(m.ceilings.hbm_latency_s)
        yield m.units["hbm"].use(sum(b for _, b, _ in missed))
        for key, nbytes, tensor in missed:
            c.hbm_read[tensor] += nbytes
            m.write_back(l2.finish_fetch(key, nbytes, tensor))
        fetched.succeed()
    if pending:
        yield env.all_of(pending)
    elif not missed and m.ceilings.l2_hit_latency_s:
        yield env.timeout(m.ceilings.l2_hit_latency_s)
    yield m.units["l2"].use(deliver, cohort.weight)


def store_tile(m: Machine, step: Store | Atomic, cohort: Cohort):
    """Write into L2 (write-back cache); an atomic first needs the line, from HBM if absent."""
    key, nbytes = _key(step, cohort)
    if isinstance(step, Atomic) and m.l2.lookup(key) is False:
        yield from load_tiles(m, [Load(step.tensor, step.region, step.index, step.bytes)], cohort)
    m.counters.l2_write[step.tensor] += step.bytes * cohort.weight
    yield m.units["l2"].use(step.bytes, cohort.weight)
    m.write_back(m.l2.insert(key, nbytes, step.tensor, dirty=True))


def mma(m: Machine, step: Mma, weight: int):
    m.counters.tensor_flops += step.flops * weight
    yield m.units["tensor"].use(m.tensor_seconds(step.flops, step.dtype), weight)


def softmax(m: Machine, step: Vector, weight: int):
    m.counters.cuda_ops += (step.cuda_ops + step.exp_ops) * weight
    m.counters.exp_ops += step.exp_ops * weight
    yield m.env.all_of([m.units["cuda"].use(m.cuda_seconds(step.cuda_ops), weight),
                        m.units["sfu"].use(m.sfu_seconds(step.exp_ops), weight)])


def smem_round_trip(m: Machine, step: SmemRoundTrip, weight: int):
    m.counters.smem_bytes += step.bytes * weight
    yield m.units["smem"].use(step.bytes / m.smem_bytes_per_s, weight)


def run_steps(m: Machine, steps: Iterable[Step], cohort: Cohort):
    for step in steps:
        if isinstance(step, Load):
            yield from load_tiles(m, [step], cohort)
        elif isinstance(step, (Store, Atomic)):
            yield from store_tile(m, step, cohort)
        elif isinstance(step, Mma):
            yield from mma(m, step, cohort.weight)
        elif isinstance(step, Vector):
            yield from softmax(m, step, cohort.weight)
        elif isinstance(step, SmemRoundTrip):
            yield from smem_round_trip(m, step, cohort.weight)
        else:
            raise TypeError(f"unknown step {step!r}")


def merge_steps(iterations: list[tuple[Step, ...]]) -> tuple[Step, ...]:
    """The compute of several iterations as one: amounts summed position by position where the
    iterations have the same steps; otherwise the steps one after another."""
    first = iterations[0]
    if len(iterations) == 1 or any(len(it) != len(first) or any(type(a) is not type(b) for a, b in zip(it, first))
                                   for it in iterations):
        return tuple(s for it in iterations for s in it)
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
    return tuple(merged)


def run_loop(m: Machine, loop: Loop, cohort: Cohort, stages: int, batch: int):
    """Loads run up to `stages` (batches of) iterations ahead of compute: multi-buffered shared memory.
    `batch` iterations are simulated as one (fast mode); 1 simulates every tile."""
    env = m.env
    n = loop.iterations
    spans = [(a, min(n, a + batch)) for a in range(0, n, batch)]
    free = simpy.Container(env, capacity=stages, init=stages)
    ready = [env.event() for _ in spans]

    def fetch(j: int, a: int, b: int):
        yield from load_tiles(m, [t for i in range(a, b) for t in loop.loads(i)], cohort)
        ready[j].succeed()

    def producer():
        for j, (a, b) in enumerate(spans):
            yield free.get(1)
            env.process(fetch(j, a, b))

    env.process(producer())
    vector_chain = None
    for j, (a, b) in enumerate(spans):
        yield ready[j]
        steps = merge_steps([loop.compute(i) for i in range(a, b)])
        if loop.overlap_vector:
            vector_chain = yield from _overlapped(m, steps, cohort, vector_chain)
        else:
            yield from run_steps(m, steps, cohort)
        yield free.put(1)
    if vector_chain is not None:
        yield vector_chain


def _overlapped(m: Machine, steps: tuple[Step, ...], cohort: Cohort, previous_vector):
    """FlashAttention-3 ping-pong: this iteration's matmuls run while the previous softmax finishes."""
    yield from run_steps(m, [s for s in steps if not isinstance(s, Vector)], cohort)
    vectors = [s for s in steps if isinstance(s, Vector)]

    def chained():
        if previous_vector is not None:
            yield previous_vector
        yield from run_steps(m, vectors, cohort)

    return m.env.process(chained())


def run_cohort(m: Machine, cohort: Cohort, stages: int, batch_for):
    """The whole program of one cohort. `batch_for(iterations)` says how many to simulate as one."""
    cohort.start_s = m.env.now
    p = cohort.program
    yield from run_steps(m, p.prologue, cohort)
    if p.loop is not None and p.loop.iterations > 0:
        yield from run_loop(m, p.loop, cohort, stages, batch_for(p.loop.iterations))
    yield from run_steps(m, p.epilogue, cohort)
    cohort.end_s = m.env.now


def batch_size(iterations: int, fast: bool, macro_steps: int = 128) -> int:
    """Fast mode simulates a long loop as about `macro_steps` steps of equal work."""
    return max(1, ceil(iterations / macro_steps)) if fast else 1
