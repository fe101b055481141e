"""`kind: predict`: one shape on one GPU, one or several algorithms side by side (memsim.predict);
`plot:` draws them on the GPU's roofline."""

from dataclasses import dataclass

from memsim.algorithms import ALGORITHMS, PASSES
from memsim.cli.render import compare_table, prediction_table
from memsim.hardware import GPUSpec
from memsim.hardware.spec import MMA_PATHS
from memsim.plots.roofline import roofline_plot
from memsim.predict import predict, resolve_tiles
from memsim.result import Prediction
from memsim.scenario.schema import OMIT, Field, list_of, mapping, one_of, whole
from memsim.scenario.shape import build_shape, shape_field
from memsim.scenario.steps.base import CALIBRATED, ENGINE, GPU, StepKind, prediction_summary
from memsim.workload.shape import AttentionShape
from memsim.workload.tiles import DQ_MODES

# Tile overrides, named as memsim.TileConfig's fields; what is left out is the algorithm's own choice.
TILE_FIELDS = {name: Field(whole(1, example), OMIT) for name, example in (
    ("block_m", 128), ("block_n", 64), ("num_warps", 4), ("num_stages", 2), ("num_splits", 8), ("page_size", 16))}
TILE_FIELDS["mma"] = Field(one_of(MMA_PATHS, "matrix instruction"), OMIT)  # TileConfig.mma
TILE_FIELDS["dq"] = Field(one_of(DQ_MODES, "backward dQ mode"), OMIT)  # TileConfig.dq
TILE_FIELDS["spill_bytes_per_iteration"] = Field(whole(0, 7168), OMIT)  # TileConfig: register spills per key block
TILE_FIELDS["spill_bytes_per_cta"] = Field(whole(0, 8424), OMIT)  # TileConfig: register spills once per CTA

FIELDS = {
    "gpu": GPU,
    "algos": Field(list_of(one_of(ALGORITHMS, "algorithm"), example="[flash2, flash3]")),
    "shape": shape_field(),
    "tiles": Field(mapping(TILE_FIELDS), OMIT),
    "pass": Field(one_of(PASSES, "pass"), "fwd"),
    "engine": ENGINE,
    "calibrated": CALIBRATED,
}


@dataclass(frozen=True)
class Predicted:
    gpu: GPUSpec
    shape: AttentionShape
    calibrated: bool
    predictions: list[Prediction]


def run(step: dict) -> Predicted:
    gpu, shape = step["gpu"], build_shape(step["shape"])
    found = [predict(algo, shape, gpu, resolve_tiles(gpu, algo, shape, **step.get("tiles", {})), step["pass"],
                     step["engine"], step["calibrated"]) for algo in step["algos"]]
    return Predicted(gpu, shape, step["calibrated"], found)


def as_dict(out: Predicted) -> dict:
    first = out.predictions[0]
    return {"gpu": out.gpu.name, "engine": first.engine, "pass": first.pass_, "ceilings": first.ceilings,
            "shape": out.shape.as_dict(), "predictions": [prediction_summary(p) for p in out.predictions]}


def tables(out: Predicted) -> list:
    ps = out.predictions
    return [compare_table(ps) if len(ps) > 1 else prediction_table(ps[0])]


def plot(out: Predicted, step: dict, path) -> str:
    return roofline_plot(out.predictions, out.gpu, path, out.calibrated)


KIND = StepKind("predict", "algorithms side by side on one shape and GPU (plot: a roofline)", FIELDS, run, as_dict,
                tables, plot)
