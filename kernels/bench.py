"""Time each kernel of the matched set against its peers, in the same run, on the GPU.

    python3 -m kernels.bench [--out DIR] [--quick] [--only GROUP[,GROUP]]

One group of rows per kernel family, all bf16 with d=128; every time is the median of triton.testing.do_bench,
with the inputs (and standard attention's S and P workspace) prepared outside the timed call:

  prefill       our FlashAttention-2 forward against PyTorch SDPA's flash, cuDNN and efficient backends and
                flex_attention (compiled), B=4 H=32 N=1K-16K, TFLOP/s and the ratio to SDPA flash;
  decode        our Flash-Decoding, FlashDecoding++, paged and int8-KV decode against SDPA flash, B=8 Hq=32
                Hkv=8, bytes of K/V (and scales) read per second and the fraction of the copy bandwidth;
  standard      standard attention (three kernels, S and P through HBM) against SDPA math and flash,
                B=1 H=16 N=1K/4K;
  flash1        FlashAttention-1's loop order against our flash2 and SDPA flash, B=4 H=32 N=4K;
  backward      our flash2 backward against SDPA flash's, both through autograd on a prepared graph,
                B=4 H=32 N=4K, TFLOP/s counting 2.5 times the forward (Dao 2023, section 4.1);
  fp8           our e4m3 forward (inputs quantised once) against our bf16 flash2 and SDPA flash, B=4 H=32 N=4K;
  linear        linear attention (non-causal and causal) against plain torch matmuls and SDPA flash,
                B=4 H=32 N=4K/16K, tokens per second;
  lightning     Lightning Attention-2 with decay against the same torch peer and SDPA flash causal;
  block_sparse  MoBA with top-k = 1/8 of the key blocks (gate precomputed) against our flash2 and SDPA flash,
                both dense causal, B=1 H=32 N=16K, in dense-equivalent TFLOP/s;
  ring          one ring-attention step (O and LSE) and the merge against SDPA flash on the same block
                (no LSE), B=1 H=32, 8K queries against 8K keys.

Attention FLOPs are 4 B H N^2 d, halved for causal (kernels.flash2.attention_flops). Each kernel's speed against
a named peer is the peer's time over its time (above 1: faster). --quick runs one length per group. Prints one
line per case and kernel; with --out writes DIR/bench.json (rewritten after each group, so that a run cut short
keeps the groups it finished): the device, versions, date and copy bandwidth, and each group's rows under its
name; a row after decode is {case, peers, kernels: {name: {time_us, figure, speed_vs: {peer: ratio}}}}.
A peer that fails is reported on stderr and left out; a group that fails as a whole is reported, the others
still run, and the exit status is 1. Asserts nothing.

The group functions take the device, dtype and shapes, so that they run on the CPU under TRITON_INTERPRET=1
with tiny shapes (tests/test_kernel_bench.py) once median_s is replaced.
"""

import argparse
import datetime
import functools
import json
import sys
from pathlib import Path

import torch
import triton

GROUPS = ("prefill", "decode", "standard", "flash1", "backward", "fp8", "linear", "lightning", "block_sparse", "ring")
# How each figure of a row prints: (label, divisor).
FIGURES = {"tflops": ("TFLOP/s", 1.0), "dense_equivalent_tflops": ("dense-equivalent TFLOP/s", 1.0),
           "tokens_per_s": ("Mtokens/s", 1e6), "bytes_per_s": ("TB/s", 1e12)}
TORCH_LINEAR_CHUNK = 64  # rows per chunk of the torch linear-attention peer: flash-linear-attention's BT = 64
MOBA_BLOCK = 512  # keys per MoBA block (Lu et al. 2025 train with 512-key blocks)


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


# ---- peers --------------------------------------------------------------------------------------------------------

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


