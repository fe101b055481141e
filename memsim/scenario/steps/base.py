"""What every kind of scenario step provides: its keys, how it runs through the library, and how its
results print (JSON and rich tables), and, for some, a plot."""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from memsim.hardware import DEFAULT_GPU, load_gpu
from memsim.predict import ENGINES
from memsim.result import Prediction
from memsim.scenario.schema import Field, flag, named, one_of


@dataclass(frozen=True)
class StepKind:
    name: str
    summary: str  # one line: what the step computes
    fields: dict[str, Field]  # the keys it takes besides kind, name, title and plot
    run: Callable[[dict], object]  # checked keys -> the library's results
    as_dict: Callable[[object], dict]  # results -> the JSON object (what the expected files hold)
    tables: Callable[[object], list]  # results -> rich renderables, in order
    plot: Callable[[object, dict, Path], str] | None = None  # results, checked keys, PNG path -> path


# Keys several kinds share, with the defaults `memsim predict` has.
GPU = Field(named(load_gpu, "GPU"), DEFAULT_GPU)
ENGINE = Field(one_of(ENGINES, "engine"), "analytic")
CALIBRATED = Field(flag, True)  # measured ceilings where the GPU has them; false: datasheet peaks


def prediction_summary(p: Prediction) -> dict:
    """The figures of one prediction a scenario reports: p.as_dict() without the per-kernel detail and
    without what follows from these (rates achieved, busy fractions)."""
    d = p.as_dict()
    return {k: d[k] for k in ("algo", "tiles", "latency_s", "bound", "critical_resource", "flops", "bytes", "sram",
                              "occupancy")}
