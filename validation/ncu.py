"""Nsight Compute: the command that profiles a suite, and its CSV read back as one row per kernel launch.

The counters memsim predicts (DESIGN.md, "three levels"): DRAM bytes read and written (HBM), L2
sectors requested by the SMs (L2 -> SM reads and SM -> L2 writes, 32 B each), kernel time, plus
tensor-pipe activity and the launch configuration. `--clock-control none`: the card runs at the
clocks it has, as in production (never change its clocks).
"""

import csv
import io
import shutil
import subprocess

COUNTERS = [
    "dram__bytes_read.sum",
    "dram__bytes_write.sum",
    "lts__t_sectors_srcunit_tex_op_read.sum",
    "lts__t_sectors_srcunit_tex_op_write.sum",
    "gpu__time_duration.sum",
    "launch__grid_size",
    "launch__block_size",
    "launch__registers_per_thread",
    "launch__shared_mem_per_block_dynamic",
    "launch__shared_mem_per_block_static",
]
# Tensor-pipe activity: on Hopper this counts HMMA (mma.sync, FA2) and HGMMA/QGMMA (wgmma, FA3, cuDNN)
# alike (ncu --query-metrics, 2025.3). Kept only where this ncu knows it (optional_counters), since one
# unknown metric fails the whole run.
TENSOR_COUNTERS = [
    "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active",
]
SECTOR_BYTES = 32


def available() -> bool:
    return shutil.which("ncu") is not None


def optional_counters() -> list[str]:
    """The tensor counters this ncu and GPU know."""
    try:
        listing = subprocess.run(["ncu", "--query-metrics"], capture_output=True, text=True, timeout=120).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    known = {line.split()[0] for line in listing.splitlines() if line.strip()}
    return [m for m in TENSOR_COUNTERS if m.split(".")[0] in known]


def command(python_args: list[str], metrics: list[str]) -> list[str]:
    """ncu profiling only what runs between cudaProfilerStart and Stop, kernels renamed by NVTX range."""
    return ["ncu", "--clock-control", "none", "--profile-from-start", "off", "--nvtx", "--print-nvtx-rename",
            "kernel", "--print-units", "base", "--csv", "--metrics", ",".join(metrics), *python_args]


def _number(text: str) -> float | None:
    text = text.replace(",", "").strip()
    try:
        return float(text)
    except ValueError:
        return None


def parse(csv_text: str) -> list[dict]:
    """One dict per profiled launch: {"range", "kernel", metric: value, ...}, in launch order.

    The kernel name is "<NVTX range>/<kernel>" (--print-nvtx-rename kernel); lines before the
    CSV header (ncu's own messages, the program's output) are skipped."""
    lines = csv_text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"ID"')), None)
    if start is None:
        return []
    launches: dict[str, dict] = {}
    for row in csv.DictReader(io.StringIO("\n".join(lines[start:]))):
        launch = launches.setdefault(row["ID"], _names(row.get("Kernel Name", "")))
        launch[row["Metric Name"]] = _number(row.get("Metric Value", ""))
    return list(launches.values())


def _names(name: str) -> dict:
    range_, _, kernel = name.partition("/") if "/" in name else ("", "", name)
    return {"range": range_.strip(), "kernel": kernel.strip()}
