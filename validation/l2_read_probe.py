"""Where do a kernel's L2 -> SM reads go? Every Nsight Compute metric of one launch per case.

memsim predicts the L2 -> SM read bytes of a FlashAttention forward as every CTA reading every K/V
tile it needs. The recorded `lts__t_sectors_srcunit_tex_op_read` of several non-causal forwards is
well below that (validation/results/h100), while causal ones match. This probe runs chosen cases once
each (after a warm-up that compiles them) between cudaProfilerStart and Stop, so that

    ncu --clock-control none --profile-from-start off --set full --page raw --csv \\
        python3 -m validation.l2_read_probe CASE_ID ... > probe.csv

records the whole L1/L2/DRAM breakdown of each launch: sectors by source unit, L1 hits, async
copies and bulk (TMA) copies. With --ptx DIR it also counts the load instructions of the Triton
kernels it compiled (cp.async .ca/.cg, bulk tensor copies, plain global loads).
"""

import argparse
import collections
import pathlib
import sys

import torch

from validation.cases import Case
from validation.runners import input_sets, kernel_call

PTX_OPS = ("cp.async.ca", "cp.async.cg", "cp.async.bulk", "ld.global", "mma.sync", "wgmma.mma_async", "ldmatrix")


def parse_case(text: str) -> Case:
    try:
        return Case.from_id(text)
    except ValueError as err:
        raise SystemExit(f"l2_read_probe: {err}") from None


def ptx_counts(cache_dir: pathlib.Path) -> dict[str, dict[str, int]]:
    """Load and matrix instructions per compiled Triton kernel (.ptx files in Triton's cache)."""
    counts = {}
    for path in sorted(cache_dir.rglob("*.ptx")):
        text = path.read_text()
        counts[path.stem] = collections.Counter({op: text.count(op) for op in PTX_OPS})
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="+", help="case ids, e.g. flash2.b1h16k16n4096m4096d128c0.bf16")
    parser.add_argument("--ptx", type=pathlib.Path, help="Triton cache folder whose .ptx to count afterwards")
    args = parser.parse_args(argv)
    cases = [parse_case(text) for text in args.cases]
    for case in cases:
        call = kernel_call(case)
        inputs = input_sets(case, count=1)[0]
        call(*inputs)  # compile and warm up outside the profiled range
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStart()
        torch.cuda.nvtx.range_push(case.id)
        call(*inputs)
        torch.cuda.synchronize()
        torch.cuda.nvtx.range_pop()
        torch.cuda.cudart().cudaProfilerStop()
        print(f"probed {case.id}", file=sys.stderr)
    if args.ptx is not None:
        for name, counts in ptx_counts(args.ptx).items():
            print(f"ptx {name}: " + ", ".join(f"{op} {n}" for op, n in counts.items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
