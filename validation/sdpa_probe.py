"""Run PyTorch's SDPA backends on a few attention shapes, one NVTX range per shape, for Nsight Compute.

Runs on the GPU machine (torch only, no memsim). Each shape is one launch of the chosen
backend on fresh random bf16 inputs; ncu's --nvtx names each kernel by its shape:

    ncu --clock-control none --nvtx --print-nvtx-rename kernel --csv \
        --metrics dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sectors_srcunit_tex_op_read.sum,... \
        python3 validation/sdpa_probe.py flash > validation/results/h100/ncu-sdpa-flash-DATE.csv

The range name is "case b{B}h{Hq}k{Hkv}n{Nq}m{Nkv}d{d}c{causal}".
"""

import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# (batch, q heads, kv heads, q length, kv length, head dim, causal)
CASES = [
    (1, 16, 16, 4096, 4096, 128, False),  # DESIGN.md's case
    (1, 16, 16, 4096, 4096, 128, True),
    (4, 32, 32, 4096, 4096, 128, False),
    (1, 8, 8, 32768, 32768, 128, False),  # K/V of a head (16 MiB) fits L2; 256 q-blocks per head
    (1, 32, 8, 4096, 4096, 128, False),  # GQA 4:1
    (2, 16, 16, 16384, 16384, 128, True),
    (1, 16, 16, 4096, 4096, 64, False),
    (64, 32, 8, 1, 8192, 128, False),  # decode, GQA
]
BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}


def run_case(backend, batch, q_heads, kv_heads, q_len, kv_len, head_dim, causal) -> None:
    q = torch.randn(batch, q_heads, q_len, head_dim, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(batch, kv_heads, kv_len, head_dim, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(batch, kv_heads, kv_len, head_dim, device="cuda", dtype=torch.bfloat16)
    torch.cuda.nvtx.range_push(f"case b{batch}h{q_heads}k{kv_heads}n{q_len}m{kv_len}d{head_dim}c{int(causal)}")
    with sdpa_kernel(backend):
        F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=q_heads != kv_heads)
    torch.cuda.nvtx.range_pop()
    torch.cuda.synchronize()


def main() -> int:
    name = sys.argv[1] if len(sys.argv) > 1 else "flash"
    if name not in BACKENDS:
        print(f"sdpa_probe: unknown backend {name!r}; use one of {', '.join(BACKENDS)}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("sdpa_probe: no CUDA device; run this on the GPU machine", file=sys.stderr)
        return 1
    for case in CASES:
        try:
            run_case(BACKENDS[name], *case)
        except RuntimeError as err:  # a backend that does not support a shape says so and the rest go on
            print(f"sdpa_probe: {name} {case}: {str(err).splitlines()[0]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
