"""GPU hardware descriptions: specs, calibrations, presets."""

from memsim.hardware.load import DEFAULT_GPU, load_gpu, preset_names
from memsim.hardware.spec import Calibration, Ceilings, GPUSpec, LinkSpec

__all__ = ["Calibration", "Ceilings", "DEFAULT_GPU", "GPUSpec", "LinkSpec", "load_gpu", "preset_names"]
