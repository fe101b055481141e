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

from memsim.sectors import SECTOR_BYTES

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
# Bytes the SMs' L1TEX units received from L2 over the crossbar (LDG, LDGSTS and TMA loads alike) and sent to
# it. Where several SMs read one sector at nearly the same time, the L2 slice looks it up once
# (lts__t_sectors_srcunit_tex_op_read counts lookups) but every SM receives it: on the H100 our FA2 forward at
# B1 H16 N4096 d128 received 1,090,519,040 B for 14,181,148 sector lookups (453.8 MB), while 128 CTAs that share
# nothing received exactly what the slices looked up (results/h100/l2-read-probe-2026-11-22.csv).
# They are collected in a profiling run of their own: in the same run as COUNTERS, ncu's replay added about
# 2.3 MB of DRAM writes to every kernel (decode kernels 0.1 -> 2.4 MB; reads unchanged; measured 2026-11-22).
CROSSBAR_COUNTERS = [
    "l1tex__m_xbar2l1tex_read_bytes.sum",
    "l1tex__m_l1tex2xbar_write_bytes.sum",
    "lts__t_sectors_srcunit_tex_op_read_lookup_hit.sum",
    "launch__waves_per_multiprocessor",
    "sm__warps_active.avg.pct_of_peak_sustained_active",
]
# Tensor-pipe activity: on Hopper this counts HMMA (mma.sync, FA2) and HGMMA/QGMMA (wgmma, FA3, cuDNN)
# alike (ncu --query-metrics, 2025.3). Kept only where this ncu knows it (optional_counters), since one
# unknown metric fails the whole run.
TENSOR_COUNTERS = [
    "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active",
]


def available() -> bool:
    return shutil.which("ncu") is not None


def optional_counters(wanted: list[str] = TENSOR_COUNTERS) -> list[str]:
    """The metrics of `wanted` (by default the tensor counters) that this ncu and GPU know."""
    try:
        listing = subprocess.run(["ncu", "--query-metrics"], capture_output=True, text=True, timeout=120).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    known = {line.split()[0] for line in listing.splitlines() if line.strip()}
    return [m for m in wanted if m.split(".")[0] in known]


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


def merge(runs: list[list[dict]]) -> list[dict]:
    """Launches of several profiling runs of the same program, each run's metrics added to the launch at the
    same position in the same NVTX range (the program launches the same kernels in the same order each run)."""
    merged = [dict(launch) for launch in runs[0]] if runs else []
    for run in runs[1:]:
        by_range: dict[str, list[dict]] = {}
        for launch in run:
            by_range.setdefault(launch["range"], []).append(launch)
        seen: dict[str, int] = {}
        for launch in merged:
            position = seen.get(launch["range"], 0)
            seen[launch["range"]] = position + 1
            others = by_range.get(launch["range"], [])
            if position < len(others) and others[position]["kernel"] == launch["kernel"]:
                launch.update({k: v for k, v in others[position].items() if k not in ("range", "kernel")})
    return merged


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


_PROBE_FIELDS = (  # (row key, metric, factor): bytes from sectors, seconds from nanoseconds
    ("dram_write_bytes", "dram__bytes_write.sum", 1),
    ("dram_read_bytes", "dram__bytes_read.sum", 1),
    ("l2_write_bytes", "lts__t_sectors_srcunit_tex_op_write.sum", SECTOR_BYTES),
    ("l2_read_bytes", "lts__t_sectors_srcunit_tex_op_read.sum", SECTOR_BYTES),
    ("time_s", "gpu__time_duration.sum", 1e-9),
    ("fabric_bytes", "lts__t_sectors_srcunit_ltcfabric.sum", SECTOR_BYTES),  # between the two L2 partitions
)


def probe_counters(launch: dict) -> dict:
    """A microbenchmark's counters from one parsed launch, in bytes and seconds: those of _PROBE_FIELDS it has."""
    return {key: launch[metric] * factor for key, metric, factor in _PROBE_FIELDS if metric in launch}


def parse_raw(csv_text: str) -> list[dict]:
    """As `parse`, for `--page raw` output: one row per launch, a column per metric, a row of units first."""
    lines = csv_text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"ID"')), None)
    if start is None:
        return []
    rows = list(csv.DictReader(io.StringIO("\n".join(lines[start:]))))[1:]  # the first row holds the units
    launches = []
    for row in rows:
        launch = _names(row.get("Kernel Name", ""))
        launch.update({name: _number(value) for name, value in row.items() if "__" in name})
        launches.append(launch)
    return launches


def _names(name: str) -> dict:
    range_, _, kernel = name.partition("/") if "/" in name else ("", "", name)
    return {"range": range_.strip(), "kernel": kernel.strip()}
