"""kernels.flash2 (FlashAttention-2 forward and backward) against the float64 reference.

Tolerance (tests/kernel_checks.py): error against float64 at most 2x that of the reference computed in the
same low precision, plus a floor. Outputs and gradients are written into NaN-poisoned buffers.
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from kernel_checks import DEVICE, check_close, kernel_settings, low_precision_dtypes, poisoned, record_launches

import kernels.flash2 as flash2
from kernels import reference
from kernels.flash2 import (FlashAttentionFunction, backward_launch_configs, flash_attention,
                            flash_attention_backward, launch_configs)

# (q heads, kv heads): MHA, GQA groups of 2, 3 and 4, MQA; batch * q heads <= 4 keeps the interpreter quick.
HEAD_PAIRS = [(1, 1), (2, 2), (2, 1), (4, 2), (3, 1), (4, 1)]
# 40 and 72 pad to 64 and 128 inside the kernel. On a GPU the sm_90 tiles (64 to 128 rows) need longer sequences
# to hold several blocks, and every head-dim bucket of the tile tables compiles.
HEAD_DIMS = [32, 40, 64, 72] + ([96, 128, 256] if DEVICE == "cuda" else [])
MAX_LEN = 80 if DEVICE == "cpu" else 640
BAND_LEN = 80 if DEVICE == "cpu" else 400


def inputs(batch, q_heads, kv_heads, q_len, k_len, head_dim, dtype, logit_scale, seed, layout="bhnd"):
    """q ~ logit_scale * N(0, 1), k and v ~ N(0, 1), on DEVICE in dtype. layout "bnhd": views of [B, N, H, D]
    tensors, so the kernels see strides other than the contiguous ones."""
    g = torch.Generator().manual_seed(seed)

    def make(heads, length, magnitude):
        x = magnitude * torch.randn(batch, length, heads, head_dim, generator=g)
        x = x.to(DEVICE, dtype)
        return x.transpose(1, 2) if layout == "bnhd" else x.transpose(1, 2).contiguous()

    return make(q_heads, q_len, logit_scale), make(kv_heads, k_len, 1.0), make(kv_heads, k_len, 1.0)


def slopes(q_heads, alibi):
    """ALiBi slopes 2^(-8 h / H) (Press et al. 2022, section 3), h = 1..H."""
    if not alibi:
        return None
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / q_heads) for h in range(q_heads)], device=DEVICE)


@st.composite
def problems(draw):
    batch = draw(st.sampled_from([1, 2]))
    q_heads, kv_heads = draw(st.sampled_from([p for p in HEAD_PAIRS if batch * p[0] <= 4]))
    lengths = st.one_of(st.integers(1, 16), st.integers(17, MAX_LEN))
    q_len = draw(lengths)
    return {"batch": batch, "q_heads": q_heads, "kv_heads": kv_heads, "q_len": q_len,
            "k_len": draw(st.one_of(st.just(q_len), lengths)), "head_dim": draw(st.sampled_from(HEAD_DIMS)),
            "dtype": draw(st.sampled_from(low_precision_dtypes())),
            # logit_scale 12: scores with a standard deviation of 12, rows dominated by a few keys
            "logit_scale": draw(st.sampled_from([1.0, 4.0, 12.0])), "seed": draw(st.integers(0, 2 ** 31 - 1)),
            "layout": draw(st.sampled_from(["bhnd", "bnhd"]))}


@st.composite
def masks(draw):
    """causal, window and alibi keywords (scale too)."""
    # narrow sides cut through key blocks; wide ones leave full blocks between the band's edges
    side = st.one_of(st.integers(0, 8), st.integers(9, 40), st.integers(41, MAX_LEN))
    window = draw(st.one_of(st.none(), st.tuples(side, side)))
    return {"causal": draw(st.booleans()), "window": window, "alibi": draw(st.booleans()),
            "scale": draw(st.one_of(st.none(), st.sampled_from([0.05, 0.3])))}


def reference_keywords(mask, q_heads):
    return {"causal": mask["causal"], "window": mask["window"], "alibi_slopes": slopes(q_heads, mask["alibi"]),
            "scale": mask["scale"]}


@kernel_settings(50)
@given(problem=problems(), mask=masks())
def test_forward_matches_reference(problem, mask):
    q, k, v = inputs(**problem)
    dtype, keywords = problem["dtype"], reference_keywords(mask, problem["q_heads"])
    out, lse_out = poisoned(q.shape, dtype), poisoned(q.shape[:3], torch.float32)
    o, lse = flash_attention(q, k, v, **keywords, return_lse=True, out=out, lse_out=lse_out)
    assert o is out and lse is lse_out
    o64, lse64 = reference.attention(q, k, v, **keywords)
    o_peer, lse_peer = reference.attention(q, k, v, **keywords, dtype=dtype)
    check_close("flash2 o", o, o64, o_peer, dtype)
    check_close("flash2 lse", lse, lse64, lse_peer, dtype)


def summand_magnitudes(q, k, v, do, scale, dlse=None) -> tuple[float, float, float]:
    """The largest summand of dQ, dK and dV: dQ = scale dS K and dK = scale dS^T Q with |dS| <= |dP| + |D| +
    |dLSE| <= 2 max |dO V^T| + max |dLSE|, dV = P^T dO with P <= 1."""
    q, k, v, do = (x.detach().to("cpu", torch.float64) for x in (q, k, v, do))
    v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    ds = 2 * (do @ v.transpose(-1, -2)).abs().max().item() + (0.0 if dlse is None else dlse.abs().max().item())
    return scale * ds * k.abs().max().item(), scale * ds * q.abs().max().item(), do.abs().max().item()


def check_gradient(name, grad, grad64, peer, dtype, magnitude) -> float:
    """check_close in units of the gradient's largest summand, so the floor is relative to max(|reference|,
    summand) rather than to the reference alone. Where every row sees one key (Nk = 1, window (0, 0)) dQ and dK
    are exactly 0: the reference's softmax backward cancels exactly, FA2's dS = P (dP - rowsum(dO * O)) leaves
    rounding noise of its summands (~1e-6 of them in fp32), which a floor relative to 0 would reject."""
    unit = max(magnitude, 1e-30)
    return check_close(name, grad.double() / unit, grad64.double() / unit, peer.double() / unit, dtype)


@kernel_settings(30)
@given(problem=problems(), mask=masks())
def test_gradients_match_reference(problem, mask):
    q, k, v = inputs(**problem)
    dtype, keywords = problem["dtype"], reference_keywords(mask, problem["q_heads"])
    do = torch.randn(q.shape, generator=torch.Generator().manual_seed(problem["seed"] + 1)).to(DEVICE, dtype)
    o, lse = flash_attention(q, k, v, **keywords, return_lse=True)
    outs = [poisoned(x.shape, dtype) for x in (q, k, v)]
    grads = flash_attention_backward(do, q, k, v, o, lse, **keywords, dq_out=outs[0], dk_out=outs[1],
                                     dv_out=outs[2])
    assert all(g is out for g, out in zip(grads, outs))
    ref = reference.attention_backward(q, k, v, do, **keywords)
    peer = reference.attention_backward(q, k, v, do, **keywords, dtype=dtype)
    magnitudes = summand_magnitudes(q, k, v, do, mask["scale"])
    for name, g, g64, g_peer, magnitude in zip(("dq", "dk", "dv"), grads, ref, peer, magnitudes):
        check_gradient(f"flash2 {name}", g, g64, g_peer, dtype, magnitude)


def reference_gradients(q, k, v, do, dlse, dtype, **keywords):
    """(dQ, dK, dV) of sum(O * dO) + sum(LSE * dLSE) through the reference computed in dtype."""
    leaves = [x.detach().to("cpu", dtype).requires_grad_(True) for x in (q, k, v)]
    o, lse = reference.attention(*leaves, **keywords, dtype=dtype)
    return torch.autograd.grad((o, lse), leaves, grad_outputs=(do.to("cpu", dtype), dlse.to("cpu", dtype)))


@kernel_settings(12)
@given(problem=problems(), mask=masks())
def test_gradients_through_the_lse(problem, mask):
    """A gradient of the LSE output adds P * dLSE to dS: the delta kernel subtracts it from rowsum(dO * O)."""
    q, k, v = inputs(**problem)
    dtype, keywords = problem["dtype"], reference_keywords(mask, problem["q_heads"])
    g = torch.Generator().manual_seed(problem["seed"] + 2)
    do = torch.randn(q.shape, generator=g).to(DEVICE, dtype)
    dlse = torch.randn(q.shape[:3], generator=g).to(DEVICE)
    leaves = [x.detach().requires_grad_(True) for x in (q, k, v)]
    o, lse = flash_attention(*leaves, **keywords, return_lse=True)
    grads = torch.autograd.grad((o, lse), leaves, grad_outputs=(do, dlse))
    ref = reference_gradients(q, k, v, do, dlse, torch.float64, **keywords)
    peer = reference_gradients(q, k, v, do, dlse, dtype, **keywords)
    magnitudes = summand_magnitudes(q, k, v, do, mask["scale"], dlse)
    for name, got, g64, g_peer, magnitude in zip(("dq", "dk", "dv"), grads, ref, peer, magnitudes):
        check_gradient(f"flash2 {name} through lse", got, g64, g_peer, dtype, magnitude)


@pytest.mark.parametrize("causal, window", [(False, (5, 40)), (False, (40, 5)), (True, (37, 0)), (True, None)])
def test_band_edges_inside_blocks(causal, window):
    """Nq = Nk = BAND_LEN over 16- to 128-row tiles: the band's edges cut through tiles, so every row block has
    masked tiles on one or both sides of its full ones, the split the kernels compute per block."""
    q, k, v = inputs(1, 2, 1, BAND_LEN, BAND_LEN, 64, torch.float32, 1.0, seed=21)
    do = torch.randn(q.shape, generator=torch.Generator().manual_seed(22)).to(DEVICE)
    o, lse = flash_attention(q, k, v, causal=causal, window=window, return_lse=True)
    o64, lse64 = reference.attention(q, k, v, causal=causal, window=window)
    peer = reference.attention(q, k, v, causal=causal, window=window, dtype=torch.float32)
    check_close("band o", o, o64, peer[0], torch.float32)
    check_close("band lse", lse, lse64, peer[1], torch.float32)
    grads = flash_attention_backward(do, q, k, v, o, lse, causal=causal, window=window)
    ref = reference.attention_backward(q, k, v, do, causal=causal, window=window)
    peer = reference.attention_backward(q, k, v, do, causal=causal, window=window, dtype=torch.float32)
    for name, g, g64, g_peer, magnitude in zip(("dq", "dk", "dv"), grads, ref, peer,
                                               summand_magnitudes(q, k, v, do, None)):
        check_gradient(f"band {name}", g, g64, g_peer, torch.float32, magnitude)


def test_more_queries_than_keys_causal_leaves_rows_empty():
    """Nq = 20 queries over Nk = 8 keys, causal, aligned to the end: query i sits at p = i - 12 and sees keys
    j <= p, so rows 0..11 see nothing (O = 0, LSE = -inf, dQ = 0) and row 12 sees key 0 alone (O = v_0)."""
    q, k, v = inputs(1, 2, 1, 20, 8, 64, torch.float32, 1.0, seed=11)
    leaves = [x.detach().requires_grad_(True) for x in (q, k, v)]
    o, lse = flash_attention(*leaves, causal=True, return_lse=True)
    o.sum().backward()
    print(f"LSE row 11 {lse[0, 0, 11].item()}, row 12 {lse[0, 0, 12].item():.4f}")
    assert torch.equal(o[:, :, :12], torch.zeros_like(o[:, :, :12]))
    assert torch.isneginf(lse[:, :, :12]).all() and torch.isfinite(lse[:, :, 12:]).all()
    assert torch.allclose(o[0, :, 12], v[0, 0, 0].expand(2, -1), atol=1e-6)
    assert torch.equal(leaves[0].grad[:, :, :12], torch.zeros_like(leaves[0].grad[:, :, :12]))
    assert all(torch.isfinite(x.grad).all() for x in leaves)


def test_autograd_through_the_function():
    """flash_attention(...).sum().backward() runs FlashAttentionFunction; the gradients are those of the reference
    for dO = 1. Without grad, the op returns a plain tensor."""
    q, k, v = inputs(2, 4, 2, 37, 45, 40, torch.float32, 1.0, seed=3)
    leaves = [x.detach().requires_grad_(True) for x in (q, k, v)]
    o = flash_attention(*leaves, causal=True, window=(20, 0))
    assert o.grad_fn is not None and type(o.grad_fn).__name__.startswith(FlashAttentionFunction.__name__)
    o.sum().backward()
    ref = reference.attention_backward(q, k, v, torch.ones_like(q), causal=True, window=(20, 0))
    peer = reference.attention_backward(q, k, v, torch.ones_like(q), causal=True, window=(20, 0), dtype=torch.float32)
    magnitudes = summand_magnitudes(q, k, v, torch.ones_like(q), None)
    for name, leaf, g64, g_peer, magnitude in zip(("dq", "dk", "dv"), leaves, ref, peer, magnitudes):
        check_gradient(f"autograd {name}", leaf.grad, g64, g_peer, torch.float32, magnitude)
    with torch.no_grad():
        assert flash_attention(*leaves).grad_fn is None


def assert_launched_as_reported(configs, launches):
    for config in configs:
        print(config.as_dict())
        (grid, meta), = [(launch.grid, launch.meta) for launch in launches if launch.kernel == config.kernel]
        assert grid == config.grid
        assert (meta["num_warps"], meta["num_stages"]) == (config.num_warps, config.num_stages)
        assert meta.get("BLOCK_M") == config.block_m
        assert meta.get("BLOCK_N", 1) == config.block_n
    assert flash2.recent_launches() == configs


def test_reported_configs_are_the_launched_ones(monkeypatch):
    q, k, v = inputs(2, 4, 2, 50, 70, 72, torch.float16, 1.0, seed=5)
    slope = slopes(4, True)
    recorders = record_launches(monkeypatch, flash2, "_flash2_fwd", "_flash2_bwd_delta", "_flash2_bwd_dkdv",
                                "_flash2_bwd_dq")
    o, lse = flash_attention(q, k, v, causal=True, alibi_slopes=slope, return_lse=True)
    forward = launch_configs(q.shape, k.shape, q.dtype, causal=True, alibi_slopes=slope)
    assert [c.kernel for c in forward] == ["_flash2_fwd"]
    assert forward[0].grid == (-(-50 // forward[0].block_m), 8)
    assert_launched_as_reported(forward, recorders)
    flash_attention_backward(torch.ones_like(o), q, k, v, o, lse, causal=True, alibi_slopes=slope)
    backward = backward_launch_configs(q.shape, k.shape, q.dtype, causal=True, alibi_slopes=slope)
    assert [c.kernel for c in backward] == ["_flash2_bwd_delta", "_flash2_bwd_dkdv", "_flash2_bwd_dq"]
    assert backward[1].grid == (-(-70 // backward[1].block_n), 4)  # one program per key block and kv head
    assert_launched_as_reported(backward, recorders)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_sm90_tiles_fit_in_shared_memory(monkeypatch, dtype):
    """The sm_90 configs (as on the GPU) for every head-dim bucket: each estimate fits the H100's 232448 bytes per
    block (shared/DESIGN.md) with room for the compiler's scratch, and the d = 128 forward is 128 x 64 over
    8 warps."""
    monkeypatch.setattr(flash2, "INTERPRETING", False)
    monkeypatch.setattr(flash2, "_compiled_shared_bytes", {})
    for head_dim in (32, 64, 128, 256):
        q_shape, k_shape = (4, 32, 4096, head_dim), (4, 8, 4096, head_dim)
        configs = launch_configs(q_shape, k_shape, dtype) + backward_launch_configs(q_shape, k_shape, dtype)
        print(f"d={head_dim}: " + ", ".join(f"{c.kernel} {c.block_m}x{c.block_n} {c.shared_mem_bytes} B"
                                            for c in configs))
        assert all(c.shared_mem_source == "estimate" and c.shared_mem_bytes <= 200 * 1024 for c in configs)
    forward = launch_configs((4, 32, 4096, 128), (4, 32, 4096, 128), torch.bfloat16)[0]
    assert (forward.block_m, forward.block_n, forward.num_warps, forward.grid) == (128, 64, 8, (32, 128))


def test_return_lse_false_still_fills_lse_out():
    q, k, v = inputs(1, 1, 1, 9, 9, 32, torch.float32, 1.0, seed=1)
    lse_out = poisoned((1, 1, 9), torch.float32)
    o = flash_attention(q, k, v, lse_out=lse_out)
    assert isinstance(o, torch.Tensor) and torch.isfinite(lse_out).all()


@pytest.mark.parametrize("change, message", [
    (lambda q, k, v: ((q[0], k, v), {}), "4 dimensions"),
    (lambda q, k, v: ((q, k, v.double()), {}), "dtypes"),
    (lambda q, k, v: ((q.double(), k.double(), v.double()), {}), "q.dtype"),
    (lambda q, k, v: ((q[..., :16], k[..., :16], v[..., :16]), {}), "head dim = 16"),
    (lambda q, k, v: ((q[:, :3], k[:, :2], v[:, :2]), {}), "multiple of kv heads"),
    (lambda q, k, v: ((q, k, v[:, :, :5]), {}), "v shape"),
    (lambda q, k, v: ((q, k, v), {"window": (-1, 3)}), "window"),
    (lambda q, k, v: ((q, k, v), {"alibi_slopes": torch.ones(3, device=DEVICE)}), "alibi_slopes"),
    (lambda q, k, v: ((q, k, v), {"scale": float("nan")}), "scale"),
    (lambda q, k, v: ((q, k, v), {"out": poisoned(q.shape, torch.float16)}), "out is"),
    (lambda q, k, v: ((q, k, v), {"lse_out": poisoned(q.shape, torch.float32)}), "lse_out is"),
])
def test_bad_inputs_raise_one_line(change, message):
    q, k, v = inputs(1, 4, 2, 8, 8, 32, torch.float32, 1.0, seed=0)
    args, keywords = change(q, k, v)
    with pytest.raises(ValueError, match=message) as error:
        flash_attention(*args, **keywords)
    assert "\n" not in str(error.value)


def test_bad_backward_inputs_raise_one_line():
    q, k, v = inputs(1, 2, 1, 8, 8, 32, torch.float32, 1.0, seed=0)
    o, lse = flash_attention(q, k, v, return_lse=True)
    with pytest.raises(ValueError, match="dk_out is") as error:
        flash_attention_backward(o, q, k, v, o, lse, dk_out=poisoned(q.shape, torch.float32))
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="lse is"):
        flash_attention_backward(o, q, k, v, o, lse.double())


def test_attention_flops_worked_example():
    """DESIGN.md's peer table: B = 4, H = 32, N = 4096, d = 128 is 4 B H N^2 d = 1.0995e15 FLOPs forward, so
    348 TFLOP/s (SDPA flash) is 3.16 ms; causal halves it, the backward counts 2.5 times the forward."""
    forward = flash2.attention_flops(4, 32, 4096, 128, causal=False, backward=False)
    print(f"{forward:.4e} FLOPs, {forward / 348e12 * 1e3:.2f} ms at 348 TFLOP/s")
    assert forward == 4 * 4 * 32 * 4096 ** 2 * 128
    assert flash2.attention_flops(4, 32, 4096, 128, causal=True, backward=True) == forward * 0.5 * 2.5


@pytest.mark.skipif(DEVICE == "cuda", reason="on a GPU the benchmark runs; the CPU has none to run it on")
def test_benchmark_needs_a_gpu():
    with pytest.raises(ValueError, match="CUDA"):
        flash2.benchmark()
