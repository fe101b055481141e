"""Every recorded case (H100 and H200) re-predicted with the current model, against the error budgets in
validation/budgets.json: a change that makes memsim's predictions worse cannot land."""

import functools
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from validation.compare import FIELDS, compare_row, load_rows, summary

ROOT = Path(__file__).resolve().parent.parent
BUDGETS = json.loads((ROOT / "validation" / "budgets.json").read_text())
RESULTS = ROOT / "validation" / "results"
DEVICES = [key for key in BUDGETS if key != "comment"]  # each a folder of validation/results


@functools.cache
def _rows(device: str) -> list[dict]:
    """The device's recorded cases, read once for both engines."""
    return load_rows(RESULTS / device)


def _selected(device: str, engine: str) -> list[dict]:
    rows = _rows(device)
    which = BUDGETS[device][engine]["cases"]
    return rows if which == "all" else [r for r in rows if not r["causal"]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("engine", ["analytic", "des"])
def test_errors_within_budget(device, engine):
    budgets = BUDGETS[device]
    with ProcessPoolExecutor(max_workers=2) as pool:  # the DES takes minutes over every case on one core
        rows = list(pool.map(compare_row, [(raw, engine) for raw in _selected(device, engine)]))
    compared = [r for r in rows if not r.skipped]
    held_out = [r for r in compared if not r.calibration]
    assert len(held_out) >= budgets["min_held_out"], f"{device}: only {len(held_out)} held-out cases compared"
    stats = summary(compared)["all"]  # over the held-out cases
    report = []
    for name in FIELDS:
        for stat in ("median", "p90"):
            value, budget = stats[name][stat], budgets[engine][name][stat]
            report.append(f"{name} {stat} {value:.1%} (budget {budget:.0%})")
            assert value <= budget, f"{device} {engine}: {name} {stat} |error| {value:.1%} > budget {budget:.0%}"
    print(f"\n{device} {engine} over {len(held_out)} held-out cases: " + "; ".join(report))
