"""How long one ordered atomic add takes on the GPU: Triton's tl.atomic_add with its default semantics (acq_rel)
against sem="relaxed", one atomic instruction per thread (4 fp32 lanes: ATOMG.E.ADD.F32x4) repeated ROUNDS times.

    python3 -m validation.atomic_probe --out DIR

An acq_rel atomic compiles to MEMBAR.ALL.GPU, ATOMG (which returns the old value), ERRBAR and CCTL.IVALL (our
linear-attention state kernel's epilogue, python3 -m validation.sass_loop linear): each thread's atomics run one at
a time, each waiting for the previous one's round trip to L2 and back. A relaxed atomic whose result is unused is a
RED: the thread goes on. The time per round is the slope of the launch time over 128 to 1024 rounds (a launch of
fewer is shorter than the host's own launch overhead, about 20 us, and would time the host). Grids: 1 and 128 CTAs
of 4 warps, each CTA adding into its own addresses, and 128 CTAs of 4 or 8 warps with 8 CTAs adding into the same
addresses (as 8 key splits add into one state). Writes DIR/atomic-probe.json: for each (semantics, CTAs, CTAs per
address, warps, rounds), the median launch time (15 repeats), and the slope per round of each series.
"""

import json
import statistics
import sys

import torch
import triton
import triton.language as tl

from validation.microbench import Device, header, probe_out_dir, time_gpu_s

LANES_PER_THREAD = 4  # fp32 lanes of one 16-byte atomic
ROUNDS = (128, 256, 512, 1024)
GRIDS = ((1, 1, 4), (128, 1, 4), (128, 8, 4), (128, 8, 8))  # (CTAs, CTAs adding into the same addresses, warps)


@triton.jit
def atomic_rounds_kernel(ptr, rounds, BLOCK: tl.constexpr, SHARE: tl.constexpr, ORDERED: tl.constexpr):
    offs = (tl.program_id(0) // SHARE) * BLOCK + tl.arange(0, BLOCK)
    ones = tl.full([BLOCK], 1.0, tl.float32)
    for _ in range(rounds):
        if ORDERED:
            tl.atomic_add(ptr + offs, ones)  # Triton's default: sem="acq_rel"
        else:
            tl.atomic_add(ptr + offs, ones, sem="relaxed")


def launch(buf: torch.Tensor, ctas: int, share: int, warps: int, rounds: int, ordered: bool) -> None:
    atomic_rounds_kernel[(ctas,)](buf, rounds, BLOCK=block(warps), SHARE=share, ORDERED=ordered, num_warps=warps)


def block(warps: int) -> int:
    return warps * 32 * LANES_PER_THREAD


def measure(ctas: int, share: int, warps: int, rounds: int, ordered: bool) -> dict:
    buf = torch.zeros(ctas // share * block(warps), device="cuda", dtype=torch.float32)
    launch(buf, ctas, share, warps, rounds, ordered)
    torch.cuda.synchronize()
    expected = float(rounds * share)
    if not torch.all(buf == expected):
        raise SystemExit(f"atomic_probe: {ctas} CTAs x {rounds} rounds added up to {buf.unique().tolist()[:4]}, "
                         f"not {expected}")
    times = time_gpu_s(lambda: launch(buf, ctas, share, warps, rounds, ordered), warmup=3, repeats=15)
    return {"semantics": "acq_rel" if ordered else "relaxed", "ctas": ctas, "ctas_per_address": share,
            "warps": warps, "rounds": rounds, "median_s": statistics.median(times)}


def slope_s(rows: list[dict]) -> float:
    """Least-squares seconds per round over a series of rounds."""
    return statistics.linear_regression([r["rounds"] for r in rows], [r["median_s"] for r in rows]).slope


def main(argv=None) -> int:
    out = probe_out_dir("atomic_probe", __doc__.splitlines()[0], argv)
    if out is None:
        return 1
    rows, slopes = [], []
    for ordered in (True, False):
        for ctas, share, warps in GRIDS:
            series = [measure(ctas, share, warps, rounds, ordered) for rounds in ROUNDS]
            rows += series
            per_round = slope_s(series)
            slopes.append({"semantics": series[0]["semantics"], "ctas": ctas, "ctas_per_address": share,
                           "warps": warps, "seconds_per_round": per_round})
            print(f"{series[0]['semantics']:8s} {ctas:4d} CTAs of {warps} warps, {share} per address: "
                  f"{per_round * 1e9:7.1f} ns per round ({ROUNDS[0]} rounds: {series[0]['median_s'] * 1e6:.1f} us)",
                  flush=True)
    record = {"method": __doc__.split("\n\n")[0], "rows": rows, "slopes": slopes, **header(Device())}
    (out / "atomic-probe.json").write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
