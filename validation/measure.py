"""Measure a validation suite on the GPU: median time of each case, then its Nsight Compute counters.

    python3 -m validation.measure --suite third-party --out DIR [--no-ncu] [--only REGEX] [--ours flash2,...]

Runs on the GPU machine without memsim (torch, triton, rich). Writes DIR/measurements.jsonl, one row
per case: the case (kernel, shape, dtype), its median time (triton.testing.do_bench, inputs rotated),
every kernel launch ncu saw in the case's range with its counters and launch configuration, and
the device, driver, torch/triton/CUDA versions and date. Without ncu it records times only and says so.
The rows are data: never edit them by hand; run again instead.
"""

import argparse
import datetime
import json
import re
import subprocess
import sys
from pathlib import Path

import torch

from validation import ncu
from validation.cases import Case, suite
from validation.runners import input_sets, kernel_call, launch_description, rotating


def environment() -> dict:
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30).stdout.strip()
    except OSError:
        driver = None
    import triton

    return {"device": torch.cuda.get_device_name(), "driver": driver, "torch": torch.__version__,
            "triton": triton.__version__, "cuda": torch.version.cuda,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")}


def add_case_arguments(parser: argparse.ArgumentParser, out_help: str, out_required: bool = False) -> None:
    """The options that choose a suite's cases (read back by `select`) and the output folder."""
    parser.add_argument("--suite", default="third-party", help="third-party, full or smoke")
    parser.add_argument("--ours", help="our kernels to include with --suite full, comma-separated")
    parser.add_argument("--only", help="regular expression on case ids")
    parser.add_argument("--out", type=Path, required=out_required, help=out_help)


def launches_by_case(cases: list[Case], launches: list[dict]) -> dict[str, list[dict]]:
    """Case id -> the profiled launches in its NVTX range, in launch order."""
    by_case: dict[str, list[dict]] = {c.id: [] for c in cases}
    for launch in launches:
        if launch["range"] in by_case:
            by_case[launch["range"]].append(launch)
    return by_case


def select(args) -> list[Case]:
    ours = tuple(k for k in (args.ours or "").split(",") if k)
    cases = suite(args.suite, ours)
    if args.only:
        pattern = re.compile(args.only)
        cases = [c for c in cases if pattern.search(c.id)]
    return cases


def gpu_cases(args, prog: str) -> list[Case] | int:
    """The cases the options choose, on a machine with a CUDA device; otherwise the exit status, said on stderr."""
    if not torch.cuda.is_available():
        print(f"{prog}: no CUDA device; run this on the GPU machine", file=sys.stderr)
        return 1
    cases = selected(args, prog)
    return 2 if cases is None else cases


def selected(args, prog: str) -> list[Case] | None:
    """The cases the options choose, or None, said on stderr as `prog: ...`, where they choose wrongly."""
    try:
        return select(args)
    except ValueError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return None


def time_case(case: Case) -> dict:
    """Median milliseconds over do_bench's repeats (it also clears L2 before each), inputs rotated."""
    import triton.testing

    call = kernel_call(case)
    run = rotating(input_sets(case), call)
    run()  # compile / autotune outside the timing
    torch.cuda.synchronize()
    median_ms = triton.testing.do_bench(run, warmup=25, rep=200, return_mode="median")
    return {"time_s": median_ms * 1e-3, "timing": "triton.testing.do_bench median, inputs rotated"}


def profiled_call(call, inputs: tuple, range_name: str) -> None:
    """`call(*inputs)` once to warm up (compilation, per-input preparation), then again inside the NVTX range
    `range_name` between cudaProfilerStart and Stop: what ncu profiles."""
    call(*inputs)
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    torch.cuda.nvtx.range_push(range_name)
    call(*inputs)
    torch.cuda.synchronize()
    torch.cuda.nvtx.range_pop()
    torch.cuda.profiler.stop()


def profile_pass(cases: list[Case]) -> None:
    """Under ncu: each case once, warmed up, inside its NVTX range and cudaProfilerStart/Stop."""
    for case in cases:
        try:
            profiled_call(kernel_call(case), input_sets(case, count=1)[0], case.id)
        except Exception as err:  # a backend that refuses a shape: the timing pass records why
            print(f"measure: {case.id}: {str(err).splitlines()[0] if str(err) else type(err).__name__}",
                  file=sys.stderr)


def counters(cases: list[Case], argv: list[str], out: Path) -> dict[str, list[dict]]:
    """ncu over the profile pass twice: the counters memsim predicts, then the crossbar counters (ncu.py says why
    apart). Raw output in out/ncu.csv and out/ncu-crossbar.csv."""
    runs = []
    for name, metrics in (("ncu", ncu.COUNTERS + ncu.optional_counters()), ("ncu-crossbar", ncu.CROSSBAR_COUNTERS)):
        cmd = ncu.command([sys.executable, "-m", "validation.measure", "--profile-pass", *argv], metrics)
        done = subprocess.run(cmd, capture_output=True, text=True)
        (out / f"{name}.csv").write_text(done.stdout)
        (out / f"{name}.log").write_text(done.stderr)
        runs.append(ncu.parse(done.stdout))
    return launches_by_case(cases, ncu.merge(runs))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_case_arguments(parser, "folder for measurements.jsonl and ncu's raw output")
    parser.add_argument("--no-ncu", action="store_true", help="times only")
    parser.add_argument("--profile-pass", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cases = gpu_cases(args, "measure")
    if isinstance(cases, int):
        return cases
    if args.profile_pass:
        profile_pass(cases)
        return 0
    if args.out is None:
        parser.error("--out DIR is required")
    args.out.mkdir(parents=True, exist_ok=True)
    return run_suite(cases, args, [a for a in argv if a != "--no-ncu"])


def run_suite(cases: list[Case], args, argv: list[str]) -> int:
    from rich.progress import Progress

    env = environment()
    rows = {}
    with Progress(transient=False) as bar:
        task = bar.add_task(f"timing {len(cases)} cases", total=len(cases))
        for case in cases:
            try:
                rows[case.id] = {**case.as_dict(), **launch_description(case), **time_case(case)}
            except Exception as err:
                rows[case.id] = {**case.as_dict(), "error": str(err).splitlines()[0] if str(err) else repr(err)}
            torch.cuda.empty_cache()
            bar.advance(task)
    use_ncu = ncu.available() and not args.no_ncu
    if not use_ncu:
        print("measure: ncu " + ("skipped (--no-ncu)" if args.no_ncu else "not found") + ": times only, no counters")
    launches = counters(cases, argv, args.out) if use_ncu else {}
    with open(args.out / "measurements.jsonl", "w") as f:
        for case in cases:
            row = {**rows[case.id], "launches": launches.get(case.id, []), "counters": use_ncu, **env}
            f.write(json.dumps(row) + "\n")
    profiled = sum(1 for c in cases if launches.get(c.id))
    print(f"measure: {len(cases)} cases, {sum('time_s' in r for r in rows.values())} timed, {profiled} with counters "
          f"-> {args.out / 'measurements.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