def torch_linear_attention(q, k, v, *, causal: bool, decay=None, chunk: int = TORCH_LINEAR_CHUNK):
    """Linear attention in plain torch matmuls, the peer of kernels.linear and kernels.lightning (the math of
    kernels.reference.linear_attention): q, k, v [B, H, N, D] -> o [B, H, N, D] in q's dtype.

    Non-causal: Q (K^T V), N d^2 work (Katharopoulos et al. 2020, section 3.2). Causal, by chunks of `chunk` rows
    (N a multiple of it): inside a chunk (Q K^T * M) V, across chunks Q times the state of the earlier chunks,
    an exclusive cumulative sum of each chunk's K^T V in fp32. decay [H] rates s >= 0 (causal only) weighs key j
    for query i by exp(-s (i - j)), as Lightning Attention-2 (Qin et al. 2024) splits it: M_ij = exp(-s (i - j)),
    keys scaled by exp(-s (chunk - j)) into their chunk's state, a state exp(-s chunk) older per chunk it passes,
    and row i of a chunk reading the state through exp(-s i)."""
    if not causal:
        if decay is not None:
            raise ValueError("decay applies to causal linear attention only: pass causal=True")
        return q @ (k.transpose(-1, -2) @ v)
    b, h, n, d = q.shape
    if n % chunk:
        raise ValueError(f"sequence length {n} is not a multiple of chunk = {chunk}; pass a chunk that divides it")
    qc, kc, vc = (x.reshape(b, h, n // chunk, chunk, d) for x in (q, k, v))
    i = torch.arange(chunk, device=q.device, dtype=torch.float32)
    gap = i[:, None] - i[None, :]
    if decay is None:
        intra = ((qc @ kc.transpose(-1, -2)) * (gap >= 0).to(q.dtype)) @ vc
        states = (kc.transpose(-1, -2) @ vc).float()  # [B, H, chunks, D, D]: each chunk's K^T V
        prefix = torch.cumsum(states, dim=2) - states  # the chunks before each one
        return (intra + qc @ prefix.to(q.dtype)).reshape(b, h, n, d)
    rate = decay.to(q.device, torch.float32).view(h, 1, 1)
    intra_w = torch.where(gap >= 0, torch.exp(-rate * gap.clamp(min=0)), 0.0)  # [H, chunk, chunk]
    intra = ((qc @ kc.transpose(-1, -2)) * intra_w[:, None].to(q.dtype)) @ vc
    key_w = torch.exp(-rate * (chunk - i)).view(h, 1, chunk, 1).to(q.dtype)
    states = ((kc * key_w).transpose(-1, -2) @ vc).float()
    t = torch.arange(n // chunk, device=q.device, dtype=torch.float32)
    lag = t[:, None] - 1 - t[None, :]
    chunk_w = torch.where(lag >= 0, torch.exp(-rate * chunk * lag.clamp(min=0)), 0.0)  # [H, chunks, chunks]
    prefix = (chunk_w @ states.flatten(3)).view(states.shape)
    inter = (qc @ prefix.to(q.dtype)) * torch.exp(-rate * i).view(h, 1, chunk, 1).to(q.dtype)
    return (intra + inter).reshape(b, h, n, d)


# ---- timing and rows ----------------------------------------------------------------------------------------------

def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _run(fn, *args, **kwargs):
    """A setup with nothing to prepare: the call to time is fn(*args, **kwargs)."""
    return lambda: functools.partial(fn, *args, **kwargs)


def _timed(label: str, setups: dict) -> dict[str, float]:
    """Median seconds of each call. Each setup runs untimed and returns the call to time; a setup or call that
    fails (a peer that cannot run this shape, or on this device) is reported on stderr and left out."""
    times = {}
    for name, setup in setups.items():
        try:
            times[name] = median_s(setup())
        except Exception as err:  # reported, not fatal: the other kernels of the case still run
            print(f"bench: {name} {label}: {_first_line(err)}", file=sys.stderr)
    return times


def _row(case: str, times: dict[str, float], peers: tuple[str, ...], figure: str, work: float,
         other_work: dict | None = None) -> dict:
    """One case: per kernel its time, `figure` = work / time (work in the figure's unit: TFLOP, tokens, bytes), and
    its speed against each peer that ran (the peer's time over its own). other_work: {name: (figure, work)} for a
    kernel whose work is of another kind (the ring merge's bytes)."""
    kernels = {}
    for name, seconds in times.items():
        key, amount = (other_work or {}).get(name, (figure, work))
        kernels[name] = {"time_us": seconds * 1e6, key: amount / seconds,
                         "speed_vs": {p: times[p] / seconds for p in peers if p in times and p != name}}
    return {"case": case, "peers": list(peers), "kernels": kernels}


def _case(group: str, batch: int, heads: int, n: int, d: int, causal: bool, dtype: torch.dtype) -> str:
    kind = "" if dtype == torch.bfloat16 else f" {str(dtype).removeprefix('torch.')}"
    return f"{group} B={batch} H={heads} N={n} d={d}{' causal' if causal else ''}{kind}"


def _qkv(batch: int, heads: int, n: int, d: int, device, dtype, requires_grad: bool = False):
    return tuple(torch.randn(batch, heads, n, d, device=device, dtype=dtype, requires_grad=requires_grad)
                 for _ in range(3))


def _tflop(batch: int, heads: int, n: int, d: int, causal: bool, backward: bool = False) -> float:
    from kernels.flash2 import attention_flops

    return attention_flops(batch, heads, n, d, causal, backward) / 1e12


# ---- groups -------------------------------------------------------------------------------------------------------

def prefill_rows(lengths: list[int], *, batch: int = 4, heads: int = 32, head_dim: int = 128, device="cuda",
                 dtype: torch.dtype = torch.bfloat16) -> list[dict]:
    from kernels.flash2 import flash_attention

    rows = []
    for n in lengths:
        for causal in (False, True):
            q, k, v = _qkv(batch, heads, n, head_dim, device, dtype)
            tflop = _tflop(batch, heads, n, head_dim, causal)
            times = _timed(f"N={n} causal={causal}", {
                "memsim flash2": _run(flash_attention, q, k, v, causal=causal),
                "sdpa flash": _run(_sdpa("FLASH_ATTENTION", causal), q, k, v),
                "sdpa cudnn": _run(_sdpa("CUDNN_ATTENTION", causal), q, k, v),
                "sdpa efficient": _run(_sdpa("EFFICIENT_ATTENTION", causal), q, k, v),
                "flex_attention": lambda: functools.partial(_flex(causal, n), q, k, v)})
            rows.append({"case": f"prefill B={batch} H={heads} N={n} d={head_dim}{' causal' if causal else ''}",
                         "tflops": {name: tflop / t for name, t in times.items()},
                         "time_us": {name: t * 1e6 for name, t in times.items()},
                         "ratio_to_sdpa_flash": times["sdpa flash"] / times["memsim flash2"]
                         if "sdpa flash" in times and "memsim flash2" in times else None})
    return rows


def decode_rows(contexts: list[int], copy_bw: float, *, batch: int = 8, q_heads: int = 32, kv_heads: int = 8,
                head_dim: int = 128, page: int = 16, device="cuda", dtype: torch.dtype = torch.bfloat16) -> list[dict]:
    from kernels.flash_decoding import flash_decode
    from kernels.flash_decoding_pp import flash_decode_pp
    from kernels.kv_quant import quantize_kv, quantized_decode
    from kernels.paged import paged_decode, paged_layout

    rows = []
    for n in contexts:
        q = torch.randn(batch, q_heads, 1, head_dim, device=device, dtype=dtype)
        k, v = (torch.randn(batch, kv_heads, n, head_dim, device=device, dtype=dtype) for _ in range(2))
        kv_bytes = 2 * k.numel() * k.element_size()
        k_cache, v_cache, table, lens = paged_layout(k, v, page)  # pages scattered through the cache
        kq, vq = quantize_kv(k, bits=8, group_size=32), quantize_kv(v, bits=8, group_size=32)
        int8_bytes = sum(t.numel() * t.element_size() for t in (kq.codes, kq.scales, vq.codes, vq.scales))
        calls = {"memsim flash_decoding": (_run(flash_decode, q, k, v), kv_bytes),
                 "memsim flash_decoding_pp": (_run(flash_decode_pp, q, k, v), kv_bytes),
                 f"memsim paged (page {page})": (_run(paged_decode, q[:, :, 0], k_cache, v_cache, table, lens,
                                                      num_splits=None), kv_bytes),
                 "memsim int8 KV": (_run(quantized_decode, q, kq, vq), int8_bytes),
                 "sdpa flash": (_run(_sdpa("FLASH_ATTENTION", False, True), q, k, v), kv_bytes)}
        times = _timed(f"context={n}", {name: setup for name, (setup, _) in calls.items()})
        result = {name: {"time_us": seconds * 1e6, "bytes_per_s": calls[name][1] / seconds,
                         "fraction_of_copy": calls[name][1] / seconds / copy_bw} for name, seconds in times.items()}
        rows.append({"case": f"decode B={batch} Hq={q_heads} Hkv={kv_heads} context={n} d={head_dim}",
                     "kernels": result})
    return rows


def standard_rows(lengths: list[int], *, batch: int = 1, heads: int = 16, head_dim: int = 128, device="cuda",
                  dtype: torch.dtype = torch.bfloat16) -> list[dict]:
    """Standard attention's three kernels (S and P written to HBM, B H N^2 elements each) against SDPA's math
    backend, which also materialises the scores, and SDPA flash."""
    from kernels.standard import StandardWorkspace, standard_attention

    rows = []
    for n in lengths:
        q, k, v = _qkv(batch, heads, n, head_dim, device, dtype)
        workspace, out = StandardWorkspace.allocate(q, k), torch.empty_like(q)
        for causal in (False, True):
            times = _timed(f"standard N={n} causal={causal}", {
                "memsim standard": _run(standard_attention, q, k, v, causal=causal, out=out, workspace=workspace),
                "sdpa math": _run(_sdpa("MATH", causal), q, k, v),
                "sdpa flash": _run(_sdpa("FLASH_ATTENTION", causal), q, k, v)})
            rows.append(_row(_case("standard", batch, heads, n, head_dim, causal, dtype), times,
                             ("sdpa math", "sdpa flash"), "tflops", _tflop(batch, heads, n, head_dim, causal)))
    return rows


def flash1_rows(n: int, *, batch: int = 4, heads: int = 32, head_dim: int = 128, device="cuda",
                dtype: torch.dtype = torch.bfloat16) -> list[dict]:
    """FlashAttention-1's loop order (key blocks outer, O, l, m through HBM) against our flash2 and SDPA flash."""
    from kernels.flash1 import flash1_attention
    from kernels.flash2 import flash_attention

    q, k, v = _qkv(batch, heads, n, head_dim, device, dtype)
    out = torch.empty_like(q)
    rows = []
    for causal in (False, True):
        times = _timed(f"flash1 N={n} causal={causal}", {
            "memsim flash1": _run(flash1_attention, q, k, v, causal=causal, out=out),
            "memsim flash2": _run(flash_attention, q, k, v, causal=causal, out=out),
            "sdpa flash": _run(_sdpa("FLASH_ATTENTION", causal), q, k, v)})
        rows.append(_row(_case("flash1", batch, heads, n, head_dim, causal, dtype), times,
                         ("memsim flash2", "sdpa flash"), "tflops", _tflop(batch, heads, n, head_dim, causal)))
    return rows


def _gradients(forward, q, k, v):
    """Setup of a backward timing: run the forward once (untimed) with a random output gradient; the timed call
    is the backward alone, dQ, dK, dV through autograd on the kept graph (nothing accumulates into .grad)."""
    def setup():
        o = forward(q, k, v)
        do = torch.randn_like(o)
        return lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True)

    return setup


def backward_rows(n: int, *, batch: int = 4, heads: int = 32, head_dim: int = 128, device="cuda",
                  dtype: torch.dtype = torch.bfloat16) -> list[dict]:
    """flash2's backward (delta, dK/dV, dQ kernels, via FlashAttentionFunction) against SDPA flash's backward."""
    from kernels.flash2 import flash_attention

    q, k, v = _qkv(batch, heads, n, head_dim, device, dtype, requires_grad=True)
    rows = []
    for causal in (False, True):
        times = _timed(f"backward N={n} causal={causal}", {
            "memsim flash2 backward": _gradients(functools.partial(flash_attention, causal=causal), q, k, v),
            "sdpa flash backward": _gradients(_sdpa("FLASH_ATTENTION", causal), q, k, v)})
        rows.append(_row(_case("backward", batch, heads, n, head_dim, causal, dtype), times,
                         ("sdpa flash backward",), "tflops", _tflop(batch, heads, n, head_dim, causal, True)))
    return rows


def fp8_rows(n: int, *, batch: int = 4, heads: int = 32, head_dim: int = 128, device="cuda",
             dtype: torch.dtype = torch.bfloat16) -> list[dict]:
    """The e4m3 forward on inputs quantised once (V token-major, as Hopper's fp8 wgmma wants it) against our
    flash2 and SDPA flash on the unquantised inputs; output in `dtype`."""
    from kernels.flash2 import flash_attention
    from kernels.flash2_fp8 import KV_BLOCK, Q_BLOCK, flash_attention_fp8, quantize_fp8

    q, k, v = _qkv(batch, heads, n, head_dim, device, dtype)
    (q8, q_scale), (k8, k_scale) = quantize_fp8(q, Q_BLOCK), quantize_fp8(k, KV_BLOCK)
    v8, v_scale = quantize_fp8(v, KV_BLOCK, token_major=True)
    out = torch.empty_like(q)
    rows = []
    for causal in (False, True):
        times = _timed(f"fp8 N={n} causal={causal}", {
            "memsim flash2 fp8": _run(flash_attention_fp8, q8, k8, v8, q_scale, k_scale, v_scale, causal=causal,
                                      out_dtype=dtype, out=out),
            "memsim flash2": _run(flash_attention, q, k, v, causal=causal, out=out),
            "sdpa flash": _run(_sdpa("FLASH_ATTENTION", causal), q, k, v)})
        rows.append(_row(_case("fp8", batch, heads, n, head_dim, causal, dtype), times,
                         ("memsim flash2", "sdpa flash"), "tflops", _tflop(batch, heads, n, head_dim, causal)))
    return rows


def linear_rows(lengths: list[int], *, batch: int = 4, heads: int = 32, head_dim: int = 128, device="cuda",
                dtype: torch.dtype = torch.bfloat16) -> list[dict]:
    """Linear attention (state + output kernels; causal: the chunked scan) against torch matmuls and against
    softmax attention by SDPA flash at the same shape, in tokens (B N) per second."""
    from kernels.linear import linear_attention

    rows = []
    for n in lengths:
        q, k, v = _qkv(batch, heads, n, head_dim, device, dtype)
        out = torch.empty_like(q)
        for causal in (False, True):
            times = _timed(f"linear N={n} causal={causal}", {
                "memsim linear": _run(linear_attention, q, k, v, causal=causal, out=out),
                "torch linear": _run(torch_linear_attention, q, k, v, causal=causal,
                                     chunk=min(TORCH_LINEAR_CHUNK, n)),
                "sdpa flash": _run(_sdpa("FLASH_ATTENTION", causal), q, k, v)})
            rows.append(_row(_case("linear", batch, heads, n, head_dim, causal, dtype), times,
                             ("torch linear", "sdpa flash"), "tokens_per_s", batch * n))
    return rows


def alibi_rates(heads: int) -> torch.Tensor:
    """Decay rates s_h = 2^(-8 h / H), h = 1 .. H: ALiBi's slopes (Press et al. 2022), which Lightning Attention's
    reference code (lightning_attn.utils._build_slope_tensor) uses as per-head decay."""
    return torch.exp2(-8.0 * torch.arange(1, heads + 1, dtype=torch.float32) / heads)


def lightning_rows(lengths: list[int], *, batch: int = 4, heads: int = 32, head_dim: int = 128, device="cuda",
                   dtype: torch.dtype = torch.bfloat16) -> list[dict]:
    """Lightning Attention-2 with per-head decay against the torch chunked peer with the same decay and SDPA
    flash causal, in tokens (B N) per second."""
    from kernels.lightning import lightning_attention

    rates = alibi_rates(heads).to(device)
    rows = []
    for n in lengths:
        q, k, v = _qkv(batch, heads, n, head_dim, device, dtype)
        out = torch.empty_like(q)
        times = _timed(f"lightning N={n}", {
            "memsim lightning": _run(lightning_attention, q, k, v, decay=rates, out=out),
            "torch linear decay": _run(torch_linear_attention, q, k, v, causal=True, decay=rates,
                                       chunk=min(TORCH_LINEAR_CHUNK, n)),
            "sdpa flash": _run(_sdpa("FLASH_ATTENTION", True), q, k, v)})
        rows.append(_row(_case("lightning", batch, heads, n, head_dim, True, dtype) + " decay", times,
                         ("torch linear decay", "sdpa flash"), "tokens_per_s", batch * n))
    return rows


def block_sparse_rows(n: int, *, batch: int = 1, heads: int = 32, head_dim: int = 128, block_size: int = MOBA_BLOCK,
                      fraction: float = 1 / 8, device="cuda", dtype: torch.dtype = torch.bfloat16) -> list[dict]:
    """MoBA with top_k = `fraction` of the key blocks, gate (moba_select) run once outside the timed call; each
    call still builds its per-tile block lists in torch (kernels.block_sparse.tile_blocks), part of the op.
    Against our flash2 and SDPA flash, both dense causal; the figure is the dense causal FLOPs over the time, so
    the speed against dense is the speed-up sparsity buys."""
    from kernels.block_sparse import moba_attention, moba_select
    from kernels.flash2 import flash_attention

    q, k, v = _qkv(batch, heads, n, head_dim, device, dtype)
    top_k = max(1, round(-(-n // block_size) * fraction))
    mask = moba_select(q, k, block_size=block_size, top_k=top_k)
    out, lse = torch.empty_like(q), torch.empty(q.shape[:3], device=device, dtype=torch.float32)
    times = _timed(f"block_sparse N={n} top_k={top_k}", {
        "memsim moba": _run(moba_attention, q, k, v, block_size=block_size, top_k=top_k, block_mask=mask, out=out,
                            lse_out=lse),
        "memsim flash2 dense": _run(flash_attention, q, k, v, causal=True, out=out),
        "sdpa flash dense": _run(_sdpa("FLASH_ATTENTION", True), q, k, v)})
    case = _case("block_sparse", batch, heads, n, head_dim, True, dtype) + f" block {block_size} top_k {top_k}"
    return [_row(case, times, ("memsim flash2 dense", "sdpa flash dense"), "dense_equivalent_tflops",
                 _tflop(batch, heads, n, head_dim, True))]


def ring_rows(n: int, *, batch: int = 1, heads: int = 32, head_dim: int = 128, device="cuda",
              dtype: torch.dtype = torch.bfloat16) -> list[dict]:
    """One ring step, local queries against one K/V block of n keys, writing O (fp32, the ring's accumulator
    dtype as kernels.ring.ring_attention keeps it) and LSE, and its merge into the accumulator, against SDPA flash
    on the same block, which returns no LSE. Two blocks: one off the diagonal (every key earlier than every
    query: no mask) and the diagonal one (causal). The merge's figure is bytes moved: the accumulator's O and
    LSE read and written, the step's read."""
    from kernels.ring import merge_steps, ring_attention_step

    q, k, v = _qkv(batch, heads, n, head_dim, device, dtype)
    o_step, o_acc = (torch.empty(q.shape, device=device, dtype=torch.float32) for _ in range(2))
    lse_step, lse_acc = (torch.empty(q.shape[:3], device=device, dtype=torch.float32) for _ in range(2))
    ring_attention_step(q, k, v, q_start=0, k_start=0, causal=True, out=o_acc, lse_out=lse_acc)  # a finite accumulator
    merge_bytes = batch * heads * n * (3 * head_dim + 3) * 4
    rows = []
    for causal in (False, True):
        step = dict(q_start=0 if causal else n, k_start=0, causal=causal, out=o_step, lse_out=lse_step)

        def step_and_merge(step=step):
            ring_attention_step(q, k, v, **step)
            merge_steps(o_acc, lse_acc, o_step, lse_step)

        times = _timed(f"ring N={n} causal={causal}", {
            "memsim ring step": _run(ring_attention_step, q, k, v, **step),
            "memsim ring merge": _run(merge_steps, o_acc, lse_acc, o_step, lse_step),
            "memsim ring step + merge": lambda: step_and_merge,
            "sdpa flash": _run(_sdpa("FLASH_ATTENTION", causal), q, k, v)})
        case = _case("ring", batch, heads, n, head_dim, causal, dtype) + (" diagonal block" if causal else
                                                                          " block off the diagonal")
        rows.append(_row(case, times, ("sdpa flash",), "tflops", _tflop(batch, heads, n, head_dim, causal),
                         {"memsim ring merge": ("bytes_per_s", merge_bytes)}))
    return rows


def group_rows(group: str, quick: bool, copy_bw: float) -> list[dict]:
    """The rows of one group at its GPU shapes (module docstring); quick: one length where there are several."""
    runs = {"prefill": lambda: prefill_rows([4096] if quick else [1024, 4096, 8192, 16384]),
            "decode": lambda: decode_rows([32768] if quick else [4096, 32768], copy_bw),
            "standard": lambda: standard_rows([4096] if quick else [1024, 4096]),
            "flash1": lambda: flash1_rows(4096),
            "backward": lambda: backward_rows(4096),
            "fp8": lambda: fp8_rows(4096),
            "linear": lambda: linear_rows([4096] if quick else [4096, 16384]),
            "lightning": lambda: lightning_rows([4096] if quick else [4096, 16384]),
            "block_sparse": lambda: block_sparse_rows(16384),
            "ring": lambda: ring_rows(8192)}
    return runs[group]()


# ---- printing and the command line --------------------------------------------------------------------------------

def print_rows(group: str, rows: list[dict]) -> None:
    """One line per case and kernel: time, figure, speed against the row's peers."""
    for row in rows:
        if group == "prefill":
            for name, us in row["time_us"].items():
                ratio = row["time_us"].get("sdpa flash", 0.0) / us
                print(f"{row['case']} | {name:<26} | {us:10.1f} us | {row['tflops'][name]:6.0f} TFLOP/s"
                      + (f" | {ratio:.2f}x sdpa flash" if ratio and name != "sdpa flash" else ""))
        elif group == "decode":
            for name, r in row["kernels"].items():
                print(f"{row['case']} | {name:<26} | {r['time_us']:10.1f} us | {r['bytes_per_s'] / 1e12:6.2f} TB/s"
                      f" | {r['fraction_of_copy']:.0%} of copy")
        else:
            for name, r in row["kernels"].items():
                key = next(key for key in FIGURES if key in r)
                label, divisor = FIGURES[key]
                speed = ", ".join(f"{ratio:.2f}x {peer}" for peer, ratio in r["speed_vs"].items())
                print(f"{row['case']} | {name:<26} | {r['time_us']:10.1f} us | {r[key] / divisor:6.2f} {label}"
                      + (f" | {speed}" if speed else ""))


def parse_groups(text: str) -> list[str]:
    """--only: comma-separated group names, each one of GROUPS."""
    groups = [g.strip() for g in text.split(",") if g.strip()]
    for group in groups:
        if group not in GROUPS:
            raise argparse.ArgumentTypeError(f"group {group!r} is not one of {', '.join(GROUPS)}")
    if not groups:
        raise argparse.ArgumentTypeError(f"no group named; pass one or more of {', '.join(GROUPS)}")
    return groups


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, metavar="DIR", help="write DIR/bench.json")
    parser.add_argument("--quick", action="store_true", help="one length per group: N=4096, decode context 32K")
    parser.add_argument("--only", type=parse_groups, default=list(GROUPS), metavar="GROUP[,GROUP]",
                        help=f"groups to run (default all): {', '.join(GROUPS)}")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench: no CUDA device; run this on the GPU machine", file=sys.stderr)
        return 1
    copy_bw = copy_bandwidth_bytes_per_s()
    print(f"device: {torch.cuda.get_device_name()}, copy bandwidth {copy_bw / 1e12:.2f} TB/s (read + write)")
    record = {"device": torch.cuda.get_device_name(), "copy_bandwidth_bytes_per_s": copy_bw,
              "torch": torch.__version__, "triton": triton.__version__,
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")}
    failed = False
    for group in args.only:
        try:
            record[group] = group_rows(group, args.quick, copy_bw)
            print_rows(group, record[group])
        except Exception as err:  # one group's failure (out of memory, say) leaves the others to run
            print(f"bench: group {group} failed: {type(err).__name__}: {_first_line(err)}", file=sys.stderr)
            failed = True
        torch.cuda.empty_cache()  # the next group's tensors start from free memory
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "bench.json").write_text(json.dumps(record, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
