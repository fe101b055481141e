"""How fast the discrete-event engine predicts, against the targets of its design:

1. one H100 FlashAttention-2 forward prediction, B=1, H=64, N=131072, d=128: under 1 s on one core;
2. a sweep of 1000 configurations (shapes x tiles) on 2 cores: under 60 s;
3. fast mode against faithful mode on shapes small enough to run both: within 1% on every field.

    python3 -m memsim.bench [--quick]

Prints its figures; asserts nothing (speed belongs in benchmarks, not in timed tests).
"""

import argparse
import itertools
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from memsim import AttentionShape, TileConfig, predict
from memsim.errors import MemsimError

BIG = AttentionShape(batch=1, q_heads=64, q_len=131072, head_dim=128)
SLOWEST_SHOWN = 8
FIELDS = ("hbm_read", "hbm_write", "hbm_write_deferred", "l2_read", "l2_write")


def time_one(shape: AttentionShape, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        predict("flash2", shape, engine="des")
        seconds.append(time.perf_counter() - start)
    return seconds


def sweep_configs(count: int) -> list[tuple[AttentionShape, TileConfig]]:
    """Block-size and shape sweeps as people run them: tiles x stages x warps over prefill shapes
    (half of them causal), `count` of them spread evenly over the mix of 64 shapes x 36 tiles (2304 configurations)."""
    shapes = [AttentionShape(batch=b, q_heads=h, kv_heads=h // g, q_len=n, head_dim=d, causal=c)
              for b, h, g, n, d, c in itertools.product((1, 4), (16, 32), (1, 4), (1024, 2048, 4096, 8192),
                                                        (64, 128), (False, True))]
    tiles = [TileConfig(block_m=m, block_n=n, num_warps=w, num_stages=s)
             for m, n, w, s in itertools.product((64, 128), (32, 64, 128), (4, 8), (1, 2, 3))]
    pairs = list(itertools.product(shapes, tiles))
    step = max(1, len(pairs) // count)
    return pairs[::step][:count]  # every step-th: the slice keeps the mix of shapes and tiles


def _predict_one(pair) -> tuple[float | None, float]:
    """(predicted latency, or None for a tile that does not fit; seconds the prediction took)."""
    shape, tiles = pair
    start = time.perf_counter()
    try:
        latency = predict("flash2", shape, tiles=tiles, engine="des").latency_s
    except MemsimError:  # a tile that does not fit: refused, as it should be
        latency = None
    return latency, time.perf_counter() - start


def run_sweep(count: int, workers: int, console: Console) -> tuple[float, int, int, list]:
    """(wall seconds, configurations, refused, [(seconds, shape, tiles)] slowest first)."""
    configs = sweep_configs(count)
    start = time.perf_counter()
    refused, timed = 0, []
    with ProcessPoolExecutor(max_workers=workers) as pool, Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"sweep of {len(configs)} configurations on {workers} processes", total=len(configs))
        for (latency, seconds), (shape, tiles) in zip(pool.map(_predict_one, configs, chunksize=8), configs):
            refused += latency is None
            timed.append((seconds, shape, tiles))
            bar.advance(task)
    timed.sort(key=lambda row: -row[0])
    return time.perf_counter() - start, len(configs), refused, timed


def describe(shape: AttentionShape, tiles: TileConfig) -> str:
    heads = f"H={shape.q_heads}" + (f"/{shape.q_heads // shape.group_size}" if shape.group_size > 1 else "")
    return (f"B={shape.batch} {heads} N={shape.q_len} d={shape.head_dim}{' causal' if shape.causal else ''}, "
            f"{tiles.block_m}x{tiles.block_n} {tiles.num_warps} warps {tiles.num_stages} stages")


def agreement(shapes: list[AttentionShape]) -> list[tuple[str, float, float, float]]:
    """(shape, fast s, faithful s, worst relative difference over latency and bytes)."""
    rows = []
    for shape in shapes:
        t0 = time.perf_counter()
        fast = predict("flash2", shape, engine="des")
        t1 = time.perf_counter()
        faithful = predict("flash2", shape, engine="des", fast=False)
        t2 = time.perf_counter()
        diffs = [abs(fast.latency_s / faithful.latency_s - 1)]
        diffs += [abs(fast.bytes[k] - faithful.bytes[k]) / max(faithful.bytes[k], 1.0) for k in FIELDS]
        label = (f"B={shape.batch} H={shape.q_heads} N={shape.q_len} d={shape.head_dim}"
                 f"{' causal' if shape.causal else ''}")
        rows.append((label, t1 - t0, t2 - t1, max(diffs)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat, one agreement check")
    parser.add_argument("--sweep", type=int, default=1000, help="configurations to sweep (evenly spread over the "
                                                               "2304-configuration mix); the figure is scaled to 1000")
    args = parser.parse_args(argv)
    if args.sweep <= 0:
        parser.error(f"--sweep {args.sweep}: must be a positive number of configurations")
    console = Console()
    repeats, count = (1, args.sweep) if args.quick else (3, args.sweep)

    one = time_one(BIG, repeats)
    sweep_s, swept, refused, timed = run_sweep(count, 2, console)
    # The first merges CTAs over 8 waves with O written back mid-kernel; the second goes tile by tile.
    checks = [AttentionShape(q_heads=32, q_len=4096), AttentionShape(q_heads=4, q_len=4096, causal=True),
              AttentionShape(batch=2, q_heads=8, kv_heads=2, q_len=8192)]
    rows = agreement(checks[:1] if args.quick else checks)

    table = Table(title="memsim engine speed (fast mode)", title_justify="left")
    for col in ("figure", "measured", "target", "ratio to target"):
        table.add_column(col, justify="left" if col == "figure" else "right")
    median_one = statistics.median(one)
    table.add_row("FA2 fwd B=1 H=64 N=131072 d=128, one core", f"{median_one:.2f} s (median of {repeats})",
                  "1 s", f"{median_one / 1.0:.1f}x")
    scaled = sweep_s * 1000 / swept
    table.add_row(f"sweep of {swept} configs ({refused} refused: tiles too big), 2 processes",
                  f"{sweep_s:.1f} s ({scaled:.1f} s per 1000)", "60 s per 1000", f"{scaled / 60:.2f}x")
    console.print(table)

    slowest = Table(title="slowest configurations of the sweep (seconds in one process)", title_justify="left")
    for col in ("configuration", "seconds", "share of sweep CPU"):
        slowest.add_column(col, justify="left" if col == "configuration" else "right")
    cpu_s = sum(row[0] for row in timed) or 1.0
    for seconds, shape, tiles in timed[:SLOWEST_SHOWN]:
        slowest.add_row(describe(shape, tiles), f"{seconds:.1f}", f"{seconds / cpu_s:.0%}")
    console.print(slowest)

    check = Table(title="fast vs faithful mode (flash2 fwd, H100)", title_justify="left")
    for col in ("shape", "fast", "faithful", "speed-up", "worst difference (latency, bytes)"):
        check.add_column(col, justify="left" if col == "shape" else "right")
    for label, fast_s, faithful_s, worst in rows:
        check.add_row(label, f"{fast_s:.2f} s", f"{faithful_s:.2f} s", f"{faithful_s / fast_s:.0f}x", f"{worst:.2%}")
    console.print(check)
    return 0


if __name__ == "__main__":
    sys.exit(main())
