"""What a CTA does, as plain data: the schedule side of memsim knows nothing of SimPy.

A kernel launch is a grid of CTAs. Each CTA runs a prologue, a pipelined loop and an
epilogue. In the loop, the loads of iteration i+1 .. i+num_stages are in flight while
iteration i computes (cp.async / TMA multi-buffering); compute of one iteration is its
steps in order.

Tiles are named by (tensor, region, index): CTAs that name the same tile read the same
bytes, which is what lets L2 serve the second reader. A region is whatever the data is
shared by, e.g. (batch, kv_head) for K and V.
"""

from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Callable, Hashable, Mapping


@dataclass(frozen=True)
class Load:
    """Read one tile into shared memory or registers (from L2, or from HBM on a miss)."""

    tensor: str
    region: Hashable
    index: int
    bytes: float


@dataclass(frozen=True)
class Store:
    """Write one tile to global memory (into L2, written back to HBM later)."""

    tensor: str
    region: Hashable
    index: int
    bytes: float


@dataclass(frozen=True)
class Atomic:
    """Read-modify-write of a tile in L2 (fp32 atomic adds), e.g. dQ in the FlashAttention-2 backward.
    `ordered_rounds`: where the atomics are ordered (acq_rel), the ones each thread issues one after another,
    each waiting out a fenced round trip (TileConfig.atomic_sem); 0 for relaxed atomics."""

    tensor: str
    region: Hashable
    index: int
    bytes: float
    ordered_rounds: int = 0


@dataclass(frozen=True)
class Mma:
    """Matrix work on the SM's tensor cores."""

    flops: float
    dtype: str  # tensor-core rate key: tf32, fp16, bf16, fp8


@dataclass(frozen=True)
class Vector:
    """Elementwise and reduction work on CUDA cores (max, sum, rescale); exp on the special-function unit."""

    cuda_ops: float  # exp excluded
    exp_ops: float = 0.0


@dataclass(frozen=True)
class SmemRoundTrip:
    """Warps exchanging partial results through shared memory (write, barrier, read)."""

    bytes: float


@dataclass(frozen=True)
class Spill:
    """Registers spilled to local memory: each thread stores them through its L1 to L2 (local stores are
    write-through) and reloads them from L1, where they hit (99.9% on the H100:
    validation/results/h100/spill-probe-ncu-2026-11-23.csv). The warp does not wait for the stores.
    `index` names the spill slot: a CTA that spills the same slot again rewrites the same lines."""

    index: int
    bytes: float


Step = Load | Store | Atomic | Mma | Vector | SmemRoundTrip | Spill


@dataclass(frozen=True)
class Stream:
    """One tile of a tensor loaded per loop iteration, walked at a constant stride: iteration i loads tile
    `first + stride * i` of `region`, `bytes` long, or `edge_bytes` for tile `edge` (a partial last block)."""

    tensor: str
    region: Hashable
    first: int
    stride: int
    bytes: float
    edge: int | None = None
    edge_bytes: float = 0.0

    def load(self, i: int) -> Load:
        index = self.first + self.stride * i
        return Load(self.tensor, self.region, index, self.edge_bytes if index == self.edge else self.bytes)


@dataclass(frozen=True)
class Loop:
    """`iterations` repeats of: its loads (prefetched up to num_stages ahead), then its compute steps.

    `loads(i)` and `compute(i)` give iteration i's steps; iterations whose steps differ only
    in tile index have equal amounts, which the fast mode relies on. A loop made by `streamed_loop` also
    holds them as data (`streams`, `runs`), which the compiled engine reads without calling back.
    """

    iterations: int
    loads: Callable[[int], tuple[Load, ...]]
    compute: Callable[[int], tuple[Step, ...]]
    overlap_vector: bool = False  # FlashAttention-3: softmax of i runs under the matmuls of i+1
    streams: tuple[Stream, ...] | None = None  # what `loads` gives, as data (streamed_loop)
    runs: tuple[tuple[int, tuple[Step, ...]], ...] | None = None  # what `compute` gives, as data (streamed_loop)


