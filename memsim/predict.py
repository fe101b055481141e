"""memsim.predict: one algorithm, one shape, one GPU -> bytes, FLOPs, latency, bound."""

import dataclasses

from memsim.algorithms import ALGORITHMS, PASSES
from memsim.errors import MemsimError
from memsim.hardware import DEFAULT_GPU, GPUSpec, load_gpu
from memsim.result import KernelPrediction, Prediction
from memsim.roofline import kernel_time
from memsim.workload import AttentionShape, TileConfig

ENGINES = ("analytic", "des")


def algorithm(name: str):
    if name not in ALGORITHMS:
        raise MemsimError(f"unknown algorithm {name!r}; use one of {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]


def resolve_tiles(gpu: GPUSpec, algo: str, shape: AttentionShape, **overrides) -> TileConfig:
    """The algorithm's default tiles for this GPU and shape, with the given fields replaced."""
    base = algorithm(algo).default_tiles(gpu, shape)
    given = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(base, **given) if given else base


def predict(algo: str = "flash2", shape: AttentionShape | None = None, gpu: GPUSpec | str = DEFAULT_GPU,
            tiles: TileConfig | None = None, pass_: str = "fwd", engine: str = "analytic",
            calibrated: bool = True, fast: bool = True) -> Prediction:
    """Predict one attention call. `gpu` is a GPUSpec, a preset name or a YAML path; `tiles`
    defaults to the algorithm's own choice; `calibrated` uses measured ceilings where the GPU has them;
    `fast` (discrete-event engine only) merges identical CTAs and long loops, `fast=False` simulates every tile."""
    spec = gpu if isinstance(gpu, GPUSpec) else load_gpu(gpu)
    shape = shape or AttentionShape()
    alg = algorithm(algo)
    if pass_ not in PASSES:
        raise MemsimError(f"pass {pass_!r} is not known; use one of {', '.join(PASSES)}")
    if pass_ not in alg.passes:
        raise MemsimError(f"{algo} models only the {', '.join(alg.passes)} pass, not {pass_!r}")
    if engine not in ENGINES:
        raise MemsimError(f"engine {engine!r} is not known; use one of {', '.join(ENGINES)}")
    tiles = tiles or alg.default_tiles(spec, shape)
    ceilings = spec.ceilings(calibrated)
    if engine == "des":
        kernels = _simulated(alg, spec, ceilings, shape, tiles, pass_, fast)
    else:
        kernels = tuple(KernelPrediction.from_time(kernel_time(spec, ceilings, k))
                        for k in alg.kernels(spec, shape, tiles, pass_))
    return Prediction(
        gpu=spec.name, algo=alg.name, pass_=pass_, engine=engine, ceilings=ceilings.origin,
        shape=shape.as_dict(), tiles=tiles.as_dict(), kernels=kernels,
        sram_limit_bytes=spec.smem_per_block_optin_bytes, assumptions=alg.assumptions,
    )


def _simulated(alg, spec, ceilings, shape, tiles, pass_, fast) -> tuple[KernelPrediction, ...]:
    from memsim.engine import simulate
    from memsim.engine.report import kernel_prediction

    if alg.schedule is None:
        raise MemsimError(f"{alg.name} has no discrete-event schedule yet; use --engine analytic")
    launches = alg.schedule(shape, tiles, pass_)
    return tuple(kernel_prediction(r) for r in simulate(spec, ceilings, launches, fast=fast))
