"""How much data brought into an H100's L2 after a write sends the dirty line to HBM.

memsim's `l2_dirty_lifetime_bytes` and `l2_shared_tile_age_weight` (memsim.writes, memsim.engine.l2cache)
come from this microbenchmark, fitted by validation/fit_l2_dirty_lifetime.py; no attention kernel takes part:
one kernel whose first CTAs (in program-id order, so they run first) store W bytes into a fresh
buffer and whose later CTAs then read R bytes of another buffer, each read tile once ("unique"), or R bytes
over a region of U bytes read again and again ("reuse": L2 hits, nothing new brought in after the first pass),
or R bytes of distinct tiles each read by C consecutive CTAs ("shared", as K/V tiles are read by the CTAs of a
head: CTAs on SMs of both L2 partitions, so a tile crosses the fabric between them and may be kept in both).
Under ncu (--clock-control none; caches flushed before each kernel) dram__bytes_write.sum is what reached HBM
during the kernel. If dirty lines survive until L bytes have been filled after them, the writes reach HBM
once R > L - W (all of them once R >= L); if hits do not age them, "reuse" writes as little as R = U.

    python3 validation/l2_dirty_lifetime.py --out DIR         # on the GPU; runs ncu on itself
"""

import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file: `validation` importable
from validation import ncu, self_profile  # noqa: E402

BLOCK = 4096  # fp32 elements per CTA: 16 KiB
MIB = 1 << 20
WRITES_MIB = (8, 16)
UNIQUE_READS_MIB = (0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 48, 64, 96)
REUSE = ((64, 4), (64, 16), (128, 8))  # (R MiB read, over U MiB)
SHARED_READS_MIB = (4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 64)
SHARED_COPIES = (2, 8)  # CTAs reading each tile


@triton.jit
def write_then_read(out_ptr, src_ptr, sink_ptr, write_ctas, reuse_elements, copies, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    lanes = tl.arange(0, BLOCK)
    if pid < write_ctas:
        tl.store(out_ptr + pid.to(tl.int64) * BLOCK + lanes, tl.full([BLOCK], 1.0, tl.float32))
    else:
        start = ((pid - write_ctas).to(tl.int64) // copies * BLOCK) % reuse_elements
        total = tl.sum(tl.load(src_ptr + start + lanes), 0)
        tl.store(sink_ptr + pid, total, mask=total == -1.0)  # never true: the loads stay, nothing is written


def launch(out: torch.Tensor, src: torch.Tensor, sink: torch.Tensor, read_bytes: int, reuse_bytes: int,
           copies: int = 1) -> None:
    """`read_bytes` of distinct data over `reuse_bytes` (read again past it), each tile read by `copies` CTAs."""
    write_ctas = out.numel() // BLOCK
    read_ctas = read_bytes // (4 * BLOCK) * copies
    write_then_read[(write_ctas + read_ctas,)](out, src, sink, write_ctas, max(BLOCK, reuse_bytes // 4), copies,
                                              BLOCK=BLOCK, num_warps=8)


def cases() -> list[tuple[str, int, int, int, int]]:
    """(label, W, R, U, C) in bytes; U = R for unique reads; C CTAs read each tile."""
    out = [(f"unique_w{w}_r{r}", w * MIB, r * MIB, r * MIB, 1) for w in WRITES_MIB for r in UNIQUE_READS_MIB]
    out += [(f"reuse_w8_r{r}_u{u}", 8 * MIB, r * MIB, u * MIB, 1) for r, u in REUSE]
    out += [(f"shared_w8_r{r}_c{c}", 8 * MIB, r * MIB, r * MIB, c) for c in SHARED_COPIES for r in SHARED_READS_MIB]
    return out


def profile_pass() -> None:
    """Under ncu: each case once, warmed up outside the profiled region."""
    src = torch.ones(max(UNIQUE_READS_MIB + tuple(r for r, _ in REUSE)) * MIB // 4, device="cuda")
    sink = torch.zeros(1 << 16, device="cuda")
    outs = {w: torch.empty(w * MIB // 4, device="cuda") for w in WRITES_MIB}
    self_profile.profiled([(label, lambda w=w, r=r, u=u, c=c: launch(outs[w // MIB], src, sink, r, u, c))
                           for label, w, r, u, c in cases()])


def main() -> int:
    out = self_profile.out_dir(__doc__, profile_pass)
    if out is None:
        return 0
    metrics = ["dram__bytes_write.sum", "dram__bytes_read.sum", "lts__t_sectors_srcunit_tex_op_write.sum",
               "lts__t_sectors_srcunit_tex_op_read.sum", "gpu__time_duration.sum",
               "lts__t_sectors_srcunit_ltcfabric.sum"]
    launches = self_profile.profiled_launches(__file__, metrics, out, "l2-dirty-lifetime-ncu.csv")
    by_label = {label: (w, r, u, c) for label, w, r, u, c in cases()}
    rows = []
    for launch_row in launches:
        label = launch_row["range"]
        if label not in by_label:
            continue
        w, r, u, c = by_label[label]
        dram = launch_row["dram__bytes_write.sum"]
        rows.append({"case": label, "written_bytes": w, "read_bytes": r, "read_region_bytes": u, "readers_per_tile": c,
                     "fabric_bytes": 0.0, **ncu.probe_counters(launch_row), "dirty_at_end_bytes": w - dram})
        print(f"{label:22s} W {w / MIB:4.0f} MiB, R {r / MIB:4.0f} MiB over {u / MIB:4.0f}: DRAM writes "
              f"{dram / MIB:7.2f} MiB, DRAM reads {launch_row['dram__bytes_read.sum'] / MIB:7.2f} MiB")
    self_profile.write_rows(out / "l2-dirty-lifetime.json", "python3 validation/l2_dirty_lifetime.py --out DIR", rows)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