def streamed_loop(iterations: int, streams: tuple[Stream, ...], runs: tuple[tuple[int, tuple[Step, ...]], ...],
                  overlap_vector: bool = False) -> Loop:
    """A loop whose iteration i loads one tile of each stream and computes the steps of the last run starting at or
    before i (runs: (first iteration, steps), the first at 0, in order). `loads` and `compute` are derived from that
    data, so both engines read the one definition."""
    starts = [start for start, _ in runs]
    if not runs or starts[0] != 0 or any(a >= b for a, b in zip(starts, starts[1:])):
        raise ValueError(f"runs must start at iteration 0 and rise strictly: {starts}")
    bodies = [steps for _, steps in runs]

    def loads(i: int) -> tuple[Load, ...]:
        return tuple(stream.load(i) for stream in streams)

    def compute(i: int) -> tuple[Step, ...]:
        return bodies[bisect_right(starts, i) - 1]

    return Loop(iterations, loads, compute, overlap_vector, streams=tuple(streams), runs=tuple(runs))


@dataclass(frozen=True)
class CtaProgram:
    prologue: tuple[Step, ...] = ()
    loop: Loop | None = None
    epilogue: tuple[Step, ...] = ()


@dataclass(frozen=True)
class Launch:
    """One kernel launch: a grid of CTAs with the resources each needs and what each does."""

    name: str
    grid: int
    warps_per_cta: int
    smem_buffers: Mapping[str, int]  # buffer name -> bytes of shared memory per CTA
    registers_per_thread: int
    num_stages: int
    program: Callable[[int], CtaProgram]  # program id -> what that CTA does
    # CTAs with equal classes do equal amounts of work (only their tiles' names differ).
    work_class: Callable[[int], Hashable] = field(default=lambda pid: 0)
    order: Callable[[int], int] | None = None  # dispatch position -> program id; None: program-id order
    # The longest CTA loop: fast mode batches every CTA's loop alike, so that CTAs reading the
    # same tiles in step stay in step (None: each CTA's own loop length).
    loop_iterations: int | None = None
    # CTAs per repeating unit in program-id order (e.g. the q-blocks of one kv head): the launch is
    # grid / repeat_unit copies of the same work on other data, which lets fast mode simulate a
    # shorter launch and add the rest at its steady rate (memsim.engine.extrapolate).
    repeat_unit: int | None = None
    # At most this many CTAs resident at once, however many fit: a persistent grid whose work items go to
    # whichever of its CTAs is free (memsim.schedules.orders.persistent_dynamic). None: as many as fit.
    resident_ctas: int | None = None
    # SASS instructions each warp issues per loop iteration, where known (memsim.resources.CtaResources): the
    # engine then charges them to the SM's warp schedulers (memsim.engine.cta.compute). None: not modelled.
    loop_instructions: float | None = None

    @property
    def smem_bytes_per_cta(self) -> int:
        return int(sum(self.smem_buffers.values()))


def ordered_atomic_rounds(launch: "Launch") -> int:
    """The ordered atomics each thread of the launch's first CTA waits out one after another, outside its loop
    (Atomic.ordered_rounds: linear attention's state reduction); 0 where it has none."""
    program = launch.program(0)
    return max((s.ordered_rounds for s in (*program.prologue, *program.epilogue) if isinstance(s, Atomic)),
               default=0)


def spill_steps(spill_bytes_per_cta: int, spill_bytes_per_iteration: int) -> tuple[tuple[Spill, ...], tuple[Spill, ...]]:
    """(once at the CTA's start, after each loop iteration's compute): a spilling kernel's local-memory stores
    (TileConfig.spill_bytes_per_cta, _per_iteration), each into its own lines of the CTA's slot; none for 0."""
    once = (Spill(1, spill_bytes_per_cta),) if spill_bytes_per_cta else ()
    each = (Spill(0, spill_bytes_per_iteration),) if spill_bytes_per_iteration else ()
    return once, each

