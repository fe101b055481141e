"""`kind: gpus`: one model, the same plan on several GPUs (memsim.capacity.plan on each), side by side.

Keys are those of `kind: capacity`, with `gpus:` (a list) for `gpu:`. Set `calibrated: false` to compare
datasheet peaks with datasheet peaks when only some of the GPUs carry measured ceilings.
"""

from rich.table import Table

from memsim.capacity.plan import CapacityPlan
from memsim.cli.capacity import both_units
from memsim.cli.render import human_time
from memsim.hardware import load_gpu
from memsim.scenario.schema import Field, list_of, named
from memsim.scenario.steps import capacity
from memsim.scenario.steps.base import StepKind

FIELDS = {"gpus": Field(list_of(named(load_gpu, "GPU"), least=2, example="[A100-SXM4-80GB, H100-SXM5-80GB]")),
          **{k: v for k, v in capacity.FIELDS.items() if k != "gpu"}}


def run(step: dict) -> list[CapacityPlan]:
    rest = {k: v for k, v in step.items() if k != "gpus"}
    return [capacity.plan_of(dict(rest, gpu=gpu)) for gpu in step["gpus"]]


def as_dict(plans: list[CapacityPlan]) -> dict:
    return {"model": plans[0].model.name, "plans": [capacity.as_dict(p) for p in plans]}


ROWS = (
    ("HBM per GPU", lambda p: both_units(p.budget.hbm_bytes)),
    ("weights per GPU", lambda p: both_units(p.budget.weights_bytes)),
    ("left for KV cache per GPU", lambda p: both_units(p.budget.kv_bytes)),
    ("largest batch at the context", lambda p: f"{p.max_batch:,}"),
    ("largest context at the batch", lambda p: f"{p.max_context:,}"),
    ("decode batch", lambda p: f"{p.batch_for_timing:,}"),
    ("decode step: attention", lambda p: f"{human_time(p.decode.attention_s)} ({p.decode.attention_bound})"),
    ("decode step: weights", lambda p: f"{human_time(p.decode.weights_s)} ({p.decode.weights_bound})"),
    ("decode step: total", lambda p: human_time(p.decode.total_s)),
    ("tokens/s", lambda p: f"{p.decode_tokens_per_s:,.0f}"),
    ("time to first token", lambda p: human_time(p.prefill.total_s)),
)


def tables(plans: list[CapacityPlan]) -> list:
    first = plans[0]
    table = Table(title=f"{first.model.name}, tp={first.tp}, context {first.context:,}, KV {first.layout.kv_dtype}, "
                        f"weights {first.weight_dtype}", title_justify="left")
    table.add_column("quantity")
    for p in plans:
        table.add_column(p.gpu, justify="right")
    for label, cell in ROWS:
        table.add_row(label, *(cell(p) for p in plans))
    table.caption = f"engine {first.engine}; decode {first.decode_algo}, prefill {first.prefill_algo}"
    return [table] + [f"  {p.gpu}: {p.verdict()}" for p in plans]


KIND = StepKind("gpus", "one model's plan on several GPUs side by side", FIELDS, run, as_dict, tables)
