"""What the probes that run Nsight Compute on themselves share (l2_write_back.py, l2_dirty_lifetime.py,
l2_interleaved_probe.py, cta_spread_probe.py, key_order_probe.py): their command line, the ncu run over their own
profiling pass (its CSV kept beside their rows), and the provenance written beside their rows.

Each probe is `python3 validation/<probe>.py --out DIR`: it runs ncu (validation.ncu.command: clocks as
found, only what lies between cudaProfilerStart and Stop) on `python3 validation/<probe>.py --profile-pass`,
which launches its kernels once each inside NVTX ranges, and reads the counters back.
"""

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

from validation import ncu


def out_dir(doc: str, profile_pass: Callable[[], None], argv: list[str] | None = None) -> Path | None:
    """The folder results go to; None when this process is ncu's profiling pass, which it has then run."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--profile-pass", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.profile_pass:
        profile_pass()
        return None
    if args.out is None:
        parser.error("--out DIR is required")
    return args.out


def profile(script: str, metrics: list[str]) -> subprocess.CompletedProcess:
    """ncu over `script --profile-pass`, its CSV on stdout."""
    return subprocess.run(ncu.command([sys.executable, script, "--profile-pass"], metrics),
                          capture_output=True, text=True)


def profiled_launches(script: str, metrics: list[str], out: Path, csv_name: str) -> list[dict]:
    """ncu over `script --profile-pass`; its CSV (and the tail of its messages) kept as out/csv_name; the launches
    it profiled, parsed (validation.ncu.parse)."""
    done = profile(script, metrics)
    out.mkdir(parents=True, exist_ok=True)
    (out / csv_name).write_text(done.stdout + done.stderr[-4000:])
    return ncu.parse(done.stdout)


def profiled(launches: list[tuple[str, Callable[[], None]]]) -> None:
    """The profiling pass: every (NVTX label, launch) once to warm up (compile, allocate), then each again inside
    its NVTX range between cudaProfilerStart and Stop, which is all that ncu sees (ncu.command)."""
    import torch

    for _, run in launches:
        run()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    for label, run in launches:
        torch.cuda.nvtx.range_push(label)
        run()
        torch.cuda.nvtx.range_pop()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()


def write_rows(path: Path, command: str, rows: list[dict]) -> None:
    """A probe's rows as JSON with their provenance (device, driver, versions, date, command)."""
    path.write_text(json.dumps({**provenance(command), "rows": rows}, indent=2))


def driver_version() -> str:
    done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                          text=True)
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else "unknown"


def provenance(command: str) -> dict:
    """Device, driver, torch and triton versions, date and command, for a probe's JSON."""
    import torch
    import triton

    return {"device": torch.cuda.get_device_name(), "driver": driver_version(), "torch": torch.__version__,
            "triton": triton.__version__, "date": datetime.date.today().isoformat(), "command": command}
