"""`kind: split_kv`: a decode step at growing context, without split-KV (one split: one CTA per
(batch, K/V head) walks every key) and with it (the keys cut across CTAs, partial outputs merged by
their log-sum-exps; Flash-Decoding, Dao et al. 2023). `splits:` fixes the split count; left out, the
algorithm's own heuristic picks it per context. `plot:` draws HBM bytes and latency against context."""

from dataclasses import dataclass

from rich.table import Table

from memsim.algorithms import ALGORITHMS
from memsim.cli.render import human_count, human_time
from memsim.plots.seq_sweep import seq_sweep_plot
from memsim.predict import predict, resolve_tiles
from memsim.result import Prediction
from memsim.scenario.schema import OMIT, Field, list_of, mapping, one_of, whole
from memsim.scenario.shape import build_shape, shape_field
from memsim.scenario.steps.base import CALIBRATED, ENGINE, GPU, StepKind, prediction_summary
from memsim.scenario.steps.predict import TILE_FIELDS

DECODE_ALGOS = [name for name, a in ALGORITHMS.items() if a.decode_only]

FIELDS = {
    "gpu": GPU,
    "algo": Field(one_of(DECODE_ALGOS, "decode algorithm"), "flash_decoding"),
    "contexts": Field(list_of(whole(1, 32768), example="[4096, 32768, 131072]")),
    "shape": shape_field({"kv_len": "set by contexts"}),
    "splits": Field(whole(2, 16), OMIT),
    "tiles": Field(mapping({k: v for k, v in TILE_FIELDS.items() if k != "num_splits"},
                           {"num_splits": "set by splits"}), OMIT),
    "engine": ENGINE,
    "calibrated": CALIBRATED,
}


@dataclass(frozen=True)
class SplitSweep:
    gpu: str
    algo: str
    contexts: list[int]
    unsplit: list[Prediction]  # one per context
    split: list[Prediction]


def _predict(step: dict, context: int, splits: int | None) -> Prediction:
    shape = build_shape(step["shape"], q_len=step["shape"].get("q_len", 1), kv_len=context)
    tiles = resolve_tiles(step["gpu"], step["algo"], shape, **step.get("tiles", {}), num_splits=splits)
    return predict(step["algo"], shape, step["gpu"], tiles, "fwd", step["engine"], step["calibrated"])


def run(step: dict) -> SplitSweep:
    unsplit = [_predict(step, n, 1) for n in step["contexts"]]
    split = [_predict(step, n, step.get("splits")) for n in step["contexts"]]
    return SplitSweep(step["gpu"].name, step["algo"], step["contexts"], unsplit, split)


def as_dict(out: SplitSweep) -> dict:
    first = out.split[0]
    return {"gpu": out.gpu, "algo": out.algo, "engine": first.engine, "ceilings": first.ceilings,
            "shape": dict(first.shape, kv_len=None), "contexts": out.contexts,
            "unsplit": [prediction_summary(p) for p in out.unsplit],
            "split": [prediction_summary(p) for p in out.split]}


def tables(out: SplitSweep) -> list:
    s = out.split[0].shape
    table = Table(title=f"{out.algo} decode on {out.gpu}: B={s['batch']} H={s['q_heads']}/{s['kv_heads']} "
                        f"d={s['head_dim']} KV {s['kv_dtype']}, without and with split-KV", title_justify="left")
    for col in ("context", "splits", "1 split", "split-KV", "speed-up", "HBM rate", "bound"):
        table.add_column(col, justify="left" if col == "bound" else "right")
    for n, one, many in zip(out.contexts, out.unsplit, out.split):
        table.add_row(f"{n:,}", str(many.tiles["num_splits"]), human_time(one.latency_s), human_time(many.latency_s),
                      f"{one.latency_s / many.latency_s:.2f}x", human_count(many.achieved["hbm_bytes_per_s"], "B/s"),
                      f"{one.bound} / {many.bound}")
    table.caption = "HBM rate: bytes between HBM and L2 per second with split-KV; bound: 1 split / split-KV"
    return [table]


def plot(out: SplitSweep, step: dict, path) -> str:
    series = {f"{out.algo}, 1 split": out.unsplit,
              f"{out.algo}, {step.get('splits', 'heuristic')} splits": out.split}
    return seq_sweep_plot(out.contexts, series, path, f"decode on {out.gpu}: without and with split-KV",
                          x_label="context (tokens)")


KIND = StepKind("split_kv", "a decode step at growing context without and with split-KV (plot: bytes and latency)",
                FIELDS, run, as_dict, tables, plot)
