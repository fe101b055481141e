"""Fit the H100 preset's `l2_dirty_lifetime_bytes` and `l2_shared_tile_age_weight` on the L2 microbenchmark.

    python3 -m validation.fit_l2_dirty_lifetime [--probe validation/results/h100/l2-dirty-lifetime-2026-11-23.json]

validation/l2_dirty_lifetime.py writes W bytes, then reads R bytes of other data, each tile read by one CTA
("unique") or by C CTAs ("shared"), and ncu counts what reached HBM during the kernel. memsim's L2 (memsim.engine.l2cache,
memsim.writes) sends a dirty line to HBM once L bytes have been brought in after it, a tile read by CTAs on both L2
partitions counting `weight` times its bytes. The W bytes are written in order, so the line written at x (0 <= x < W)
has seen s = W - x + weight x R when the kernel ends, and the bytes that reach HBM are clip(W + weight x R - L, 0, W).
This script fits L by least squares over the unique rows (weight 1), then the weight over the shared rows read by
SHARED_READERS CTAs with that L, and shows how the 2-reader rows compare with what the model predicts for them.
No attention kernel takes part: every case in validation/results stays held out of this fit.

The measured edge is soft: the written bytes rise over some 40 MiB of R, not at one point (a set-associative cache
evicts a line when its own set fills, and sets fill unevenly). The script also fits lifetimes spread evenly over
[L - S/2, L + S/2], under which a line that has seen s is in HBM with probability F(s) and the bytes that reach HBM
are G(W + weight x R) - G(weight x R), G the integral of F: that fits the unique rows three times closer (rms). memsim
does not use it: the engine built with it (each dirty tile written back in 8 equal parts, one per lifetime) was
further from the attention rows of validation/results than the sharp lifetime (validation/ACCURACY.md, 2026-11-24)."""

import argparse
import json
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from memsim.writes import on_both_partitions

MIB = 1 << 20
SHARED_READERS = 8  # CTAs reading each tile in the rows that fit the weight: all but surely on both partitions
PROBE = Path("validation/results/h100/l2-dirty-lifetime-2026-11-23.json")
SPREAD_ROUNDS = 4  # alternating fits of the lifetime and its spread (they settle in two or three)


def _aged_out(seen: np.ndarray, lifetime: float, spread: float) -> np.ndarray:
    """G(seen): the integral over s < seen of the chance that a line that has seen s is in HBM (module docstring)."""
    if spread <= 0:
        return np.maximum(seen - lifetime, 0.0)
    low, high = lifetime - spread / 2, lifetime + spread / 2
    inside = np.clip(seen, low, high) - low
    return inside ** 2 / (2 * spread) + np.maximum(seen - high, 0.0)


def written_back(written: np.ndarray, read: np.ndarray, lifetime: float, weight: float = 1.0,
                 spread: float = 0.0) -> np.ndarray:
    """Bytes that reach HBM during the kernel when lifetimes spread evenly over `spread` around `lifetime`
    (module docstring; spread 0: a sharp lifetime)."""
    return _aged_out(written + weight * read, lifetime, spread) - _aged_out(weight * read, lifetime, spread)


def _columns(rows: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.array([r["written_bytes"] for r in rows], float), np.array([r["read_bytes"] for r in rows], float),
            np.array([r["dram_write_bytes"] for r in rows], float))


def best(grid: np.ndarray, error) -> float:
    """The grid point with the least squared error, refined once on a grid 100 times finer around it."""
    at = grid[int(np.argmin([error(v) for v in grid]))]
    step = grid[1] - grid[0]
    fine = np.linspace(at - step, at + step, 201)
    return float(fine[int(np.argmin([error(v) for v in fine]))])


