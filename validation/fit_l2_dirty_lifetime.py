"""Fit the H100 preset's `l2_dirty_lifetime_bytes` on the calibration subset, and only there.

    python3 -m validation.fit_l2_dirty_lifetime [--results validation/results/h100]

L2 is a write-back cache: what a kernel writes reaches HBM when its line is pushed out, or after the
kernel ends, where ncu's dram__bytes_write no longer sees it (validation/l2_write_back.py). A line
written at fraction x of a kernel that brings B bytes into L2 (HBM reads plus writes) is still dirty at
the end if less than the lifetime L was brought in after it, so a fraction min(1, L / B) of the W
written bytes stays dirty (memsim.writes; the engine's L2 ages dirty tiles the same way). Inverted on
one measured kernel: L = (W - dram written) / W x (W + dram read). This is read from the counters of
the calibration subset (validation.compare.CALIBRATION_KERNELS: our flash2 forward rows), using the
rows where the lifetime, not the dirty cap, decides: some writes reached HBM (at least MIN_WRITTEN_BACK
of them) and what stayed is under the cap. The median goes into the preset by hand, with this command as
its source. Every other case stays held out.
"""

import argparse
import statistics
from functools import cache
from pathlib import Path

from rich.console import Console
from rich.table import Table

from memsim.hardware.load import load_gpu
from validation.compare import CALIBRATION_KERNELS, GPU_BY_DEVICE, load_rows, measured

MIN_WRITTEN_BACK = 0.05  # of the written bytes: below it the kernel kept (nearly) everything and says only L >= B


def lifetime_bytes(written: float, dram_written: float, dram_read: float) -> float:
    """The lifetime that makes min(1, L / (W + R)) of W stay dirty (module docstring)."""
    return (written - dram_written) / written * (written + dram_read)


@cache
def dirty_cap_bytes(device: str) -> float | None:
    """The GPU preset's l2_dirty_resident_bytes for a recorded device name, loaded once per device."""
    return load_gpu(GPU_BY_DEVICE.get(device, device)).calibration.l2_dirty_resident_bytes


def estimates(results: Path) -> list[tuple[str, float, float, float, float | None]]:
    """(case, written, dram written, dram read, lifetime or None where the row says nothing of it)."""
    out = []
    for raw in load_rows(results):
        if raw["kernel"] not in CALIBRATION_KERNELS:
            continue
        m = measured(raw)
        written, dram_written, dram_read = m.get("l2_write"), m.get("hbm_write"), m.get("hbm_read")
        if not written or dram_written is None or dram_read is None:
            continue
        cap = dirty_cap_bytes(raw.get("device", ""))
        kept = written - dram_written
        informative = dram_written >= MIN_WRITTEN_BACK * written and (cap is None or kept < cap)
        out.append((raw["id"], written, dram_written, dram_read,
                    lifetime_bytes(written, dram_written, dram_read) if informative else None))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("validation/results/h100"))
    args = parser.parse_args(argv)
    console = Console()
    rows = estimates(args.results)
    table = Table(title=f"dirty lifetime over the calibration subset ({', '.join(CALIBRATION_KERNELS)})")
    for col in ("case", "written", "reached HBM", "HBM read", "lifetime"):
        table.add_column(col, justify="left" if col == "case" else "right")
    for case, written, dram_written, dram_read, lifetime in rows:
        table.add_row(case, f"{written / 1e6:.2f} MB", f"{dram_written / 1e6:.2f} MB", f"{dram_read / 1e6:.1f} MB",
                      "-" if lifetime is None else f"{lifetime / 1e6:.1f} MB")
    console.print(table)
    fitted = [lifetime for *_, lifetime in rows if lifetime is not None]
    if not fitted:
        console.print("no calibration row says anything of the lifetime")
        return 1
    console.print(f"median: {statistics.median(fitted) / 1e6:.1f} MB over {len(fitted)} rows "
                  f"(min {min(fitted) / 1e6:.1f}, max {max(fitted) / 1e6:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
