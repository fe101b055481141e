"""`kind: capacity`: a model served on a tensor-parallel group of one GPU (memsim.capacity.plan): KV-cache
and weight bytes, the largest batch and context, paged against contiguous waste for a set of request
lengths, prefix sharing with copy-on-write, decode and prefill time. `plot:` draws KV memory against context.

Keys are plan()'s keyword arguments; what is left out takes plan()'s default (`memsim capacity --help`).
`lengths:` is `{distribution: lognormal, requests: 1000, seed: 0}` (memsim.capacity.DISTRIBUTIONS) or
`{file: lengths.txt}` (one length per line, relative to the scenario's folder).
"""

from pathlib import Path

from memsim.algorithms import ALGORITHMS
from memsim.capacity import DISTRIBUTIONS, WEIGHT_DTYPES, plan, read_lengths, synthetic_lengths
from memsim.capacity.plan import CapacityPlan
from memsim.cli.capacity import memory_table, sharing_table, time_table, waste_table
from memsim.errors import MemsimError
from memsim.hardware import load_gpu
from memsim.models import load_model
from memsim.plots.kv_memory import kv_memory_plot
from memsim.predict import ENGINES
from memsim.scenario.schema import OMIT, Field, flag, mapping, named, number, one_of, text, whole
from memsim.scenario.steps.base import StepKind
from memsim.workload.dtypes import COMPUTE_DTYPES, KV_DTYPES


def _lengths_source(value, where):
    """{distribution, requests, seed} or {file}: checked here, drawn or read when the step runs."""
    source = mapping({"distribution": Field(one_of(DISTRIBUTIONS, "length distribution"), OMIT),
                      "requests": Field(whole(1, 1000), OMIT), "seed": Field(whole(0, 0), OMIT),
                      "file": Field(text, OMIT)})(value, where)
    if ("distribution" in source) == ("file" in source):
        raise MemsimError(f"{where.file}: {where.path}: give distribution: (with requests: and seed:) or file:, "
                          f"one of the two")
    if "file" in source:
        if set(source) != {"file"}:
            raise MemsimError(f"{where.file}: {where.path}: requests: and seed: go with distribution:, not file:")
        source["file"] = where.folder / source["file"]
    return source


# plan()'s keyword arguments, all but the model optional.
PLAN_FIELDS = {
    "model": Field(named(load_model, "model")),
    "gpu": Field(named(load_gpu, "GPU"), OMIT),
    "tp": Field(whole(1, 8), OMIT),
    "context": Field(whole(1, 32768), OMIT),
    "batch": Field(whole(1, 16), OMIT),
    "kv_dtype": Field(one_of(KV_DTYPES, "KV-cache dtype"), OMIT),
    "weight_dtype": Field(one_of(WEIGHT_DTYPES, "weight dtype"), OMIT),
    "dtype": Field(one_of(COMPUTE_DTYPES, "dtype"), OMIT),
    "block_size": Field(whole(1, 16), OMIT),
    "samples": Field(whole(1, 4), OMIT),
    "beam_width": Field(whole(1, 4), OMIT),
    "prompt_len": Field(whole(1, 2048), OMIT),
    "gen_len": Field(whole(0, 512), OMIT),
    "reserve_fraction": Field(number(0.0, 1.0, 0.1), OMIT),
    "engine": Field(one_of(ENGINES, "engine"), OMIT),
    "decode_algo": Field(one_of(ALGORITHMS, "algorithm"), OMIT),
    "prefill_algo": Field(one_of(ALGORITHMS, "algorithm"), OMIT),
    "kv_group_size": Field(whole(1, 64), OMIT),
    "calibrated": Field(flag, OMIT),
}
FIELDS = {**PLAN_FIELDS, "lengths": Field(_lengths_source, OMIT)}


def context_of(step: dict) -> int:
    """The context the plan is made at: the one given, else the model's maximum (as plan() does)."""
    return step.get("context", step["model"].max_context)


def _lengths(step: dict):
    source = step.get("lengths")
    if source is None:
        return None
    if "file" in source:
        return read_lengths(source["file"], context_of(step))
    extra = {k: source[k] for k in ("requests", "seed") if k in source}
    return synthetic_lengths(source["distribution"], context_of(step), **extra)


def plan_of(step: dict) -> CapacityPlan:
    """plan() with the step's keys."""
    keys = {k: v for k, v in step.items() if k not in ("model", "lengths")}
    return plan(step["model"], lengths=_lengths(step), **keys)


def as_dict(p: CapacityPlan) -> dict:
    """plan.as_dict() with the model by name and without the notes (they print with the tables)."""
    d = p.as_dict()
    d["model"] = p.model.name
    del d["notes"]
    return d


def tables(p: CapacityPlan) -> list:
    found = [memory_table(p), *([waste_table(p)] if p.waste else []), sharing_table(p), time_table(p)]
    return found + [f"  {note}" for note in p.notes]


def plot(p: CapacityPlan, step: dict, path: Path) -> str:
    return kv_memory_plot(p.model, path, max_context=p.context, kv_budget_bytes=p.budget.kv_bytes * p.tp,
                          budget_label=f"room for KV on {p.tp} GPU{'s' if p.tp > 1 else ''}")


KIND = StepKind("capacity", "a model on a GPU group: memory, largest batch, paging waste, sharing, speed "
                            "(plot: KV memory against context)", FIELDS, plan_of, as_dict, tables, plot)
