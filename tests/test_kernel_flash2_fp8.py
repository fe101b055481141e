"""kernels.flash2_fp8: the e4m3 block quantiser, and the FP8 forward against the float64 reference on the
dequantised inputs.

Quantiser bound (per element): round to nearest e4m3 keeps 3 mantissa bits, so |x - deq(q(x))| <= 2^-4 |x| for
scaled values in the normal range (>= 2^-6) and <= 2^-10 * scale below it (subnormal spacing 2^-9).

Kernel tolerance, with Q, K, V the dequantised inputs (the reference sees exactly what the kernel sees):
- O: the kernel rounds P (times 2^8) to e4m3 before P V, a relative error of at most 2^-4 per probability,
  so |O - O_ref| <= 2^-4 max |V| (sum_j |dP_j| |V_j| <= 2^-4 sum_j P_j max |V|); scores carry an error
  e_S (next item) that moves each P by a factor exp(+-2 e_S); the output's own rounding adds its eps * max |O_ref|.
- LSE and the scores: e4m3 products are exact in fp32; the sums over D accumulate in fp32 on the interpreter but
  keep only about 14 bits on Hopper's FP8 tensor cores (DeepSeek-V3 report, section 3.3.2), so
  e_S = 2^-12 * scale * max_ij sum_d |Q_id K_jd| bounds the score error with room, and |LSE - LSE_ref| <= e_S
  plus fp32 rounding of the LSE itself.
"""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from kernel_checks import DEVICE, kernel_settings, poisoned, record_launches

import kernels.flash2_fp8 as flash2_fp8
from kernels import reference
from kernels.flash2_fp8 import dequantize_fp8, flash_attention_fp8, launch_configs, quantize_fp8

OUT_DTYPES = [torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])  # no bf16 in the interpreter
MAX_LEN = 80 if DEVICE == "cpu" else 640  # on a GPU, several 128-row blocks
BLOCKS = [(32, 32), (64, 32), (32, 64)] + ([(128, 128), (128, 64)] if DEVICE == "cuda" else [])
HEAD_DIMS = [32, 40, 64] + ([128, 256] if DEVICE == "cuda" else [])
OUT_EPS = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}  # half a unit in the last place, relative


def spread_blocks(x: torch.Tensor, block: int, generator: torch.Generator) -> torch.Tensor:
    """x [B, H, N, D] with each block of `block` tokens multiplied by its own 2^u, u uniform in [-3, 3], so that
    the per-block scales differ and a scale applied to the wrong block shows as a large error."""
    blocks = -(-x.shape[2] // block)
    factors = torch.exp2(6 * torch.rand(x.shape[0], x.shape[1], blocks, generator=generator) - 3)
    return x * factors.repeat_interleave(block, dim=2)[:, :, :x.shape[2], None]


@kernel_settings(15)
@given(shape=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 80), st.integers(1, 72)),
       block=st.integers(1, 40), magnitude=st.sampled_from([1e-3, 1.0, 300.0]), seed=st.integers(0, 2 ** 31 - 1))
