"""How much written data an H100's L2 still holds dirty when a kernel ends (ncu does not count it).

ncu's dram__bytes_write.sum counts what reaches HBM while the kernel runs; lines still dirty in L2
when it ends are written later, outside the kernel (validation/results/h100: an FA2 forward writing
8 MB of O shows almost no DRAM writes). This microbenchmark measures the amount directly: one kernel
stores W bytes into a fresh buffer (nothing read; "write"), and one copies W bytes from another buffer
("copy": reads stream through L2 as the writes land), for W from 1 MiB to 256 MiB, each inside its own
NVTX range under ncu (--clock-control none; ncu flushes the caches before each kernel). The dirty
data left at the end is W - dram__bytes_write: memsim's `l2_dirty_resident_bytes` ceiling. No
attention kernel is involved: nothing here is fitted to the validation cases.

    python3 validation/l2_write_back.py --out DIR         # on the GPU; runs ncu on itself
"""

import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file: `validation` importable
from validation import ncu, self_profile  # noqa: E402

SIZES_MIB = (1, 2, 4, 6, 8, 10, 12, 16, 24, 32, 48, 64, 128, 256)
BLOCK = 4096


@triton.jit
def store_kernel(out_ptr, n_elements, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, tl.full([BLOCK], 1.0, tl.float32), mask=offs < n_elements)


@triton.jit
def copy_kernel(in_ptr, out_ptr, n_elements, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, tl.load(in_ptr + offs, mask=offs < n_elements), mask=offs < n_elements)


def write(out: torch.Tensor) -> None:
    n = out.numel()
    store_kernel[(triton.cdiv(n, BLOCK),)](out, n, BLOCK=BLOCK, num_warps=8)


def copy(src: torch.Tensor, out: torch.Tensor) -> None:
    n = out.numel()
    copy_kernel[(triton.cdiv(n, BLOCK),)](src, out, n, BLOCK=BLOCK, num_warps=8)


def profile_pass() -> None:
    """Under ncu: each size once, warmed up outside the profiled region."""
    buffers = {mib: torch.empty(mib << 18, dtype=torch.float32, device="cuda") for mib in SIZES_MIB}  # 4 B each
    sources = {mib: torch.ones_like(out) for mib, out in buffers.items()}
    launches = []
    for mib, out in buffers.items():
        launches += [(f"write{mib}MiB", lambda out=out: write(out)),
                     (f"copy{mib}MiB", lambda mib=mib, out=out: copy(sources[mib], out))]
    self_profile.profiled(launches)


def main() -> int:
    out = self_profile.out_dir(__doc__, profile_pass)
    if out is None:
        return 0
    metrics = ["dram__bytes_write.sum", "dram__bytes_read.sum", "lts__t_sectors_srcunit_tex_op_write.sum",
               "gpu__time_duration.sum"]
    done = self_profile.profile(__file__, metrics)
    out.mkdir(parents=True, exist_ok=True)
    (out / "l2-write-back-ncu.csv").write_text(done.stdout)
    rows = []
    for launch in ncu.parse(done.stdout):
        kind = "copy" if launch["range"].startswith("copy") else "write"
        written = int(launch["range"].removeprefix(kind).removesuffix("MiB")) << 20
        dram = launch["dram__bytes_write.sum"]
        rows.append({"kernel": kind, "written_bytes": written, **ncu.probe_counters(launch),
                     "dirty_at_end_bytes": written - dram})
        print(f"{kind:5s} {written / 2**20:6.0f} MiB: DRAM writes {dram / 2**20:8.2f} MiB, "
              f"dirty in L2 at the end {(written - dram) / 2**20:6.2f} MiB")
    self_profile.write_rows(out / "l2-write-back.json", "python3 validation/l2_write_back.py --out DIR", rows)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
