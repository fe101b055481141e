"""How much of a kernel's output stays dirty in an H100's L2 when reads and writes interleave, as in attention.

validation/l2_dirty_lifetime.py measures a dirty line's lifetime with every write first and every read after
it. An attention kernel interleaves them: each CTA reads its Q tile and its head's K/V tiles, then writes
its O tile, and the next CTAs do the same. Here each CTA of one kernel reads `unique` 16 KiB tiles that no
other CTA reads (as Q), then `shared` 16 KiB tiles that `readers` consecutive CTAs read alike (as K/V, read
by a head's CTAs), then writes one 16 KiB tile of its own (as O). The `_spin` cases move the same bytes with each CTA busy
for longer in between (dependent multiply-adds), leaving HBM idle for part of the kernel. Under ncu (--clock-control none; caches
flushed before each kernel) dram__bytes_write.sum is what reached HBM during the kernel; the rest of the
written bytes were still dirty in L2 when it ended. validation/compare_l2_interleaved.py puts memsim's
prediction for each case beside it (both engines). No attention kernel takes part.

    python3 validation/l2_interleaved_probe.py --out DIR         # on the GPU; runs ncu on itself
"""

import sys
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file: `validation` importable
from validation import ncu, self_profile  # noqa: E402

TILE_ELEMENTS = 4096  # fp32 elements per tile: 16 KiB
TILE_BYTES = 4 * TILE_ELEMENTS
MIB = 1 << 20
SPINS = (256, 1024, 4096, 16384)


@dataclass(frozen=True)
class Case:
    label: str
    written_bytes: int  # one tile per CTA
    unique: int  # tiles each CTA reads alone, before its write
    shared: int  # tiles each CTA reads with `readers` - 1 others, before its write
    readers: int  # consecutive CTAs reading the same shared tiles
    spin: int = 0  # dependent multiply-adds each thread does between its reads and its write (a longer CTA, idle HBM)

    @property
    def ctas(self) -> int:
        return self.written_bytes // TILE_BYTES

    @property
    def unique_read_bytes(self) -> int:
        return self.ctas * self.unique * TILE_BYTES

    @property
    def shared_read_bytes(self) -> int:
        """Distinct bytes of shared tiles (each read by `readers` CTAs)."""
        return -(-self.ctas // self.readers) * self.shared * TILE_BYTES


def cases() -> list[Case]:
    out = [Case(f"unique{k}_w64", 64 * MIB, k, 0, 1) for k in (0, 1, 2, 3, 4, 6, 8)]
    out += [Case(f"unique{k}_w{w}", w * MIB, k, 0, 1) for w in (32, 128) for k in (1, 2, 4)]
    out += [Case(f"shared{k}_c{c}_w64", 64 * MIB, 0, k, c) for c, ks in ((8, (8, 16, 32)), (32, (16, 32, 64)))
            for k in ks]
    out += [Case(f"attention{k}_c{k}_w64", 64 * MIB, 1, k, k) for k in (16, 32, 64)]  # Q, K/V of a head, O
    # The same bytes with longer CTAs: does the L2 write dirty lines back while HBM idles?
    out += [Case(f"{name}_spin{n}", 64 * MIB, unique, shared, readers, n) for n in SPINS
            for name, unique, shared, readers in (("unique0_w64", 0, 0, 1), ("unique2_w64", 2, 0, 1),
                                                  ("attention32_c32_w64", 1, 32, 32))]
    return out


def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def read_then_write(out_ptr, unique_ptr, shared_ptr, unique, shared, readers, spin, BLOCK: tl.constexpr):
        pid = tl.program_id(0).to(tl.int64)
        lanes = tl.arange(0, BLOCK)
        total = tl.zeros([BLOCK], tl.float32)
        for j in range(unique):
            total += tl.load(unique_ptr + (pid * unique + j) * BLOCK + lanes)
        for j in range(shared):
            total += tl.load(shared_ptr + ((pid // readers) * shared + j) * BLOCK + lanes)
        for _ in range(spin):
            total = total * 0.999999 + 1e-6
        tl.store(out_ptr + pid * BLOCK + lanes, total)  # after its reads: the value depends on them

    return read_then_write


def launch(kernel, case: Case, out, unique_src, shared_src) -> None:
    kernel[(case.ctas,)](out, unique_src, shared_src, case.unique, case.shared, case.readers, case.spin,
                         BLOCK=TILE_ELEMENTS, num_warps=8)


def profile_pass() -> None:
    """Under ncu: each case once, warmed up outside the profiled region."""
    import torch
    kernel = _kernel()
    every = cases()
    unique_src = torch.ones(max(c.unique_read_bytes for c in every) // 4 + TILE_ELEMENTS, device="cuda")
    shared_src = torch.ones(max(c.shared_read_bytes for c in every) // 4 + TILE_ELEMENTS, device="cuda")
    out = torch.empty(max(c.written_bytes for c in every) // 4, device="cuda")
    self_profile.profiled([(case.label, lambda case=case: launch(kernel, case, out, unique_src, shared_src))
                           for case in every])


def main() -> int:
    out = self_profile.out_dir(__doc__, profile_pass)
    if out is None:
        return 0
    metrics = ["dram__bytes_write.sum", "dram__bytes_read.sum", "lts__t_sectors_srcunit_tex_op_write.sum",
               "lts__t_sectors_srcunit_tex_op_read.sum", "gpu__time_duration.sum"]
    launches = self_profile.profiled_launches(__file__, metrics, out, "l2-interleaved-ncu.csv")
    by_label = {case.label: case for case in cases()}
    rows = []
    for launch_row in launches:
        case = by_label.get(launch_row["range"])
        if case is None:
            continue
        dram = launch_row["dram__bytes_write.sum"]
        rows.append({**asdict(case), **ncu.probe_counters(launch_row), "dirty_at_end_bytes": case.written_bytes - dram})
        print(f"{case.label:22s} W {case.written_bytes / MIB:4.0f} MiB: DRAM writes {dram / MIB:7.2f} MiB, "
              f"dirty at end {(case.written_bytes - dram) / MIB:6.2f} MiB, "
              f"DRAM reads {launch_row['dram__bytes_read.sum'] / MIB:7.2f} MiB")
    self_profile.write_rows(out / "l2-interleaved.json", "python3 validation/l2_interleaved_probe.py --out DIR", rows)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
