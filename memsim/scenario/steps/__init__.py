"""The kinds of step a scenario file may hold, one file each. STEP_KINDS maps a `kind:` to its StepKind."""

from memsim.scenario.steps import capacity, gpus, predict, seq_sweep, split_kv
from memsim.scenario.steps.base import StepKind

STEP_KINDS: dict[str, StepKind] = {k.name: k for k in (
    predict.KIND,
    seq_sweep.KIND,
    split_kv.KIND,
    capacity.KIND,
    gpus.KIND,
)}

__all__ = ["STEP_KINDS", "StepKind"]
