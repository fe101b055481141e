"""`kind: seq_sweep`: several algorithms across sequence lengths (q_len = kv_len = each length), each
predicted by memsim.predict with its own default tiles; `plot:` draws HBM bytes and latency against length."""

from dataclasses import dataclass

from rich.table import Table

from memsim.algorithms import ALGORITHMS, PASSES
from memsim.cli.render import human_bytes, human_time
from memsim.plots.roofline import hbm_bytes
from memsim.plots.seq_sweep import seq_sweep_plot
from memsim.predict import predict
from memsim.result import Prediction
from memsim.scenario.schema import Field, list_of, one_of, whole
from memsim.scenario.shape import build_shape, shape_field
from memsim.scenario.steps.base import CALIBRATED, ENGINE, GPU, StepKind, prediction_summary

FIELDS = {
    "gpu": GPU,
    "algos": Field(list_of(one_of(ALGORITHMS, "algorithm"), example="[standard, flash2]")),
    "lengths": Field(list_of(whole(1, 4096), example="[1024, 4096, 16384]")),
    "shape": shape_field({"q_len": "set by lengths", "kv_len": "set by lengths"}),
    "pass": Field(one_of(PASSES, "pass"), "fwd"),
    "engine": ENGINE,
    "calibrated": CALIBRATED,
}


@dataclass(frozen=True)
class Sweep:
    gpu: str
    lengths: list[int]
    series: dict[str, list[Prediction]]  # algorithm -> one prediction per length


def run(step: dict) -> Sweep:
    shapes = [build_shape(step["shape"], q_len=n, kv_len=n) for n in step["lengths"]]
    series = {algo: [predict(algo, s, step["gpu"], None, step["pass"], step["engine"], step["calibrated"])
                     for s in shapes] for algo in step["algos"]}
    return Sweep(step["gpu"].name, step["lengths"], series)


def as_dict(out: Sweep) -> dict:
    first = next(iter(out.series.values()))[0]
    return {"gpu": out.gpu, "engine": first.engine, "pass": first.pass_, "ceilings": first.ceilings,
            "lengths": out.lengths,
            "series": {algo: [prediction_summary(p) for p in ps] for algo, ps in out.series.items()}}


def quantity_table(title: str, lengths: list[int], series: dict[str, list[Prediction]], cell) -> Table:
    """Rows: lengths; columns: the series; each cell `cell(prediction)`."""
    table = Table(title=title, title_justify="left")
    table.add_column("N", justify="right")
    for label in series:
        table.add_column(label, justify="right")
    for i, n in enumerate(lengths):
        table.add_row(f"{n:,}", *(cell(ps[i]) for ps in series.values()))
    return table


def tables(out: Sweep) -> list:
    return [quantity_table(f"latency on {out.gpu}", out.lengths, out.series,
                           lambda p: f"{human_time(p.latency_s)} ({p.bound})"),
            quantity_table("HBM bytes (read + written)", out.lengths, out.series, lambda p: human_bytes(hbm_bytes(p))),
            quantity_table("L2 -> SM bytes read", out.lengths, out.series, lambda p: human_bytes(p.bytes["l2_read"]))]


def plot(out: Sweep, step: dict, path) -> str:
    s = build_shape(step["shape"], q_len=out.lengths[0], kv_len=out.lengths[0])
    title = (f"{out.gpu}: B={s.batch} H={s.q_heads}/{s.kv_heads} d={s.head_dim} {s.dtype}"
             f"{' causal' if s.causal else ''}, {step['engine']} engine")
    return seq_sweep_plot(out.lengths, out.series, path, title)


KIND = StepKind("seq_sweep", "algorithms across sequence lengths (plot: HBM bytes and latency against length)",
                FIELDS, run, as_dict, tables, plot)
