"""Tile sweeps: every BLOCK_M x BLOCK_N x num_stages x num_warps candidate of an algorithm on one
shape and GPU, with the shared memory each buffer takes, the register estimate, CTAs per SM,
whether it fits and why not, and (for `sweep`) the predicted latency and the best candidate.

The buffers and registers are the algorithm's own closed form (memsim/algorithms/<algo>.py,
`KernelCost.smem_buffers`), asked of the GPU with its limits lifted so that a candidate that does not
fit still reports what it would need; fit and CTAs per SM are then judged against the real limits
with the CUDA occupancy rules (memsim.occupancy).

`sram_bytes` replaces the shared memory a CTA may use (default: the GPU's opt-in limit per block);
the SM then holds that plus its per-block reservation, so one such CTA fits.

The FlashAttention paper's rule (Dao et al. 2022, Algorithm 1, line 1) sizes blocks for an SRAM of
M elements: here M = the shared memory a CTA may use / bytes per element of the Q/K/V dtype
(A100: 192 KiB / 2 B = 98304 fp16 elements, the paper's example in tests/test_paper.py).

Latencies run in worker processes (`workers`), with a rich progress bar on a terminal. The best
candidate is the fastest whose register estimate does not spill: memsim charges nothing for spills,
so a spilling candidate's latency is optimistic.
"""

import dataclasses
import itertools
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from math import ceil

from memsim.algorithms.paper import paper_block_sizes
from memsim.errors import MemsimError
from memsim.hardware import GPUSpec, load_gpu
from memsim.occupancy import occupancy
from memsim.predict import ENGINES, algorithm, predict
from memsim.workload.shape import AttentionShape
from memsim.workload.tiles import TileConfig

BLOCK_SIZES = (16, 32, 64, 128, 256)  # tl.dot needs at least 16 rows and columns
NUM_STAGES = (1, 2, 3, 4)  # Triton's software pipelining depth; 1 = no prefetch
NUM_WARPS = (4, 8)  # the fused-attention tutorial's choices on sm_80/sm_90
UNLIMITED = 2**40  # a limit nothing reaches: lets an algorithm report what an unfit candidate would need


@dataclass(frozen=True)
class Candidate:
    """One tile config: what it needs, whether it fits, and (swept) its predicted latency."""

    block_m: int
    block_n: int
    num_stages: int
    num_warps: int
    kernel: str = ""  # the launch whose buffers are listed: the one needing the most shared memory
    smem_buffers: dict = field(default_factory=dict)  # buffer -> bytes per CTA
    smem_bytes: int = 0
    registers_per_thread: int = 0
    ctas_per_sm: int = 0  # 0 when it does not fit
    limiter: str = ""  # what stops more CTAs per SM: smem, registers, warps, ctas
    fits: bool = False
    why_not: str = ""
    warnings: tuple[str, ...] = ()
    latency_s: float | None = None
    bound: str | None = None

    @property
    def tiles(self) -> dict:
        return {"block_m": self.block_m, "block_n": self.block_n, "num_stages": self.num_stages,
                "num_warps": self.num_warps}

    def as_dict(self) -> dict:
        return dataclasses.asdict(self) | {"warnings": list(self.warnings)}


def rank(c: Candidate) -> tuple:
    """Sort key: candidates whose register estimate spills last (the model does not charge for spills), then
    fastest first; among equal latencies the one needing least shared memory, fewest warps, fewest stages."""
    return (bool(c.warnings), c.latency_s, c.smem_bytes, c.num_warps, c.num_stages)


@dataclass(frozen=True)
class TileSweep:
    """Every candidate of one algorithm, shape and GPU; `engine` is None when latency was not predicted."""

    algo: str
    pass_: str
    gpu: str
    shape: AttentionShape
    sram_limit_bytes: int
    engine: str | None
    candidates: tuple[Candidate, ...]
    default_tiles: dict
    paper_rule: dict  # block_m, block_n, t_r, t_c
    paper_rule_sram: dict  # bytes, element_bytes, elements
    paper_rule_candidate: Candidate

    @property
    def fitting(self) -> list[Candidate]:
        return [c for c in self.candidates if c.fits]

    @property
    def best(self) -> Candidate | None:
        """The fitting candidate first by `rank`: the fastest that does not spill (None without latencies)."""
        timed = [c for c in self.fitting if c.latency_s is not None]
        return min(timed, key=rank) if timed else None

    def as_dict(self) -> dict:
        best = self.best
        return {"algo": self.algo, "pass": self.pass_, "gpu": self.gpu, "shape": self.shape.as_dict(),
                "sram_limit_bytes": self.sram_limit_bytes, "engine": self.engine,
                "count": len(self.candidates), "fitting": len(self.fitting),
                "best": best.as_dict() if best else None, "default_tiles": self.default_tiles,
                "paper_rule": self.paper_rule, "paper_rule_sram": self.paper_rule_sram,
                "paper_rule_candidate": self.paper_rule_candidate.as_dict(),
                "candidates": [c.as_dict() for c in self.candidates]}


