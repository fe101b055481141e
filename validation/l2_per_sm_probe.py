"""How fast one SM can read from L2: the L2 re-read kernel of validation/microbench.py on 1 to 132 CTAs (one per SM,
as the block scheduler places a grid smaller than the SM count) with 4 to 32 warps each.

    python3 validation/l2_per_sm_probe.py --out DIR

An SM's loads reach L2 over its own port of the crossbar, so a launch of few CTAs may read L2 slower than the
L2's aggregate bandwidth divided among them. More warps keep more loads in flight (Little's law with the L2 hit
latency); the rate that more warps no longer raise is the SM's own ceiling. Writes DIR/l2-per-sm.json: for each
(CTAs, warps), the bytes the SMs received per second (median of 15), per CTA and in total.
"""

import json
import statistics
import sys

import torch

from validation.microbench import (L2_BLOCK, L2_BUFFER_BYTES, L2_UNROLL, Device, header, l2_reference_sums,
                                   launch_l2_reread, probe_out_dir, reread_bytes, require_close, time_gpu_s)

CTAS = (1, 4, 16, 32, 66, 132)
WARPS = (4, 8, 16, 32)


def measure(x: torch.Tensor, ctas: int, warps: int, block_sums) -> dict:
    n_steps = 2048
    out = torch.full((ctas,), float("nan"), device="cuda", dtype=torch.float32)
    launch_l2_reread(x, out, ctas, n_steps, num_warps=warps)
    require_close("l2 re-read", out.cpu(), torch.from_numpy(l2_reference_sums(block_sums, ctas, n_steps, L2_UNROLL)),
                  1e-3)
    times = time_gpu_s(lambda: launch_l2_reread(x, out, ctas, n_steps, num_warps=warps), warmup=3, repeats=15)
    moved = reread_bytes(ctas, n_steps, L2_UNROLL, L2_BLOCK, 4)
    median_s = statistics.median(times)
    return {"ctas": ctas, "warps": warps, "median_s": median_s, "bytes": moved,
            "bytes_per_s": moved / median_s, "bytes_per_s_per_cta": moved / median_s / ctas}


def main(argv=None) -> int:
    out = probe_out_dir("l2_per_sm_probe", __doc__.splitlines()[0], argv)
    if out is None:
        return 1
    x = torch.rand(L2_BUFFER_BYTES // 4, device="cuda", dtype=torch.float32)
    block_sums = x.view(-1, L2_BLOCK).double().sum(dim=1).cpu().numpy()
    rows = []
    for ctas in CTAS:
        for warps in WARPS:
            rows.append(measure(x, ctas, warps, block_sums))
            r = rows[-1]
            print(f"{ctas:4d} CTAs x {warps:2d} warps: {r['bytes_per_s'] / 1e9:8.1f} GB/s, "
                  f"{r['bytes_per_s_per_cta'] / 1e9:6.1f} GB/s per CTA", flush=True)
    record = {"method": __doc__.split("\n\n")[0], "rows": rows, **header(Device())}
    (out / "l2-per-sm.json").write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
