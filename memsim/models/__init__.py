"""Language-model descriptions for capacity planning: specs and cited presets."""

from memsim.models.load import DEFAULT_MODEL, load_model, model_names
from memsim.models.spec import ModelSpec

__all__ = ["DEFAULT_MODEL", "ModelSpec", "load_model", "model_names"]
