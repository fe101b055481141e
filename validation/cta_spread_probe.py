"""How far apart an H100's identical CTAs finish, and what a read-only kernel writes to HBM.

memsim's engine runs identical CTAs in lock-step: CTAs started together finish together, so the
outputs of a one-wave kernel are all written at its very end and stay dirty in L2 (decode kernels:
predicted 0 bytes written to HBM, measured 0.05-0.4 MB; validation/ACCURACY.md, "What it gets wrong, in
full"). This probe
measures the two facts that decide it, with no attention kernel:

1. the spread of CTA finish times: every CTA streams an equal share of R bytes (its own contiguous
   chunk, 16 KiB per step) and stamps %globaltimer and %smid at its start and end (a run without
   the profiler);
2. HBM writes under ncu (--clock-control none, caches flushed before each kernel): the same kernel
   with no stamps, writing nothing at all (the floor) or W bytes per CTA at its end.

    python3 validation/cta_spread_probe.py --out DIR         # on the GPU; runs ncu on itself
"""

import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file: `validation` importable
from validation import ncu, self_profile  # noqa: E402

BLOCK = 4096  # fp32 elements per step: 16 KiB
MIB = 1 << 20
READS_MIB = (64, 256, 1024)
CTAS_PER_SM = (1, 2, 16)  # 16: more than fit at once (8 CTAs of 8 warps per SM), so two waves
WRITE_KIB_PER_CTA = (0, 4, 64)
STAMP_WORDS = 4  # start ns, end ns, SM at start, SM at end


@triton.jit
def _globaltimer():
    return tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64, is_pure=False, pack=1)


@triton.jit
def _smid():
    return tl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r", [], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def stream_then_write(src_ptr, out_ptr, stamps_ptr, steps, write_elements,
                      BLOCK: tl.constexpr, STAMP: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    if STAMP:
        tl.store(stamps_ptr + pid * 4, _globaltimer())
        tl.store(stamps_ptr + pid * 4 + 2, _smid().to(tl.int64))
    lanes = tl.arange(0, BLOCK)
    base = src_ptr + pid * steps * BLOCK
    total = tl.zeros([BLOCK], tl.float32)
    for i in range(steps):
        total += tl.load(base + i * BLOCK + lanes, cache_modifier=".cg")
    value = tl.sum(total, 0)
    tl.store(out_ptr + pid, value, mask=value == -1.0)  # never true (src is in [0, 1)): keeps the loads, writes nothing
    for start in range(0, write_elements, BLOCK):
        at = start + lanes
        tl.store(out_ptr + pid * write_elements + at, tl.full([BLOCK], 1.0, tl.float32) * value, mask=at < write_elements)
    if STAMP:
        tl.store(stamps_ptr + pid * 4 + 1, _globaltimer())
        tl.store(stamps_ptr + pid * 4 + 3, _smid().to(tl.int64))


def cases(sm_count: int) -> list[tuple[str, int, int, int]]:
    """(label, bytes read in all, grid, bytes written per CTA)."""
    out = []
    for r in READS_MIB:
        for per_sm in CTAS_PER_SM:
            for w in WRITE_KIB_PER_CTA:
                out.append((f"r{r}_g{per_sm}x_w{w}", r * MIB, per_sm * sm_count, w * 1024))
    return out


