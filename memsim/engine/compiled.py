"""The compiled engine: memsim.engine's discrete-event model in C++ (memsim/engine/core/), one launch at a time.

The same model as the SimPy engine, event for event: each C++ coroutine is the generator of the same name in
memsim/engine/cta.py and dispatch.py, each class the one of the same name in fluid.py, sharing.py, sm_groups.py,
recency.py and l2cache.py, on an event queue with SimPy's order (memsim/engine/core/sim.hpp). Both engines process
the same events in the same order with the same float arithmetic, so they agree to the last bit on every counter
and time (tests/test_engine_compiled.py holds them to it, launch by launch, over every algorithm and random small
shapes); the SimPy engine stays the reference, and the one that traces.

The schedule side stays Python: each cohort's program (memsim.schedules.steps) is asked for when the cohort is
dispatched and read from its objects (a loop made by steps.streamed_loop from its data, any other by calling it).
Fast mode's cutoff (memsim.engine.extrapolate) also stays Python: the compiled launch calls back as units are
dispatched and cohorts finish.
"""

from memsim.engine import extrapolate
from memsim.engine.cta import Cohort
from memsim.engine.l2cache import negligible_loss_distance
from memsim.engine.machine import BYTE_KEYS, MEMORY, PIPES, SCALAR_KEYS, SMEM_BYTES_PER_CLK_PER_SM, Counters
from memsim.hardware.spec import Ceilings, GPUSpec, matrix_rate
from memsim.schedules.steps import Atomic, Launch, Load, Mma, SmemRoundTrip, Spill, Store, Vector

try:
    from memsim.engine import _core
except ImportError:  # not built (a source checkout without `pip install -e .`): the SimPy engine runs instead
    _core = None

_GROUPS = ("l2_read", "l2_write", "hbm_read", "hbm_write", "hbm_write_deferred")  # the order _core reports them in
_SPILL = "spill"  # the tensor memsim.engine.cta.spill counts local-memory stores under
_NONE = -1  # an absent dirty limit or lifetime (None in Ceilings)


def available() -> bool:
    """Whether the compiled engine is built and importable."""
    return _core is not None


class Names:
    """Tensors, regions and dtypes as the compiled engine names them: small integers, through dicts it adds to as it
    reads each cohort's program (memsim/engine/core/module.cpp Decoder)."""

    def __init__(self, ceilings: Ceilings):
        self.tensors: dict[str, int] = {_SPILL: 0}
        self.regions: dict = {}
        self.dtypes: dict[str, int] = {}
        self.rates: list[float] = []
        for dtype, rate in ceilings.tensor_flops_per_s.items():
            if rate:
                self.dtypes[dtype] = len(self.rates)
                self.rates.append(rate)

    def as_dict(self) -> dict:
        return {"types": STEP_TYPES, "tensors": self.tensors, "regions": self.regions, "dtypes": self.dtypes}

    def tensor_names(self) -> list[str]:
        return list(self.tensors)  # ids are given in order


STEP_TYPES = (Load, Store, Atomic, Mma, Vector, SmemRoundTrip, Spill)  # memsim/engine/core/machine.hpp StepKind


def _or_none(value) -> float:
    return float(_NONE) if value is None else float(value)


def params(gpu: GPUSpec, ceilings: Ceilings, names: Names) -> dict:
    """The machine as memsim.engine.machine.Machine builds it, as numbers (the same expressions, so the same floats)."""
    ways = ceilings.l2_ways
    return {
        "sm_count": gpu.sm_count, "clock_hz": float(gpu.clock_hz),
        "hbm_bytes_per_s": float(ceilings.hbm_bandwidth_bytes_per_s),
        "l2_bytes_per_s": float(ceilings.l2_bandwidth_bytes_per_s),
        "l2_bytes": float(gpu.l2_bytes),
        "l2_dirty_limit_bytes": _or_none(ceilings.l2_dirty_resident_bytes),
        "l2_dirty_lifetime_bytes": _or_none(ceilings.l2_dirty_lifetime_bytes),
        "l2_shared_age_weight": float(ceilings.l2_shared_tile_age_weight),
        "l2_ways": 0 if ways is None else int(ways),
        "l2_lossless_bytes": 0.0 if ways is None else negligible_loss_distance(gpu.l2_bytes, ways),
        "hbm_latency_s": float(ceilings.hbm_latency_s), "l2_hit_latency_s": float(ceilings.l2_hit_latency_s),
        "dependent_step_latency_s": float(ceilings.dependent_step_latency_s),
        "ordered_atomic_latency_s": float(ceilings.ordered_atomic_latency_s),
        "warp_cycles_per_instruction": float(ceilings.warp_cycles_per_instruction),
        "mma_pipe": PIPES.index(ceilings.mma_pipe),
        "tensor_flops_per_s": names.rates,
        "cuda_ops_per_s": ceilings.cuda_core_fp32_flops_per_s / 2,
        "sfu_ops_per_s": float(ceilings.sfu_ops_per_s),
        "smem_bytes_per_s": float(SMEM_BYTES_PER_CLK_PER_SM * gpu.clock_hz * gpu.sm_count),
        "spill_tensor": names.tensors[_SPILL],
    }


