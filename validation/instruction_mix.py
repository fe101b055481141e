"""The warp instructions each launch of a suite executes, read by Nsight Compute on the GPU.

    python3 -m validation.instruction_mix --suite full --ours flash1,lightning --out DIR [--only REGEX]

A kernel's instruction count is part of its description, as its launch config is: it follows from its code and
shape, not from how fast it ran. memsim takes it as `CtaResources.loop_instructions` (SASS instructions per warp
per loop iteration), which validation.mapping derives from these records:
`smsp__inst_executed.sum` (warp instructions of the whole launch) over the launch's warps x loop iterations.
The other metrics are recorded to explain the time, never to predict it: how often a warp scheduler issued
(`smsp__issue_active`), the warps it had to choose from (`smsp__warps_active`), and the SM clock.

Writes DIR/instructions.jsonl (one row per case: its launches with these metrics, and the device, driver and
versions) and ncu's raw CSV. Runs on the GPU machine; the rows are data, never edited by hand.
"""

import argparse
import json
import subprocess
import sys

import torch

from validation import ncu
from validation.measure import add_case_arguments, environment, launches_by_case, selected

METRICS = [
    "smsp__inst_executed.sum",
    "smsp__issue_active.avg.pct_of_peak_sustained_active",
    "smsp__warps_active.avg.per_cycle_active",
    "smsp__cycles_active.avg",
    "sm__cycles_elapsed.avg.per_second",
    "gpu__time_duration.sum",
    "launch__grid_size",
    "launch__block_size",
]
# With --stalls: for each reason a warp can wait, the warps waiting for it per issued instruction (ncu's warp state
# statistics): what a lone warp's cycles per instruction are made of. Kept where this ncu knows them.
STALL_REASONS = ("barrier", "branch_resolving", "dispatch_stall", "drain", "imc_miss", "lg_throttle", "long_scoreboard",
                 "math_pipe_throttle", "membar", "mio_throttle", "misc", "no_instruction", "not_selected", "selected",
                 "short_scoreboard", "sleeping", "tex_throttle", "wait")
STALLS = [f"smsp__average_warps_issue_stalled_{reason}_per_issue_active.ratio" for reason in STALL_REASONS]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_case_arguments(parser, "folder for instructions.jsonl and ncu's raw output", out_required=True)
    parser.add_argument("--stalls", action="store_true", help="also each stall reason per issued instruction")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() or not ncu.available():
        print("instruction_mix: needs a CUDA device and ncu; run this on the GPU machine", file=sys.stderr)
        return 1
    cases = selected(args, "instruction_mix")
    if cases is None:
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    metrics = METRICS + (ncu.optional_counters(STALLS) if args.stalls else [])
    passed = [a for a in argv if a != "--stalls"]
    cmd = ncu.command([sys.executable, "-m", "validation.measure", "--profile-pass", *passed], metrics)
    done = subprocess.run(cmd, capture_output=True, text=True)
    (args.out / "ncu-instructions.csv").write_text(done.stdout)
    (args.out / "ncu-instructions.log").write_text(done.stderr)
    by_case = launches_by_case(cases, ncu.parse(done.stdout))
    env = environment()
    with open(args.out / "instructions.jsonl", "w") as f:
        for case in cases:
            f.write(json.dumps({**case.as_dict(), "launches": by_case[case.id], **env}) + "\n")
    print(f"instruction_mix: {len(cases)} cases, {sum(1 for v in by_case.values() if v)} profiled "
          f"-> {args.out / 'instructions.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