def test_quantiser_round_trip_error_is_bounded(shape, block, magnitude, seed):
    g = torch.Generator().manual_seed(seed)
    x = spread_blocks(magnitude * torch.randn(shape, generator=g), block, g)
    x_fp8, scales = quantize_fp8(x, block)
    assert x_fp8.dtype == torch.float8_e4m3fn and x_fp8.shape == x.shape
    assert scales.dtype == torch.float32 and scales.shape == (*shape[:2], -(-shape[2] // block))
    scale = scales.repeat_interleave(block, dim=2)[:, :, :shape[2], None]
    error = (dequantize_fp8(x_fp8, scales, block) - x).abs()
    bound = torch.maximum(2.0 ** -4 * x.abs(), 2.0 ** -10 * scale) * (1 + 1e-6)
    worst = (error / bound).max().item()
    print(f"worst error / bound {worst:.3f}")
    assert worst <= 1.0
    assert (x_fp8.float().abs().amax(dim=-1) <= flash2_fp8.E4M3_MAX).all()


def test_token_major_layout_keeps_the_values():
    x = torch.randn(2, 3, 20, 40)
    plain, scales = quantize_fp8(x, 8)
    token_major, same_scales = quantize_fp8(x, 8, token_major=True)
    assert token_major.stride(2) == 1 and plain.stride(3) == 1
    assert torch.equal(token_major.float(), plain.float()) and torch.equal(scales, same_scales)


def test_quantiser_worked_example():
    """One block of (1, -2, 448, 0): scale = 448 / 448 = 1, every value exact; an all-zero block gets scale 1."""
    x = torch.tensor([1.0, -2.0, 448.0, 0.0, 0.0, 0.0]).view(1, 1, 6, 1)
    x_fp8, scales = quantize_fp8(x, 4)
    assert scales.flatten().tolist() == [1.0, 1.0]
    assert dequantize_fp8(x_fp8, scales, 4).flatten().tolist() == [1.0, -2.0, 448.0, 0.0, 0.0, 0.0]


def quantised(batch, q_heads, kv_heads, q_len, k_len, head_dim, q_block, kv_block, seed, logit_scale):
    """e4m3 q, k, v with their scales on DEVICE, and the fp32 values they stand for; V token-major (the Hopper
    fast path) for odd seeds, D-contiguous for even ones."""
    g = torch.Generator().manual_seed(seed)
    q = spread_blocks(logit_scale * torch.randn(batch, q_heads, q_len, head_dim, generator=g), q_block, g)
    k = spread_blocks(torch.randn(batch, kv_heads, k_len, head_dim, generator=g), kv_block, g)
    v = spread_blocks(torch.randn(batch, kv_heads, k_len, head_dim, generator=g), kv_block, g)
    out = []
    for x, block, token_major in ((q, q_block, False), (k, kv_block, False), (v, kv_block, seed % 2 == 1)):
        x_fp8, scales = quantize_fp8(x, block, token_major=token_major)
        out.append((x_fp8.to(DEVICE), scales.to(DEVICE), dequantize_fp8(x_fp8, scales, block)))
    return out


def score_error_bound(q, k, scale) -> float:
    """e_S = 2^-12 * scale * max_ij sum_d |Q_id K_jd| (module docstring), with K expanded to the q heads."""
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    return 2.0 ** -12 * scale * (q.abs() @ k.abs().transpose(-1, -2)).max().item()


@kernel_settings(10)
@given(batch=st.integers(1, 2), heads=st.sampled_from([(1, 1), (2, 1), (2, 2)]),
       q_len=st.one_of(st.integers(1, 16), st.integers(17, MAX_LEN)),
       k_len=st.one_of(st.integers(1, 16), st.integers(17, MAX_LEN)),
       head_dim=st.sampled_from(HEAD_DIMS), blocks=st.sampled_from(BLOCKS),
       causal=st.booleans(), out_dtype=st.sampled_from(OUT_DTYPES), logit_scale=st.sampled_from([1.0, 8.0]),
       seed=st.integers(0, 2 ** 31 - 1))
def test_matches_reference_on_dequantised_inputs(batch, heads, q_len, k_len, head_dim, blocks, causal, out_dtype,
                                                 logit_scale, seed):
    (q8, qs, q), (k8, ks, k), (v8, vs, v) = quantised(batch, *heads, q_len, k_len, head_dim, *blocks, seed,
                                                      logit_scale)
    out, lse_out = poisoned(q8.shape, out_dtype), poisoned(q8.shape[:3], torch.float32)
    o, lse = flash_attention_fp8(q8, k8, v8, qs, ks, vs, q_block=blocks[0], kv_block=blocks[1], causal=causal,
                                 out_dtype=out_dtype, return_lse=True, out=out, lse_out=lse_out)
    assert o is out and lse is lse_out
    o64, lse64 = reference.attention(q, k, v, causal=causal)
    o, lse = o.to("cpu", torch.float64), lse.to("cpu", torch.float64)
    e_s = score_error_bound(q, k, head_dim ** -0.5)
    o_bound = (2.0 ** -4 + math.expm1(2 * e_s)) * v.abs().max().item() + OUT_EPS[out_dtype] * o64.abs().max().item()
    finite = torch.isfinite(lse64)
    lse_bound = e_s + 1e-6 * max(1.0, lse64[finite].abs().max().item() if finite.any() else 0.0)
    o_error = (o - o64).abs().max().item() if o.numel() else 0.0
    lse_error = (lse - lse64)[finite].abs().max().item() if finite.any() else 0.0
    print(f"O error {o_error:.3g} (bound {o_bound:.3g}), LSE error {lse_error:.3g} (bound {lse_bound:.3g})")
    assert not torch.isnan(o).any() and torch.equal(torch.isneginf(lse), ~finite)
    assert o_error <= o_bound and lse_error <= lse_bound


def test_more_queries_than_keys_causal_leaves_rows_empty():
    """Nq = 40 over Nk = 8 keys, causal: rows 0..31 see no key (O = 0, LSE = -inf); row 32 sees key 0 alone,
    so its O is v_0 up to the output's rounding (P = 1 is exact in e4m3)."""
    (q8, qs, _), (k8, ks, _), (v8, vs, v) = quantised(1, 1, 1, 40, 8, 32, 32, 32, 4, 1.0)
    o, lse = flash_attention_fp8(q8, k8, v8, qs, ks, vs, q_block=32, kv_block=32, causal=True,
                                 out_dtype=torch.float16, return_lse=True)
    o = o.to("cpu", torch.float64)
    assert torch.equal(o[0, 0, :32], torch.zeros_like(o[0, 0, :32])) and torch.isneginf(lse[0, 0, :32]).all()
    assert torch.allclose(o[0, 0, 32], v[0, 0, 0].double(), rtol=2.0 ** -10, atol=0)


def test_reported_config_is_the_launched_one(monkeypatch):
    launches = record_launches(monkeypatch, flash2_fp8, "_flash2_fp8_fwd")
    (q8, qs, _), (k8, ks, _), (v8, vs, _) = quantised(2, 2, 1, 70, 50, 40, 64, 32, 1, 1.0)
    flash_attention_fp8(q8, k8, v8, qs, ks, vs, q_block=64, kv_block=32, out_dtype=torch.float16)
    [config] = launch_configs(q8.shape, k8.shape, q_block=64, kv_block=32, out_dtype=torch.float16)
    print(config.as_dict())
    (_, grid, meta), = launches
    assert grid == config.grid == (2, 4)
    assert (meta["BLOCK_M"], meta["BLOCK_N"]) == (config.block_m, config.block_n) == (64, 32)
    assert (meta["num_warps"], meta["num_stages"]) == (config.num_warps, config.num_stages)
    assert flash2_fp8.recent_launches() == [config]


@pytest.mark.parametrize("change, message", [
    (lambda a: {**a, "q": a["q"].float()}, "float8_e4m3fn"),
    (lambda a: {**a, "k_scale": a["k_scale"][:, :, :1]}, "k_scale is"),
    (lambda a: {**a, "q_block": 48}, "q_block = 48"),
    (lambda a: {**a, "kv_block": 16}, "kv_block = 16"),
    (lambda a: {**a, "out_dtype": torch.float32}, "out_dtype"),
    (lambda a: {**a, "out": poisoned(a["q"].shape, torch.float32)}, "out is"),
    (lambda a: {**a, "q": a["q"][..., :16], "k": a["k"][..., :16], "v": a["v"][..., :16]}, "head dim = 16"),
])
def test_bad_inputs_raise_one_line(change, message):
    (q8, qs, _), (k8, ks, _), (v8, vs, _) = quantised(1, 2, 1, 40, 40, 32, 32, 32, 0, 1.0)
    arguments = {"q": q8, "k": k8, "v": v8, "q_scale": qs, "k_scale": ks, "v_scale": vs, "q_block": 32,
                 "kv_block": 32, "out_dtype": torch.float16}
    with pytest.raises(ValueError, match=message) as error:
        flash_attention_fp8(**change(arguments))
    assert "\n" not in str(error.value)


def test_quantiser_bad_inputs_raise_one_line():
    with pytest.raises(ValueError, match="block = 0"):
        quantize_fp8(torch.ones(1, 1, 4, 32), 0)
    with pytest.raises(ValueError, match=r"x is .*\[B, H, N, D\]"):
        quantize_fp8(torch.ones(4, 32), 16)
