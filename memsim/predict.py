"""memsim.predict: one algorithm, one shape, one GPU -> bytes, FLOPs, latency, bound."""

import dataclasses
from typing import Mapping

from memsim.algorithms import ALGORITHMS, PASSES
from memsim.errors import MemsimError
from memsim.hardware import DEFAULT_GPU, GPUSpec, load_gpu
from memsim.resources import gives_instructions, with_resources
from memsim.result import KernelPrediction, Prediction
from memsim.roofline import kernel_time
from memsim.schedules.orders import DEFAULT_GROUP, reorder
from memsim.workload import AttentionShape, TileConfig
from memsim.writes import with_resident_writes

ENGINES = ("analytic", "des")


def algorithm(name: str):
    if name not in ALGORITHMS:
        raise MemsimError(f"unknown algorithm {name!r}; use one of {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]


Q_RELOAD_ALGORITHMS = ("flash2",)  # schedules that model TileConfig.q_reload
V_PREFETCH_ALGORITHMS = ("flash_decoding", "paged", "flash_decoding_pp")  # schedules that model TileConfig.v_prefetch
LSE_OUTPUT_ALGORITHMS = ("flash2", "flash3", "flash_decoding")  # forwards that model TileConfig.lse_output
DQ_ALGORITHMS = ("flash2",)  # backward schedules that model TileConfig.dq
KEY_ORDER_ALGORITHMS = ("flash2",)  # forward schedules that model TileConfig.key_order
ATOMIC_SEM_ALGORITHMS = ("linear",)  # whose ordered atomics TileConfig.atomic_sem describes (its state kernel)
SPILL_ALGORITHMS = ("flash2", "flash_decoding")  # schedules that model TileConfig.spill_bytes_per_* (their forward;
# flash2's backward too, in its dK/dV kernel with dq "separate")


def resolve_tiles(gpu: GPUSpec, algo: str, shape: AttentionShape, **overrides) -> TileConfig:
    """The algorithm's default tiles for this GPU and shape, with the given fields replaced."""
    base = algorithm(algo).default_tiles(gpu, shape)
    given = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(base, **given) if given else base


def predict(algo: str = "flash2", shape: AttentionShape | None = None, gpu: GPUSpec | str = DEFAULT_GPU,
            tiles: TileConfig | None = None, pass_: str = "fwd", engine: str = "analytic",
            calibrated: bool = True, fast: bool = True, order: str = "pid", group: int = DEFAULT_GROUP,
            ctas: int | None = None, resources: Mapping | None = None) -> Prediction:
    """Predict one attention call. `gpu` is a GPUSpec, a preset name or a YAML path; `tiles`
    defaults to the algorithm's own choice; `calibrated` uses measured ceilings where the GPU has them.
    Discrete-event engine only: `fast` merges identical CTAs and batches long loops (`fast=False`
    simulates every tile); `order` dispatches CTAs in program-id order ("pid"), grouped ("swizzle",
    `group` rows of (batch, head) per group) or on a persistent grid ("persistent", `ctas` CTAs).
    `resources` maps launch names (or memsim.resources.FIRST_LAUNCH) to memsim.resources.CtaResources: the
    registers and shared memory a CTA of that launch really holds, in place of memsim's estimates."""
    return run(algo, shape, gpu, tiles, pass_, engine, calibrated, fast, order, group, ctas,
               resources=resources)[0]


def run(algo: str = "flash2", shape: AttentionShape | None = None, gpu: GPUSpec | str = DEFAULT_GPU,
        tiles: TileConfig | None = None, pass_: str = "fwd", engine: str = "analytic", calibrated: bool = True,
        fast: bool = True, order: str = "pid", group: int = DEFAULT_GROUP, ctas: int | None = None,
        trace: bool = False, progress=None, resources: Mapping | None = None) -> tuple[Prediction, list]:
    """memsim.predict, with the simulated launches behind it (memsim.engine.LaunchResult; none for the
    analytic model). `trace` keeps each unit's busy intervals for memsim.engine.trace; `progress(done,
    total)` hears of CTAs as the discrete-event engine finishes them."""
    spec = gpu if isinstance(gpu, GPUSpec) else load_gpu(gpu)
    shape = shape or AttentionShape()
    alg = algorithm(algo)
    if pass_ not in PASSES:
        raise MemsimError(f"pass {pass_!r} is not known; use one of {', '.join(PASSES)}")
    if pass_ not in alg.passes:
        raise MemsimError(f"{algo} models only the {', '.join(alg.passes)} pass, not {pass_!r}")
    if engine not in ENGINES:
        raise MemsimError(f"engine {engine!r} is not known; use one of {', '.join(ENGINES)}")
    if engine != "des" and order != "pid":
        raise MemsimError(f"order {order!r} needs engine 'des': the analytic model has no dispatch order")
    tiles = tiles or alg.default_tiles(spec, shape)
    if tiles.q_reload and alg.name not in Q_RELOAD_ALGORITHMS:
        raise MemsimError(f"q_reload applies to {', '.join(Q_RELOAD_ALGORITHMS)} (a kernel that reads its Q tile "
                          f"again for every key block); {alg.name} keeps Q on chip")
    if not tiles.v_prefetch and alg.name not in V_PREFETCH_ALGORITHMS:
        raise MemsimError(f"v_prefetch = false (V loaded in the iteration that uses it) applies to "
                          f"{', '.join(V_PREFETCH_ALGORITHMS)}; {alg.name} keeps V in its shared-memory stages")
    if not tiles.lse_output and alg.name not in LSE_OUTPUT_ALGORITHMS:
        raise MemsimError(f"lse_output = false (O written without its log-sum-exp) applies to the forward of "
                          f"{', '.join(LSE_OUTPUT_ALGORITHMS)}; leave it true for {alg.name}")
    if not tiles.lse_output and "bwd" in pass_:
        raise MemsimError(f"lse_output = false describes an inference forward; pass {pass_!r} has a backward, which "
                          f"reads the forward's log-sum-exp: use pass fwd")
    if tiles.key_order != "ascending" and (alg.name not in KEY_ORDER_ALGORITHMS or pass_ != "fwd"):
        raise MemsimError(f"key_order = {tiles.key_order!r} describes the forward of {', '.join(KEY_ORDER_ALGORITHMS)} "
                          f"(pass fwd), not {alg.name} pass {pass_!r}; leave it at 'ascending'")
    if tiles.dq != "atomic" and alg.name not in DQ_ALGORITHMS:
        raise MemsimError(f"dq applies to the backward of {', '.join(DQ_ALGORITHMS)}; {alg.name}'s computes dQ "
                          f"with atomics, leave dq at 'atomic'")
    if tiles.dq != "atomic" and "bwd" not in pass_:
        raise MemsimError(f"dq = {tiles.dq!r} describes a backward pass; pass {pass_!r} has none (use bwd or fwd+bwd)")
    if tiles.atomic_sem != "acq_rel" and alg.name not in ATOMIC_SEM_ALGORITHMS:
        raise MemsimError(f"atomic_sem = {tiles.atomic_sem!r} describes the atomics that add the partial states of "
                          f"{', '.join(ATOMIC_SEM_ALGORITHMS)}; {alg.name} waits for no ordered atomics, leave it at "
                          f"'acq_rel'")
    if tiles.spills and alg.name not in SPILL_ALGORITHMS:
        raise MemsimError(f"register spills (spill_bytes_per_iteration, spill_bytes_per_cta) are modelled for the "
                          f"forward of {', '.join(SPILL_ALGORITHMS)}, not {alg.name}; leave them at 0")
    if tiles.spills and pass_ == "fwd+bwd":
        raise MemsimError("register spills describe one pass's main kernel (the forward, or the backward's dK/dV "
                          "kernel with dq 'separate'); pass 'fwd+bwd' has both: predict them one pass at a time")
    if tiles.spills and pass_ == "bwd" and (alg.name != "flash2" or tiles.dq != "separate"):
        raise MemsimError(f"register spills of a backward are modelled for flash2's dK/dV kernel with dq 'separate', "
                          f"not {alg.name} with dq {tiles.dq!r}; leave them at 0")
    ceilings = spec.ceilings(calibrated, tiles.mma)
    results, notes = [], ()
    if engine == "des":
        from memsim.engine.report import kernel_prediction

        results, notes = _simulate(alg, spec, ceilings, shape, tiles, pass_, fast, order, group, ctas, trace,
                                   progress, resources)
        kernels = tuple(kernel_prediction(r) for r in results)
    else:
        if not tiles.v_prefetch:
            notes = ("v_prefetch = false changes nothing here: the analytic model has no per-iteration load latency "
                     "(use --engine des)",)
        if gives_instructions(resources):
            notes += ("loop instructions change nothing here: the analytic model has no warp schedulers "
                      "(use --engine des)",)
        if tiles.key_order != "ascending":
            notes += (f"key_order = {tiles.key_order!r} changes nothing here: the analytic model reads each head's "
                      "K and V from HBM as the walk first to last would (use --engine des, whose L2 loses them to "
                      "its sets)",)
        kernels = tuple(KernelPrediction.from_time(kernel_time(spec, ceilings, with_resident_writes(k, ceilings, spec.l2_bytes)))
                        for k in with_resources(alg.kernels(spec, shape, tiles, pass_), resources))
    prediction = Prediction(
        gpu=spec.name, algo=alg.name, pass_=pass_, engine=engine, ceilings=ceilings.origin,
        shape=shape.as_dict(), tiles=tiles.as_dict(), kernels=kernels,
        sram_limit_bytes=spec.smem_per_block_optin_bytes, assumptions=alg.assumptions + tuple(notes),
    )
    return prediction, results


def _simulate(alg, spec, ceilings, shape, tiles, pass_, fast, order, group, ctas, trace, progress=None,
              resources=None):
    from memsim.engine import simulate

    if alg.schedule is None:
        raise MemsimError(f"{alg.name} has no discrete-event schedule yet; use --engine analytic")
    launches, notes = reorder(with_resources(alg.schedule(shape, tiles, pass_), resources), order, spec, shape,
                              group, ctas)
    return simulate(spec, ceilings, launches, fast=fast, trace=trace, progress=progress), notes