def candidate_grid(block_m=BLOCK_SIZES, block_n=BLOCK_SIZES, num_stages=NUM_STAGES,
                   num_warps=NUM_WARPS) -> list[tuple[int, int, int, int]]:
    """Every (BLOCK_M, BLOCK_N, num_stages, num_warps), BLOCK_M slowest."""
    return list(itertools.product(block_m, block_n, num_stages, num_warps))


def with_sram(gpu: GPUSpec, sram_bytes: int | None) -> GPUSpec:
    """`gpu` with `sram_bytes` of shared memory per CTA (and that plus the per-block reservation per SM)."""
    if sram_bytes is None:
        return gpu
    if isinstance(sram_bytes, bool) or not isinstance(sram_bytes, int) or sram_bytes <= 0:
        raise MemsimError(f"sram_bytes = {sram_bytes!r} must be a positive whole number of bytes, e.g. 98304")
    return dataclasses.replace(gpu, name=f"{gpu.name} with {sram_bytes} B shared memory per CTA",
                               smem_per_block_optin_bytes=sram_bytes,
                               smem_per_sm_bytes=sram_bytes + gpu.smem_reserved_per_block_bytes)


def paper_rule(shape: AttentionShape, sram_bytes: int) -> tuple[dict, dict]:
    """The paper's B_r, B_c, T_r, T_c for M = sram_bytes / element bytes; T_c over the keys (kv_len)."""
    elements = int(sram_bytes // shape.element_bytes)
    rule = paper_block_sizes(elements, shape.head_dim, shape.q_len)
    rule["t_c"] = ceil(shape.kv_len / rule["block_n"])
    return rule, {"bytes": sram_bytes, "element_bytes": shape.element_bytes, "elements": elements}


def _unlimited(gpu: GPUSpec) -> GPUSpec:
    return dataclasses.replace(gpu, smem_per_block_optin_bytes=UNLIMITED, smem_per_sm_bytes=UNLIMITED,
                               registers_per_sm=UNLIMITED, max_warps_per_sm=UNLIMITED)


def _why_not(gpu: GPUSpec, cost) -> str:
    """Empty when the launch fits one SM of `gpu`; else why, with the numbers."""
    smem = cost.smem_bytes_per_cta
    if smem > gpu.smem_per_block_optin_bytes:
        return f"{cost.name}: shared memory {smem} B > {gpu.smem_per_block_optin_bytes} B per CTA"
    try:
        occupancy(gpu, smem, cost.warps_per_cta, cost.registers_per_thread, cost.grid_ctas, cost.name)
    except MemsimError as err:
        return str(err)
    return ""


def _tiles(algo: str, gpu: GPUSpec, shape: AttentionShape, point: tuple[int, int, int, int]) -> TileConfig:
    bm, bn, stages, warps = point
    return dataclasses.replace(algorithm(algo).default_tiles(gpu, shape), block_m=bm, block_n=bn,
                               num_stages=stages, num_warps=warps)


def evaluate(algo: str, shape: AttentionShape, gpu: GPUSpec, point: tuple[int, int, int, int], pass_: str = "fwd",
             engine: str | None = None, calibrated: bool = True) -> Candidate:
    """One candidate (BLOCK_M, BLOCK_N, num_stages, num_warps); latency only if `engine` is given and it fits."""
    head = dict(zip(("block_m", "block_n", "num_stages", "num_warps"), point))
    try:
        tiles = _tiles(algo, gpu, shape, point)
        costs = algorithm(algo).kernels(_unlimited(gpu), shape, tiles, pass_)
    except MemsimError as err:
        return Candidate(**head, why_not=str(err))
    main = max(costs, key=lambda c: c.smem_bytes_per_cta)
    why = next((w for w in (_why_not(gpu, c) for c in costs) if w), "")
    warnings = tuple(f"{c.name}: {c.registers_per_thread} registers per thread estimated, more than "
                     f"{gpu.max_registers_per_thread}: spills" for c in costs
                     if c.registers_per_thread > gpu.max_registers_per_thread)
    found = dict(head, kernel=main.name, smem_buffers=dict(main.smem_buffers), smem_bytes=main.smem_bytes_per_cta,
                 registers_per_thread=main.registers_per_thread, warnings=warnings)
    if why:
        return Candidate(**found, why_not=why)
    occ = occupancy(gpu, main.smem_bytes_per_cta, main.warps_per_cta, main.registers_per_thread, main.grid_ctas)
    found.update(ctas_per_sm=occ.ctas_per_sm, limiter=occ.limiter, fits=True)
    if engine is not None:
        p = predict(algo, shape, gpu, tiles, pass_, engine, calibrated)
        found.update(latency_s=p.latency_s, bound=p.bound)
    return Candidate(**found)


@dataclass(frozen=True)
class _Job:
    """What every candidate of one sweep shares; sent once to each worker process."""

    algo: str
    shape: AttentionShape
    gpu: GPUSpec
    pass_: str
    engine: str | None
    calibrated: bool

    def run(self, point: tuple[int, int, int, int]) -> Candidate:
        return evaluate(self.algo, self.shape, self.gpu, point, self.pass_, self.engine, self.calibrated)


_WORKER_JOB: _Job | None = None


def _start_worker(job: _Job) -> None:
    global _WORKER_JOB
    _WORKER_JOB = job


def _run_chunk(points: list) -> list[Candidate]:
    return [_WORKER_JOB.run(p) for p in points]


def _portable(gpu: GPUSpec) -> GPUSpec:
    """The spec with plain dicts for its read-only mappings, so it pickles to worker processes."""
    cal = gpu.calibration
    if cal is not None:
        cal = dataclasses.replace(cal, tensor_flops_per_s=dict(cal.tensor_flops_per_s), sources=dict(cal.sources))
    return dataclasses.replace(gpu, tensor_flops_per_s=dict(gpu.tensor_flops_per_s), links=dict(gpu.links),
                               sources=dict(gpu.sources), calibration=cal)


@contextmanager
def _progress(show: bool, total: int, label: str):
    """Yields advance(n); draws a rich progress bar on stderr when `show` and stderr is a terminal."""
    from rich.console import Console

    console = Console(stderr=True)
    if not (show and console.is_terminal):
        yield lambda n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def _run_all(job: _Job, points: list, workers: int, progress: bool) -> list[Candidate]:
    with _progress(progress, len(points), f"{job.algo} tiles") as advance:
        if workers <= 1:
            out = []
            for p in points:
                out.append(job.run(p))
                advance(1)
            return out
        size = max(1, len(points) // (workers * 4))
        chunks = [points[i:i + size] for i in range(0, len(points), size)]
        results: list = [None] * len(chunks)
        with ProcessPoolExecutor(workers, initializer=_start_worker,
                                 initargs=(dataclasses.replace(job, gpu=_portable(job.gpu)),)) as pool:
            futures = {pool.submit(_run_chunk, chunk): i for i, chunk in enumerate(chunks)}
            for done in as_completed(futures):
                results[futures[done]] = done.result()
                advance(len(chunks[futures[done]]))
        return [c for chunk in results for c in chunk]


def _default_workers(engine: str | None) -> int:
    """The discrete-event engine takes seconds per candidate: every core. The analytic model takes about
    a millisecond, less than starting a process: one."""
    return (os.cpu_count() or 1) if engine == "des" else 1


def _check(algo: str, pass_: str, engine: str | None, grid: list) -> None:
    alg = algorithm(algo)
    if pass_ not in alg.passes:
        raise MemsimError(f"{algo} models only the {', '.join(alg.passes)} pass, not {pass_!r}")
    if engine is not None and engine not in ENGINES:
        raise MemsimError(f"engine {engine!r} is not known; use one of {', '.join(ENGINES)}")
    if engine == "des" and alg.schedule is None:
        raise MemsimError(f"{algo} has no discrete-event schedule yet; use engine 'analytic'")
    if not grid:
        raise MemsimError("no tile candidates: give at least one BLOCK_M, BLOCK_N, num_stages and num_warps")


def sweep(algo: str = "flash2", shape: AttentionShape | None = None, gpu: GPUSpec | str = "H100-SXM5-80GB", *,
          sram_bytes: int | None = None, pass_: str = "fwd", engine: str | None = "analytic", grid: list | None = None,
          workers: int | None = None, progress: bool = False, calibrated: bool = True) -> TileSweep:
    """Every candidate of `grid` (default candidate_grid()) with its buffers, fit and, unless `engine` is
    None, predicted latency; `workers` processes (default: see _default_workers), a progress bar if asked."""
    shape = shape or AttentionShape()
    grid = candidate_grid() if grid is None else list(grid)
    _check(algo, pass_, engine, grid)
    spec = with_sram(gpu if isinstance(gpu, GPUSpec) else load_gpu(gpu), sram_bytes)
    job = _Job(algo, shape, spec, pass_, engine, calibrated)
    found = _run_all(job, grid, workers or _default_workers(engine), progress)
    rule, rule_sram = paper_rule(shape, spec.smem_per_block_optin_bytes)
    rule_point = (rule["block_m"], rule["block_n"], 1, 4)
    default = algorithm(algo).default_tiles(spec, shape)
    return TileSweep(algo=algorithm(algo).name, pass_=pass_, gpu=spec.name, shape=shape,
                     sram_limit_bytes=spec.smem_per_block_optin_bytes, engine=engine, candidates=tuple(found),
                     default_tiles={k: getattr(default, k) for k in ("block_m", "block_n", "num_stages", "num_warps")},
                     paper_rule=rule, paper_rule_sram=rule_sram,
                     paper_rule_candidate=job.run(rule_point))


def sram_fit(algo: str = "flash2", shape: AttentionShape | None = None, gpu: GPUSpec | str = "H100-SXM5-80GB", *,
             sram_bytes: int | None = None, pass_: str = "fwd", grid: list | None = None) -> TileSweep:
    """Every candidate's shared memory, registers, CTAs per SM and fit, without latency."""
    return sweep(algo, shape, gpu, sram_bytes=sram_bytes, pass_=pass_, engine=None, grid=grid, workers=1)
