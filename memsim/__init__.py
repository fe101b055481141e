"""memsim: what an attention algorithm costs on a GPU, before you buy it, write it or tune it."""

from memsim.errors import MemsimError
from memsim.hardware import GPUSpec, load_gpu, preset_names
from memsim.predict import predict
from memsim.predict import run as predict_run
from memsim.result import Prediction
from memsim.workload import AttentionShape, TileConfig

__all__ = ["AttentionShape", "GPUSpec", "MemsimError", "Prediction", "TileConfig", "load_gpu", "predict", "predict_run",
           "preset_names"]
__version__ = "0.1.0"