def launch(src, out, stamps, read_bytes: int, grid: int, write_bytes: int, stamp: bool) -> None:
    steps = read_bytes // (4 * BLOCK * grid)
    stream_then_write[(grid,)](src, out, stamps, steps, write_bytes // 4, BLOCK=BLOCK, STAMP=stamp, num_warps=8)


def buffers(sm_count: int):
    src = torch.rand(max(READS_MIB) * MIB // 4, device="cuda")
    out = torch.empty(max(CTAS_PER_SM) * sm_count * max(WRITE_KIB_PER_CTA) * 256, device="cuda")
    stamps = torch.zeros(max(CTAS_PER_SM) * sm_count * STAMP_WORDS, dtype=torch.int64, device="cuda")
    return src, out, stamps


def profile_pass() -> None:
    """Under ncu: each case once with no stamps, warmed up outside the profiled region."""
    sm_count = torch.cuda.get_device_properties(0).multi_processor_count
    src, out, stamps = buffers(sm_count)
    self_profile.profiled([(label, lambda r=r, g=g, w=w: launch(src, out, stamps, r, g, w, stamp=False))
                           for label, r, g, w in cases(sm_count)])


def spread(stamps: torch.Tensor, grid: int) -> dict:
    """CTA start and end times from the kernel's first start, in fractions of its span (first start to last end)."""
    s = stamps[:grid * STAMP_WORDS].view(grid, STAMP_WORDS).cpu().double()
    start, end = s[:, 0], s[:, 1]
    t0, span = start.min(), end.max() - start.min()
    q = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
    return {"span_s": float(span) * 1e-9,
            "start_quantiles": [float(v) for v in torch.quantile((start - t0) / span, q)],
            "end_quantiles": [float(v) for v in torch.quantile((end - t0) / span, q)],
            "duration_quantiles_s": [float(v) * 1e-9 for v in torch.quantile(end - start, q)],
            "sms_used": int(s[:, 2].unique().numel()),
            "moved_sm": int((s[:, 2] != s[:, 3]).sum())}


def timing_pass(repeats: int = 5) -> dict:
    """Each case `repeats` times with stamps: the median run's spread (by its span)."""
    sm_count = torch.cuda.get_device_properties(0).multi_processor_count
    src, out, stamps = buffers(sm_count)
    result = {}
    for label, r, g, w in cases(sm_count):
        runs = []
        for _ in range(repeats + 1):
            stamps.zero_()
            launch(src, out, stamps, r, g, w, stamp=True)
            torch.cuda.synchronize()
            runs.append(spread(stamps, g))
        runs = sorted(runs[1:], key=lambda run: run["span_s"])  # the first run warms up
        result[label] = dict(runs[len(runs) // 2], repeats=repeats,
                             end_p0_to_p100_each_run=[run["end_quantiles"][4] - run["end_quantiles"][0] for run in runs])
    return result


def main() -> int:
    out = self_profile.out_dir(__doc__, profile_pass)
    if out is None:
        return 0
    out.mkdir(parents=True, exist_ok=True)
    timings = timing_pass()
    metrics = ["dram__bytes_write.sum", "dram__bytes_read.sum", "lts__t_sectors_srcunit_tex_op_write.sum",
               "gpu__time_duration.sum"]
    launches = self_profile.profiled_launches(__file__, metrics, out, "cta-spread-ncu.csv")
    sm_count = torch.cuda.get_device_properties(0).multi_processor_count
    by_label = {label: (r, g, w) for label, r, g, w in cases(sm_count)}
    counters = {row["range"]: row for row in launches if row["range"] in by_label}
    rows = []
    for label, (r, g, w) in by_label.items():
        row = {"case": label, "read_bytes": r, "grid": g, "written_bytes_per_cta": w, **timings[label]}
        if label in counters:
            row.update(ncu.probe_counters(counters[label]))
        rows.append(row)
        ends = row["end_quantiles"]
        print(f"{label:18s} span {row['span_s'] * 1e6:8.1f} us  ends at {ends[0]:.3f} {ends[1]:.3f} {ends[2]:.3f} "
              f"{ends[3]:.3f} {ends[4]:.3f}  starts p90 {row['start_quantiles'][3]:.3f}  "
              f"HBM written {row.get('dram_write_bytes', float('nan')) / 1e6:8.3f} MB of "
              f"{row.get('l2_write_bytes', float('nan')) / 1e6:8.3f} MB stored")
    self_profile.write_rows(out / "cta-spread.json", "python3 validation/cta_spread_probe.py --out DIR", rows)
    return 0 if counters else 1


if __name__ == "__main__":
    sys.exit(main())