class _Hooks:
    """What the compiled launch asks of Python as it runs (memsim/engine/core/dispatch.hpp LaunchHooks): each
    cohort's program, and memsim.engine.simulate._run's on_dispatch and on_finish."""

    def __init__(self, gpu: GPUSpec, ceilings: Ceilings, launch: Launch, names: Names, cutoff, counted):
        self.gpu, self.ceilings, self.launch, self.names = gpu, ceilings, launch, names
        self.cutoff, self.counted = cutoff, counted
        self.sim = None  # the running _core.Launch, while it runs
        self.done = 0

    def program(self, pid: int):
        return self.launch.program(pid)

    def unknown_dtype(self, dtype: str) -> None:
        matrix_rate(self.gpu, self.ceilings, dtype)  # raises the SimPy engine's error, naming the rates there are

    def limit(self) -> int:
        return self.cutoff.limit

    def dispatching(self, position: int, count: int) -> None:
        self.cutoff.dispatching(position, count, self.snapshot)

    def dispatched(self, position: int) -> None:
        self.cutoff.dispatched = position

    def finished(self, weight: int) -> None:
        self.done += weight
        cutoff = self.cutoff
        if cutoff is not None and not cutoff.settled and not cutoff.by_dispatch:
            cutoff.watch(self.snapshot(self.done))
        if self.counted is not None:
            self.counted.ctas_done(self.done)

    def snapshot(self, done_ctas: int) -> extrapolate.Snapshot:
        """memsim.engine.simulate._snapshot, from the compiled machine."""
        now, groups, dirty, scalars, busy, filled = self.sim.snapshot()
        names = self.names.tensor_names()
        by_group = dict(zip(_GROUPS, groups))
        flat = extrapolate.counters_seen({group: [(names[t], v) for t, v in by_group[group]] for group in BYTE_KEYS},
                                         [(names[t], nbytes) for t, nbytes in dirty], dict(zip(SCALAR_KEYS, scalars)))
        return extrapolate.Snapshot(done_ctas, now, flat, dict(zip(PIPES + MEMORY, busy)), filled)


def run(gpu: GPUSpec, ceilings: Ceilings, launch: Launch, occ, fast: bool, batch: int, clock_s: float,
        counted=None, cutoff=None):
    """memsim.engine.simulate._run on the compiled engine (no trace): the same LaunchResult."""
    from memsim.engine.simulate import LaunchResult  # simulate imports this module

    names = Names(ceilings)
    order = launch.order or (lambda i: i)
    classes: dict = {}
    work_class = [classes.setdefault(launch.work_class(pid), len(classes)) for pid in range(launch.grid)] if fast \
        else [0] * launch.grid
    start_s = clock_s + ceilings.launch_overhead_s
    spec = {
        "start_s": start_s, "grid": launch.grid, "slots": occ.slots, "num_stages": launch.num_stages,
        "batch": batch, "fast": fast, "order": [order(i) for i in range(launch.grid)], "work_class": work_class,
        "issue": None if launch.loop_instructions is None else (float(launch.loop_instructions),
                                                                launch.warps_per_cta),
        "watches_dispatch": cutoff is not None,
        "calls_finished": cutoff is not None or (counted is not None and counted.callback is not None),
        "names": names.as_dict(),
    }
    hooks = _Hooks(gpu, ceilings, launch, names, cutoff, counted)
    sim = _core.Launch(params(gpu, ceilings, names), spec, hooks)
    hooks.sim = sim
    try:
        end_s = sim.run()
        _, groups, _, scalars, busy, _ = sim.snapshot()
        deferred = sim.deferred()
        pooled = sim.pooled_joins()
        cohorts = [Cohort(pids=pids, program=None, slots=slots, sm_count=gpu.sm_count, start_s=start, end_s=end)
                   for pids, slots, start, end in sim.cohorts()]
    finally:
        hooks.sim = None  # the launch holds the hooks: no cycle left behind
    tensor = names.tensor_names()
    counters = Counters()
    for group, items in zip(_GROUPS, groups):
        into = getattr(counters, group)
        for t, value in items:
            into[tensor[t]] = value
    for name, value in zip(SCALAR_KEYS, scalars):
        setattr(counters, name, value)
    counters.flush([(tensor[t], nbytes) for t, nbytes in deferred])
    return LaunchResult(
        launch=launch, occupancy=occ, start_s=start_s - ceilings.launch_overhead_s, end_s=end_s, counters=counters,
        busy_s=dict(zip(PIPES + MEMORY, busy)), cohorts=cohorts, unit_intervals={unit: [] for unit in MEMORY},
        pooled_joins=pooled,
    )
