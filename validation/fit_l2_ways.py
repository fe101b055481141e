"""Fit the H100 preset's `l2_ways` on the key-order probe: what a last-to-first walk of key blocks re-reads.

    python3 -m validation.fit_l2_ways [--ways 4 6 8 12 16 0] [--cases 8] [--json FILE]

validation/key_order_probe.py ran one causal FlashAttention-2 forward (128 x 64 tiles, 4 warps, 2 stages, d = 128, O
without LSE) walking its key blocks first to last and last to first, at 8 shapes, on the H100
(results/h100/key-order-2026-11-24.json). The last-to-first walk reads 1.07x to 3.09x what the first-to-last walk
reads from HBM. memsim's DES describes the same launches (TileConfig.key_order) and loses K and V to the L2's sets
(memsim.engine.l2cache, "Sets"): this script predicts every shape, both walks, for each number of ways tried (0: a
fully associative L2), and scores each by the squared log error of the descending / ascending ratio of HBM reads
against the measured one. The ratio is scored, not each walk's reads, so that what both walks read beyond Q + K + V
(the first-to-last walk's 2-4%) does not pull the fit. No case of validation/results takes part: they stay held out.
The DES takes about 3 minutes of CPU per number of ways over the 8 shapes (2 processes). `--probe` with the
held-out run (key-order-held-out-2026-11-24.json, shapes the fit never saw) checks the fitted ways:

    python3 -m validation.fit_l2_ways --probe validation/results/h100/key-order-held-out-2026-11-24.json --ways 6 0
"""

import argparse
import dataclasses
import functools
import json
import math
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from memsim import AttentionShape, TileConfig, predict
from memsim.hardware.load import DEFAULT_GPU, load_gpu
from validation.key_order_probe import BLOCK_M, BLOCK_N, STAGES, WARPS, Case

PROBE = Path("validation/results/h100/key-order-2026-11-24.json")
ORDERS = ("ascending", "descending")


def probe_cases(rows: list[dict]) -> list[Case]:
    """The probe's shapes, in the order it recorded them."""
    return list(dict.fromkeys(Case(r["batch"], r["heads"], r["seq_len"], r["head_dim"]) for r in rows))


def measured_ratios(rows: list[dict]) -> dict[str, float]:
    """Case label -> HBM reads of the last-to-first walk over the first-to-last walk's."""
    reads = {(r["kernel"], Case(r["batch"], r["heads"], r["seq_len"], r["head_dim"]).label): r["dram_read_bytes"]
             for r in rows}
    return {label: reads[("descending", label)] / reads[("ascending", label)]
            for kernel, label in reads if kernel == "ascending"}


@functools.lru_cache(maxsize=None)
def gpu_with_ways(ways: int):
    """The default GPU with an L2 of `ways` ways (0: fully associative), read once per process."""
    gpu = load_gpu(DEFAULT_GPU)
    return dataclasses.replace(gpu, calibration=dataclasses.replace(gpu.calibration, l2_ways=ways or None))


def predicted_reads(job: tuple[int, Case, str]) -> float:
    """HBM bytes the DES reads for one case and walk with an L2 of `ways` ways (0: fully associative)."""
    ways, case, order = job
    gpu = gpu_with_ways(ways)
    shape = AttentionShape(batch=case.batch, q_heads=case.heads, q_len=case.seq_len, head_dim=case.head_dim,
                           causal=True)
    tiles = TileConfig(block_m=BLOCK_M, block_n=BLOCK_N, num_warps=WARPS, num_stages=STAGES, lse_output=False,
                       key_order=order)
    return predict("flash2", shape, gpu, tiles=tiles, engine="des").bytes["hbm_read"]


def score(predicted: dict[str, float], measured: dict[str, float]) -> float:
    """Sum over the cases of log(predicted ratio / measured ratio) squared."""
    return sum(math.log(predicted[label] / measured[label]) ** 2 for label in predicted)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe", type=Path, default=PROBE, help="the key-order probe's recorded rows")
    parser.add_argument("--ways", type=int, nargs="+", default=[4, 6, 8, 12, 16, 0],
                        help="numbers of ways to try; 0: a fully associative L2")
    parser.add_argument("--cases", type=int, help="the probe's first N cases only (quicker)")
    parser.add_argument("--json", type=Path, help="write every prediction and score here")
    args = parser.parse_args(argv)
    if any(w < 0 for w in args.ways):
        parser.error(f"--ways {' '.join(map(str, args.ways))}: each must be a whole number of ways, 0 or more")
    if not args.probe.is_file():
        print(f"fit_l2_ways: {args.probe} not found (run from the repository root)", file=sys.stderr)
        return 2
    rows = json.loads(args.probe.read_text())["rows"]
    measured, cases = measured_ratios(rows), probe_cases(rows)
    if args.cases is not None:
        if not 1 <= args.cases <= len(cases):
            parser.error(f"--cases {args.cases}: must be 1 to {len(cases)} (the probe's shapes)")
        cases = cases[:args.cases]
    jobs = [(w, c, o) for w in args.ways for c in cases for o in ORDERS]
    console = Console()
    reads = {}
    with ProcessPoolExecutor(max_workers=2) as pool, Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"{len(jobs)} predictions", total=len(jobs))
        for job, value in zip(jobs, pool.map(predicted_reads, jobs)):
            reads[job] = value
            bar.advance(task)

    table = Table(title="descending / ascending HBM reads, key-order probe", title_justify="left")
    table.add_column("case")
    table.add_column("H100", justify="right")
    for w in args.ways:
        table.add_column(f"{w} ways" if w else "fully assoc.", justify="right")
    ratios = {w: {c.label: reads[(w, c, "descending")] / reads[(w, c, "ascending")] for c in cases} for w in args.ways}
    for c in cases:
        table.add_row(c.label, f"{measured[c.label]:.2f}", *(f"{ratios[w][c.label]:.2f}" for w in args.ways))
    scores = {w: score(ratios[w], measured) for w in args.ways}
    table.add_row("squared log error", "", *(f"{scores[w]:.3f}" for w in args.ways))
    console.print(table)
    best = min(scores, key=scores.get)
    console.print(f"best: {best or 'fully associative'}{' ways' if best else ''} (score {scores[best]:.3f})")
    if args.json:
        args.json.write_text(json.dumps({
            "probe": str(args.probe), "measured_ratio": measured,
            "predicted_hbm_read": [{"ways": w, "case": c.label, "order": o, "bytes": reads[(w, c, o)]}
                                   for w, c, o in jobs],
            "score": {str(w): s for w, s in scores.items()}, "best_ways": best}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
