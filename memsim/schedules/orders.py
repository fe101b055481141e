"""Dispatch orders: the same work started in another sequence, or folded into a persistent grid.

The block scheduler starts CTAs in dispatch order as slots free up (memsim.engine.dispatch);
`Launch.order` maps dispatch position -> program id, and the order decides which tiles are
live in L2 together. Each function here takes a Launch and returns another; none changes
what a CTA loads or computes, only when it runs (persistent: on which CTA).
"""

import dataclasses
from bisect import bisect_right
from itertools import accumulate

from memsim.errors import MemsimError
from memsim.hardware.spec import GPUSpec
from memsim.occupancy import occupancy
from memsim.schedules.steps import Atomic, CtaProgram, Launch, Load, Loop, Step, Store
from memsim.workload.shape import AttentionShape

ORDERS = ("pid", "swizzle", "persistent")
DEFAULT_GROUP = 8  # GROUP_SIZE_M of Triton tutorial 03-matrix-multiplication's autotune configs
PRIVATE_INDEX_STRIDE = 1 << 32  # a work item's private tile indices stay below this


def _positive(what: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MemsimError(f"{what} = {value!r} must be a positive whole number")


def grouped_tile(position: int, rows: int, columns: int, group: int) -> tuple[int, int]:
    """(row, column) of the output tile dispatched at `position` in grouped ordering (Triton tutorial
    03-matrix-multiplication, "L2 Cache Optimizations"): bands of `group` rows, walked column by
    column; the last band has the rows that are left."""
    band = group * columns
    first_row = (position // band) * group
    height = min(rows - first_row, group)
    within = position % band
    return first_row + within % height, within // height


def swizzle(launch: Launch, group: int, columns: int) -> Launch:
    """Grouped ordering. Program ids are row-major on a grid of (grid / columns) rows x `columns`
    tiles (pid = row * columns + column); consecutive dispatches stay within `group` rows, so the
    CTAs in flight touch `group` row panels and few column panels instead of one row and every column."""
    _positive("swizzle group", group)
    _positive("swizzle columns", columns)
    if launch.grid % columns:
        raise MemsimError(f"{launch.name} has {launch.grid} CTAs, not whole rows of {columns} tiles; "
                          f"swizzle needs a grid that is a multiple of its row length")
    rows = launch.grid // columns

    def order(position: int) -> int:
        row, column = grouped_tile(position, rows, columns, group)
        return row * columns + column

    return dataclasses.replace(launch, order=order)


def persistent(launch: Launch, ctas: int) -> Launch:
    """A persistent grid: `ctas` CTAs, CTA c running the work items at dispatch positions
    c, c + ctas, c + 2 ctas, ... of `launch`, one after another.

    A true persistent loop, not only an order: each CTA's items become one pipelined loop, so an
    item's first K/V tiles are in flight while the previous item finishes (as FlashAttention-3's
    persistent kernel does), and an item waits for its own CTA, not for the first free slot.
    The engine needs nothing new for it."""
    _positive("persistent CTAs", ctas)
    ctas = min(ctas, launch.grid)
    dispatched = launch.order or (lambda position: position)

    def items(c: int) -> list[int]:
        return [dispatched(position) for position in range(c, launch.grid, ctas)]

    def program(c: int) -> CtaProgram:
        return chained([launch.program(pid) for pid in items(c)])

    def work_class(c: int):
        return tuple(launch.work_class(pid) for pid in items(c))

    longest = None if launch.loop_iterations is None else max(_chained_length(launch, items(c)) for c in range(ctas))
    return dataclasses.replace(launch, grid=ctas, program=program, work_class=work_class, order=None,
                               loop_iterations=longest)


def persistent_dynamic(launch: Launch, ctas: int) -> Launch:
    """A persistent grid of `ctas` CTAs whose work items go, in dispatch order, to whichever CTA is free
    (an atomic tile counter: FlashAttention-3's DynamicPersistentTileScheduler, used when causal or local
    because items differ in length, hopper/flash_fwd_launch_template.h). Item by item this is the block
    scheduler's own first-free-slot dispatch with at most `ctas` resident (a CTA's next item starts as its
    last ends, and the per-item launch cost the persistent loop saves is not modelled)."""
    _positive("persistent CTAs", ctas)
    return dataclasses.replace(launch, resident_ctas=min(ctas, launch.grid))


def _chained_length(launch: Launch, pids: list[int]) -> int:
    """Iterations of the loop `chained` builds from these work items."""
    programs = [launch.program(pid) for pid in pids]
    return sum(max(1, p.loop.iterations if p.loop else 0) for p in programs)


def chained(programs: list[CtaProgram]) -> CtaProgram:
    """Several CTA programs run back to back as one loop. The first keeps its prologue; item k
    takes max(1, its iterations) iterations; a later item's prologue runs, in order, at the start
    of its first iteration's compute, and each epilogue ends its item's last iteration's compute.
    So every iteration's prefetched loads are loop tiles (K/V), as in each item alone, while the
    next item's loop tiles start streaming under the previous item's last iterations. Private
    tiles (region None) get item-distinct indices, so item k+1's Q is not item k's."""
    spans = [max(1, p.loop.iterations if p.loop else 0) for p in programs]
    starts = list(accumulate(spans, initial=0))

    def locate(i: int) -> tuple[int, int, CtaProgram]:
        k = bisect_right(starts, i) - 1
        return k, i - starts[k], programs[k]

    def in_loop(p: CtaProgram, j: int) -> bool:
        return p.loop is not None and j < p.loop.iterations

    def loads(i: int) -> tuple[Load, ...]:
        k, j, p = locate(i)
        return _private(tuple(p.loop.loads(j)), k) if in_loop(p, j) else ()

    def compute(i: int) -> tuple[Step, ...]:
        k, j, p = locate(i)
        steps = tuple(p.prologue) if j == 0 < k else ()
        steps += tuple(p.loop.compute(j)) if in_loop(p, j) else ()
        steps += tuple(p.epilogue) if j == spans[k] - 1 else ()
        return _private(steps, k)

    overlap = any(p.loop.overlap_vector for p in programs if p.loop is not None)
    return CtaProgram(prologue=programs[0].prologue, loop=Loop(starts[-1], loads, compute, overlap_vector=overlap))


def _private(steps: tuple, item: int) -> tuple:
    if item == 0:
        return steps
    return tuple(dataclasses.replace(s, index=item * PRIVATE_INDEX_STRIDE + s.index)
                 if isinstance(s, (Load, Store, Atomic)) and s.region is None else s for s in steps)


def reorder(launches: list[Launch], order: str, gpu: GPUSpec, shape: AttentionShape, group: int = DEFAULT_GROUP,
            ctas: int | None = None) -> tuple[list[Launch], list[str]]:
    """Apply a named order to every launch of a call; returns the launches and one note per change.

    swizzle: a row is one (batch, head), its columns the CTAs of that head, since memsim's schedules
    number program ids tile-fastest (pid = tile + tiles * (batch * heads + head)); a launch whose
    grid is not whole rows of q heads (or of K/V heads) keeps program-id order. persistent: `ctas`
    CTAs, by default as many as fit on the GPU at once, each taking every ctas-th item (static), or,
    for a causal or windowed shape whose items differ in length, the next item when it is free
    (dynamic, as FlashAttention-3)."""
    if order not in ORDERS:
        raise MemsimError(f"dispatch order {order!r} is not known; use one of {', '.join(ORDERS)}")
    if order == "pid":
        return list(launches), []
    out, notes = [], []
    for launch in launches:
        if order == "swizzle":
            changed, note = _swizzled(launch, group, shape)
        elif shape.causal or shape.window is not None:
            changed, note = _persistent_dynamic(launch, gpu, ctas)
        else:
            changed, note = _persistent(launch, gpu, ctas)
        out.append(changed)
        notes.append(note)
    return out, notes


def _swizzled(launch: Launch, group: int, shape: AttentionShape) -> tuple[Launch, str]:
    _positive("swizzle group", group)
    rows = ((shape.batch * shape.q_heads, "(batch, head)"), (shape.batch * shape.kv_heads, "(batch, K/V head)"))
    for heads, what in rows:
        if launch.grid % heads == 0 and launch.grid > heads > 1:
            columns = launch.grid // heads
            return (swizzle(launch, group, columns),
                    f"{launch.name}: grouped dispatch, {group} {what} rows of {columns} CTAs at a time")
    return launch, f"{launch.name}: program-id order (its {launch.grid} CTAs are not several per head)"


def _persistent_dynamic(launch: Launch, gpu: GPUSpec, ctas: int | None) -> tuple[Launch, str]:
    fit = occupancy(gpu, launch.smem_bytes_per_cta, launch.warps_per_cta, launch.registers_per_thread,
                    launch.grid, launch.name).slots
    n = min(fit if ctas is None else ctas, fit, launch.grid)
    return (persistent_dynamic(launch, n),
            f"{launch.name}: persistent grid of {n} CTAs, each taking the next work item when it is free "
            f"(dynamic: the items differ in length)")


def _persistent(launch: Launch, gpu: GPUSpec, ctas: int | None) -> tuple[Launch, str]:
    if ctas is None:
        ctas = occupancy(gpu, launch.smem_bytes_per_cta, launch.warps_per_cta, launch.registers_per_thread,
                         launch.grid, launch.name).slots
    _positive("persistent CTAs", ctas)
    n = min(ctas, launch.grid)
    if n == launch.grid:
        return persistent(launch, n), f"{launch.name}: persistent grid of {n} CTAs, one work item each"
    return (persistent(launch, n),
            f"{launch.name}: persistent grid of {n} CTAs, each looping over work items {n} apart")