def fit(rows: list[dict]) -> dict:
    """{"lifetime_bytes", "weight", "unique_rows", "shared_rows", "two_reader_weight"} from the probe's rows."""
    unique = [r for r in rows if r["case"].startswith("unique")]
    shared = [r for r in rows if r["case"].startswith("shared") and r.get("readers_per_tile") == SHARED_READERS]
    pairs = [r for r in rows if r["case"].startswith("shared") and r.get("readers_per_tile") == 2]
    if not unique or not shared:
        raise SystemExit("fit_l2_dirty_lifetime: the probe has no unique or no shared rows; run "
                         "validation/l2_dirty_lifetime.py again")
    w, r, hbm = _columns(unique)
    lifetime = best(np.linspace(1, 128, 128) * MIB, lambda L: np.sum((written_back(w, r, L) - hbm) ** 2))
    ws, rs, hbms = _columns(shared)
    weight = best(np.linspace(0.5, 4, 36), lambda k: np.sum((written_back(ws, rs, lifetime, k) - hbms) ** 2))
    two = None
    if pairs:
        wp, rp, hbmp = _columns(pairs)
        two = best(np.linspace(0.5, 4, 36), lambda k: np.sum((written_back(wp, rp, lifetime, k) - hbmp) ** 2))
    spread_lifetime, spread = _fit_spread(w, r, hbm)
    rms = {name: float(np.sqrt(np.mean((written_back(w, r, L, spread=S) - hbm) ** 2)))
           for name, L, S in (("sharp", lifetime, 0.0), ("spread", spread_lifetime, spread))}
    return {"lifetime_bytes": lifetime, "weight": weight, "unique_rows": len(unique), "shared_rows": len(shared),
            "two_reader_weight": two, "spread_lifetime_bytes": spread_lifetime, "spread_bytes": spread,
            "rms_bytes": rms}


def _fit_spread(w: np.ndarray, r: np.ndarray, hbm: np.ndarray) -> tuple[float, float]:
    """(centre, width) of lifetimes spread evenly, by least squares over the unique rows: each of the two at its
    best for the other, SPREAD_ROUNDS times (they settle in two or three)."""
    spread = 0.0
    for _ in range(SPREAD_ROUNDS):
        lifetime = best(np.linspace(1, 128, 128) * MIB,
                        lambda L: np.sum((written_back(w, r, L, spread=spread) - hbm) ** 2))
        spread = max(0.0, best(np.linspace(0, 2 * lifetime, 129),
                               lambda S: np.sum((written_back(w, r, lifetime, spread=S) - hbm) ** 2)))
    return lifetime, spread


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe", type=Path, default=PROBE, help="l2-dirty-lifetime JSON written on the GPU")
    args = parser.parse_args(argv)
    if not args.probe.is_file():
        raise SystemExit(f"fit_l2_dirty_lifetime: --probe {args.probe}: no such file")
    try:
        rows = json.loads(args.probe.read_text())["rows"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise SystemExit(f"fit_l2_dirty_lifetime: --probe {args.probe}: not a probe result with a 'rows' list "
                         f"({type(err).__name__}: {err}); it is written by validation/l2_dirty_lifetime.py") from None
    result = fit(rows)
    console = Console()
    table = Table(title=f"dirty lifetime and shared-tile weight from {args.probe.name}")
    for col in ("parameter", "fitted", "rows"):
        table.add_column(col, justify="left" if col == "parameter" else "right")
    table.add_row("l2_dirty_lifetime_bytes", f"{result['lifetime_bytes'] / 1e6:.1f} MB "
                  f"({result['lifetime_bytes'] / MIB:.1f} MiB)", str(result["unique_rows"]))
    table.add_row("not used: lifetimes spread evenly, centre and width",
                  f"{result['spread_lifetime_bytes'] / MIB:.1f} and {result['spread_bytes'] / MIB:.1f} MiB",
                  str(result["unique_rows"]))
    table.add_row("rms error of the unique rows: sharp / spread",
                  f"{result['rms_bytes']['sharp'] / MIB:.2f} / {result['rms_bytes']['spread'] / MIB:.2f} MiB", "")
    table.add_row(f"l2_shared_tile_age_weight ({SHARED_READERS} readers)", f"{result['weight']:.2f}",
                  str(result["shared_rows"]))
    if result["two_reader_weight"] is not None:
        predicted = 1 + (result["weight"] - 1) * on_both_partitions(2)
        table.add_row("2 readers: fitted / the model's", f"{result['two_reader_weight']:.2f} / {predicted:.2f}", "")
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
