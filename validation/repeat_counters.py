"""Each case's counters measured again, several times: how far one Nsight Compute run of a case is from the next.

    python3 -m validation.repeat_counters --suite third-party --repeats 4 --out DIR

A recorded row (validation.measure) is one ncu run of one call. Where a kernel leaves part of its output dirty in
L2 when it ends, the DRAM bytes it wrote during its run move from run to run: on the H100 the two runs of
2026-11-22 put flex_attention at B1 H16 N4096 d128 at 8.52 and 7.04 MB and SDPA's memory-efficient kernel at the
same shape at 8.08 and 10.38 MB, where most cases agree within 1%. Under ncu (`--clock-control none`, and ncu's
default cache control: every kernel starts with a flushed L2, as in validation.measure), each case is called
`--repeats` times, each call on inputs of its own (drawn on the GPU), each in an NVTX range `<id>#<repeat>`, with
the counters validation.measure records first (ncu.COUNTERS, in one run, so that the DRAM bytes are comparable).

Writes DIR/repeats.jsonl: one row per case, its `repeats` a list of launch lists (as a measurement row's
`launches`), with the device and versions. validation.compare takes, for each recorded case, the median of its
row and of the repeats whose launches match it. The rows are data: never edit them by hand; run again instead.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from validation import ncu
from validation.cases import Case
from validation.host_time import device_sets
from validation.measure import add_case_arguments, environment, gpu_cases, profiled_call
from validation.runners import kernel_call

RANGE_MARK = "#"  # an NVTX range is "<case id>#<repeat>"


def range_name(case_id: str, repeat: int) -> str:
    return f"{case_id}{RANGE_MARK}{repeat}"


def profile_pass(cases: list[Case], repeats: int) -> None:
    """Under ncu: each case `repeats` times, each on its own inputs, warmed up on them first (compilation and any
    per-input preparation, as a paged layout or quantised copy, stay outside the profiled range)."""
    for case in cases:
        try:
            call = kernel_call(case)
            for repeat, inputs in enumerate(device_sets(case, count=repeats)):
                profiled_call(call, inputs, range_name(case.id, repeat))
            del inputs
            torch.cuda.empty_cache()
        except Exception as err:  # a backend that refuses a shape: no repeats for it
            print(f"repeat_counters: {case.id}: {str(err).splitlines()[0] if str(err) else type(err).__name__}",
                  file=sys.stderr)


def by_case(launches: list[dict], cases: list[Case], repeats: int) -> dict[str, list[list[dict]]]:
    """Case id -> one list of launches per repeat that ncu profiled, in repeat order."""
    out: dict[str, list[list[dict]]] = {c.id: [[] for _ in range(repeats)] for c in cases}
    for launch in launches:
        case_id, mark, repeat = launch["range"].rpartition(RANGE_MARK)
        if mark and case_id in out and repeat.isdigit() and int(repeat) < repeats:
            out[case_id][int(repeat)].append({k: v for k, v in launch.items() if k != "range"})
    return {case_id: [r for r in runs if r] for case_id, runs in out.items()}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_case_arguments(parser, "folder for repeats.jsonl and ncu's raw output")
    parser.add_argument("--repeats", type=int, default=4, help="calls profiled per case (default 4)")
    parser.add_argument("--profile-pass", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, not {args.repeats}")
    cases = gpu_cases(args, "repeat_counters")
    if isinstance(cases, int):
        return cases
    if args.profile_pass:
        profile_pass(cases, args.repeats)
        return 0
    if args.out is None:
        parser.error("--out DIR is required")
    if not ncu.available():
        print("repeat_counters: ncu not found; it measures counters only, so there is nothing to do without it",
              file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"repeat_counters: {len(cases)} cases x {args.repeats} calls under ncu")
    cmd = ncu.command([sys.executable, "-m", "validation.repeat_counters", "--profile-pass", *argv], ncu.COUNTERS)
    done = subprocess.run(cmd, capture_output=True, text=True)
    (args.out / "ncu-repeats.csv").write_text(done.stdout)
    (args.out / "ncu-repeats.log").write_text(done.stderr)
    runs = by_case(ncu.parse(done.stdout), cases, args.repeats)
    env = environment()
    with open(args.out / "repeats.jsonl", "w") as f:
        for case in cases:
            f.write(json.dumps({**case.as_dict(), "repeats": runs[case.id], **env}) + "\n")
    for case in cases:
        written = [sum(k.get("dram__bytes_write.sum") or 0.0 for k in run) / 1e6 for run in runs[case.id]]
        print(f"{case.id:55s} DRAM written " + " ".join(f"{w:8.2f}" for w in written) + " MB")
    done_cases = sum(1 for c in cases if runs[c.id])
    print(f"repeat_counters: {done_cases} of {len(cases)} cases profiled -> {args.out / 'repeats.jsonl'}")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
