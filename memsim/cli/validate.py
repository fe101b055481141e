"""`memsim validate`: re-predict every recorded GPU measurement and print how far off the model is."""

import json
from pathlib import Path

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from memsim.errors import MemsimError
from memsim.predict import ENGINES


def register(cli: click.Group) -> None:
    cli.add_command(validate_cmd)


@click.command("validate")
@click.option("--results", type=click.Path(path_type=Path), default=Path("validation/results/h100"), show_default=True,
              help="Folder of measurements*.jsonl (or one such file) written by validation/measure.py on a GPU; "
                   "repeats-*.jsonl (validation/repeat_counters.py) and host-time-*.json (validation/host_time.py) "
                   "beside them are used too.")
@click.option("--engine", default="des", show_default=True, type=click.Choice(ENGINES))
@click.option("--workers", default=2, show_default=True, type=int, help="Processes re-predicting cases.")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write predicted-vs-measured and error-by-algorithm PNGs here.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the tables as Markdown to this file as well.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def validate_cmd(results, engine, workers, plots_dir, report_path, as_json):
    """Relative errors of memsim's predictions against recorded Nsight Compute counters and times."""
    from validation import compare as cmp

    if not results.exists():
        raise MemsimError(f"--results {results}: no such file or folder; measurements live under validation/results/")
    if workers < 1:
        raise MemsimError(f"--workers {workers}: must be at least 1")
    console = Console(stderr=True)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"re-predicting cases ({engine})", total=None)
        rows = cmp.compare(results, engine, workers, lambda done, total: bar.update(task, completed=done, total=total))
    if as_json:
        click.echo(json.dumps(cmp.as_json(rows), indent=2))
    else:
        out = Console()
        out.print(_summary_table(cmp, rows, f"memsim vs measured, held-out cases ({results}, engine {engine})"))
        out.print(_summary_table(cmp, rows, "calibration subset (fitted a parameter: not held out)", calibration=True))
        out.print(_by_algorithm_table(cmp, rows))
        skipped = [r for r in rows if r.skipped]
        if skipped:
            out.print(f"{len(skipped)} cases not compared: " + "; ".join(f"{r.id} ({r.skipped})" for r in skipped[:6])
                      + (" ..." if len(skipped) > 6 else ""))
        out.print(f"Held out: {cmp.HELD_OUT}.")
    if report_path:
        report_path.write_text(markdown_report(cmp, rows, results, engine))
    if plots_dir:
        from validation import plots

        plots_dir.mkdir(parents=True, exist_ok=True)
        title = f"memsim ({engine}) vs {results}"
        for path in (plots.predicted_vs_measured(rows, plots_dir / "predicted_vs_measured.png", title),
                     plots.error_by_algorithm(rows, plots_dir / "error_by_algorithm.png", title)):
            console.print(f"wrote {path}")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _summary_table(cmp, rows, title: str, calibration: bool = False) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("field", "cases", "below floor", "median |error|", "p90 |error|", "worst |error|", "worst case"):
        table.add_column(col, justify="left" if col in ("field", "worst case") else "right")
    stats = cmp.summary(rows, calibration=calibration).get("all", {})
    for name in cmp.FIELDS:
        s = stats.get(name)
        if s:
            table.add_row(name, str(s["n"]), str(s["below_floor"] or "-"), _pct(s["median"]), _pct(s["p90"]),
                          _pct(s["worst"]), s["worst_case"])
    if any(s.get("below_floor") for s in stats.values()):
        table.caption = (f"below floor: not scored, memsim and the counter both under it (HBM writes: "
                         f"{cmp.HBM_WRITE_FLOOR_BYTES / 1e6:g} MB, what kernels that store nothing show)")
    return table


def _by_algorithm_table(cmp, rows) -> Table:
    table = Table(title="median |error| by kernel -> memsim algorithm", title_justify="left")
    table.add_column("kernel -> algorithm")
    table.add_column("cases", justify="right")
    for name in cmp.FIELDS:
        table.add_column(name, justify="right")
    groups = cmp.summary(rows, lambda r: f"{r.kernel} -> {r.algo}")
    groups.update(cmp.summary(rows, lambda r: f"{r.kernel} -> {r.algo} (calibration)", calibration=True))
    for group, stats in sorted(groups.items()):
        n = max(s["n"] for s in stats.values())
        table.add_row(group, str(n), *(_pct(stats[f]["median"]) if f in stats else "-" for f in cmp.FIELDS))
    return table


def markdown_report(cmp, rows, results, engine: str) -> str:
    lines = [f"# memsim validation against {results} (engine {engine})", "", f"Held out: {cmp.HELD_OUT}.", "",
             "| field | cases | below floor | median abs error | p90 | worst | worst case |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, s in cmp.summary(rows).get("all", {}).items():
        lines.append(f"| {name} | {s['n']} | {s['below_floor']} | {_pct(s['median'])} | {_pct(s['p90'])} | "
                     f"{_pct(s['worst'])} | {s['worst_case']} |")
    lines += ["", "| case | memsim algorithm | " + " | ".join(cmp.FIELDS) + " | note |",
              "| --- | --- | " + " | ".join("---" for _ in cmp.FIELDS) + " | --- |"]
    for r in rows:
        errors = " | ".join(f"{100 * r.error[f]:+.1f}%" if f in r.error else "floor" if f in r.below_floor else "-"
                            for f in cmp.FIELDS)
        lines.append(f"| {r.id} | {r.algo or '-'} | {errors} | {r.skipped or r.how} |")
    lines += ["", f"floor: memsim and the counter both below the field's floor (HBM writes: "
                  f"{cmp.HBM_WRITE_FLOOR_BYTES / 1e6:g} MB, what kernels that store nothing show), not scored.", ""]
    return "\n".join(lines)
