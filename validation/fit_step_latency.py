"""Fit the H100 preset's `dependent_step_latency_s` (or, with --cpi, its `warp_cycles_per_instruction`) on the
calibration subset, and only there.

    python3 -m validation.fit_step_latency [--results validation/results/h100] [--ns 0 20 40 ...] [--cpi 3 3.6 ...]

A CTA's matmul, softmax and matmul depend on one another: the warps of one CTA cannot start the
softmax before the matmul's results are back, whatever other CTAs do. memsim's engine charges each
such dependent step its work at one SM's rates plus this latency (memsim.engine.sharing). It is the
one timing parameter no microbenchmark gives, so it is fitted: every candidate re-predicts the
calibration subset (validation.compare.CALIBRATION_KERNELS, our flash2 forward rows) with the
discrete-event engine, and the candidate with the smallest median |kernel time error| wins. Every
other case stays held out. Prints the scan; the chosen value goes into the preset by hand, with this
command as its source.

`warp_cycles_per_instruction` (how often a warp alone on its scheduler issues, where a launch's instruction
count is known: memsim.engine.cta.compute) is scanned the same way, the step latency held at the preset's, and
chosen by the p90 |error| (then the smallest median error): it is a floor that binds on the latency-bound
tail, where the median hardly moves (2.5-5.1 cycles all give medians of 4.6-5.8%).
"""

import argparse
import dataclasses
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.table import Table

from memsim.hardware.load import load_gpu
from validation.compare import CALIBRATION_KERNELS, GPU_BY_DEVICE, load_rows, measured
from validation.mapping import Unmapped, map_case
from memsim.predict import predict

DEFAULT_NS = tuple(range(0, 121, 10))


def _kernel_time_error(args) -> float | None:
    raw, changes = args
    try:
        mapped = map_case(raw)
    except Unmapped:
        return None
    gpu = load_gpu(GPU_BY_DEVICE.get(raw.get("device", ""), raw.get("device", "")))
    gpu = dataclasses.replace(gpu, calibration=dataclasses.replace(gpu.calibration, **changes))
    p = predict(mapped.algo, mapped.shape, gpu, mapped.tiles, pass_=mapped.pass_, engine="des", order=mapped.order,
                ctas=mapped.ctas, resources=mapped.resources)
    seconds = sum(k.latency_s for k in p.kernels if mapped.kernels is None or k.name in mapped.kernels)
    kernel_time = measured(raw).get("kernel_time")
    return seconds / kernel_time - 1 if kernel_time else None


def scan(results: Path, candidates: list[dict], workers: int = 2) -> list[tuple[dict, float, float, float, int]]:
    """(calibration fields, median |error|, p90 |error|, median error, rows) for each candidate."""
    rows = [r for r in load_rows(results) if r["kernel"] in CALIBRATION_KERNELS]
    out = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for changes in candidates:
            errors = [e for e in pool.map(_kernel_time_error, [(r, changes) for r in rows]) if e is not None]
            size = sorted(abs(e) for e in errors)
            out.append((changes, statistics.median(size), size[round(0.9 * (len(size) - 1))],
                        statistics.median(errors), len(errors)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("validation/results/h100"))
    parser.add_argument("--ns", type=float, nargs="+", default=DEFAULT_NS, help="candidate latencies in ns")
    parser.add_argument("--cpi", type=float, nargs="+",
                        help="scan warp_cycles_per_instruction over these instead (step latency: the preset's)")
    args = parser.parse_args(argv)
    console = Console()
    if args.cpi:
        candidates = [{"warp_cycles_per_instruction": cpi} for cpi in args.cpi]
        label = lambda changes: f"{changes['warp_cycles_per_instruction']:g} cycles"
    else:
        candidates = [{"dependent_step_latency_s": ns * 1e-9} for ns in args.ns]
        label = lambda changes: f"{changes['dependent_step_latency_s'] * 1e9:g} ns"
    found = scan(args.results, candidates)
    table = Table(title=f"kernel time error over the calibration subset ({', '.join(CALIBRATION_KERNELS)})")
    for col in ("candidate", "median |error|", "p90 |error|", "median error", "rows"):
        table.add_column(col, justify="right")
    for changes, abs_median, p90, median, n in found:
        table.add_row(label(changes), f"{abs_median:.1%}", f"{p90:.1%}", f"{median:+.1%}", str(n))
    console.print(table)
    best = min(found, key=lambda row: row[1])
    console.print(f"best by median: {label(best[0])} (median |error| {best[1]:.1%})")
    tail = min(found, key=lambda row: (row[2], abs(row[3])))
    console.print(f"best by p90: {label(tail[0])} (p90 |error| {tail[2]:.1%}, median error {tail[3]:+.1%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
