"""Time each kernel of the matched set against its peers, in the same run, on the GPU.

    python3 -m kernels.bench [--out DIR] [--quick]

Prefill (bf16, d=128, B=4, H=32): our FlashAttention-2 forward against PyTorch SDPA's flash,
cuDNN and efficient backends and flex_attention (compiled), in TFLOP/s (4 B H N^2 d FLOPs,
halved for causal) and as a ratio to SDPA flash. Decode (bf16, d=128, B=8, Hq=32, Hkv=8): our
Flash-Decoding, FlashDecoding++, paged and int8-KV decode against SDPA flash, in bytes of K/V
(and scales) read per second and as a fraction of the copy bandwidth measured in the same run.
Medians of triton.testing.do_bench. Prints a table; writes DIR/bench.json. Asserts nothing.
"""

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch
import triton


def median_s(fn) -> float:
    import triton.testing

    fn()
    torch.cuda.synchronize()
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median") * 1e-3


def copy_bandwidth_bytes_per_s() -> float:
    """device-to-device copy of 2 GiB: bytes read + written per second (as validation/microbench.py)."""
    src = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() / median_s(lambda: dst.copy_(src))


def _sdpa(backend: str, causal: bool, gqa: bool = False):
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def call(q, k, v):
        with sdpa_kernel(getattr(SDPBackend, backend)):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)

    return call


def _flex(causal: bool, n: int):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    compiled = torch.compile(flex_attention, dynamic=False)
    mask = create_block_mask(lambda b, h, qi, ki: ki <= qi, None, None, n, n) if causal else None
    return lambda q, k, v: compiled(q, k, v, block_mask=mask)


def prefill_rows(lengths: list[int]) -> list[dict]:
    from kernels.flash2 import flash_attention

    rows = []
    for n in lengths:
        for causal in (False, True):
            q, k, v = (torch.randn(4, 32, n, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            flops = 4 * 4 * 32 * n * n * 128 / (2 if causal else 1)
            peers = {"memsim flash2": lambda q, k, v: flash_attention(q, k, v, causal=causal),
                     "sdpa flash": _sdpa("FLASH_ATTENTION", causal), "sdpa cudnn": _sdpa("CUDNN_ATTENTION", causal),
                     "sdpa efficient": _sdpa("EFFICIENT_ATTENTION", causal), "flex_attention": _flex(causal, n)}
            times = {}
            for name, call in peers.items():
                try:
                    times[name] = median_s(lambda: call(q, k, v))
                except Exception as err:  # a peer that cannot run this shape is reported, not fatal
                    times[name] = None
                    print(f"bench: {name} N={n} causal={causal}: {str(err).splitlines()[0]}", file=sys.stderr)
            rows.append({"case": f"prefill B=4 H=32 N={n} d=128{' causal' if causal else ''}",
                         "tflops": {k: flops / t / 1e12 for k, t in times.items() if t},
                         "ratio_to_sdpa_flash": times["sdpa flash"] / times["memsim flash2"]
                         if times.get("sdpa flash") and times.get("memsim flash2") else None})
    return rows


def decode_rows(contexts: list[int], copy_bw: float) -> list[dict]:
    from kernels.flash_decoding import flash_decode
    from kernels.flash_decoding_pp import flash_decode_pp
    from kernels.kv_quant import quantize_kv, quantized_decode
    from kernels.paged import paged_decode, paged_layout

    rows = []
    batch, q_heads, kv_heads, d, page = 8, 32, 8, 128, 16
    for n in contexts:
        q = torch.randn(batch, q_heads, 1, d, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(batch, kv_heads, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        kv_bytes = 2 * k.numel() * k.element_size()
        k_cache, v_cache, table, lens = paged_layout(k, v, page)  # pages scattered through the cache
        kq, vq = quantize_kv(k, bits=8, group_size=32), quantize_kv(v, bits=8, group_size=32)
        int8_bytes = sum(t.numel() * t.element_size() for t in (kq.codes, kq.scales, vq.codes, vq.scales))
        calls = {"memsim flash_decoding": (lambda: flash_decode(q, k, v), kv_bytes),
                 "memsim flash_decoding_pp": (lambda: flash_decode_pp(q, k, v), kv_bytes),
                 "memsim paged (page 16)": (lambda: paged_decode(q[:, :, 0], k_cache, v_cache, table, lens,
                                                                 num_splits=None), kv_bytes),
                 "memsim int8 KV": (lambda: quantized_decode(q, kq, vq), int8_bytes),
                 "sdpa flash": (lambda: _sdpa("FLASH_ATTENTION", False, True)(q, k, v), kv_bytes)}
        result = {}
        for name, (call, nbytes) in calls.items():
            try:
                seconds = median_s(call)
                result[name] = {"time_us": seconds * 1e6, "bytes_per_s": nbytes / seconds,
                                "fraction_of_copy": nbytes / seconds / copy_bw}
            except Exception as err:
                print(f"bench: {name} context={n}: {str(err).splitlines()[0]}", file=sys.stderr)
        rows.append({"case": f"decode B={batch} Hq={q_heads} Hkv={kv_heads} context={n} d={d}", "kernels": result})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--quick", action="store_true", help="N=4096 and context 32K only")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench: no CUDA device; run this on the GPU machine", file=sys.stderr)
        return 1
    copy_bw = copy_bandwidth_bytes_per_s()
    prefill = prefill_rows([4096] if args.quick else [1024, 4096, 8192, 16384])
    decode = decode_rows([32768] if args.quick else [4096, 32768], copy_bw)
    print(f"device: {torch.cuda.get_device_name()}, copy bandwidth {copy_bw / 1e12:.2f} TB/s (read + write)")
    for row in prefill:
        cells = ", ".join(f"{k} {v:.0f}" for k, v in row["tflops"].items())
        ratio = row["ratio_to_sdpa_flash"]
        print(f"{row['case']}: TFLOP/s {cells}; memsim flash2 / sdpa flash speed {ratio:.2f}" if ratio else
              f"{row['case']}: TFLOP/s {cells}")
    for row in decode:
        for name, r in row["kernels"].items():
            print(f"{row['case']}: {name}: {r['time_us']:.0f} us, {r['bytes_per_s'] / 1e12:.2f} TB/s, "
                  f"{r['fraction_of_copy']:.0%} of copy")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench.json").write_text(json.dumps(
            {"device": torch.cuda.get_device_name(), "copy_bandwidth_bytes_per_s": copy_bw,
             "torch": torch.__version__, "triton": triton.__version__,
             "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
             "prefill": prefill, "decode": decode}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
