"""Group quantisation of K/V (the per-element error bound, the 4-bit packing) and quantized_decode
against the float64 reference over the dequantised K/V."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from kernel_checks import (DEVICE, assert_recorded_as_reported, check_close, kernel_settings, low_precision_dtypes,
                           poisoned)
from kernels import kv_quant, reference
from kernels.kv_quant import QuantizedKV, dequantize_kv, quantize_kv


def divisor_groups(head_dim: int) -> list[int]:
    return [g for g in (16, 32, 64, 128) if head_dim % g == 0]


@st.composite
def tensors_to_quantize(draw):
    head_dim = draw(st.sampled_from([16, 32, 48, 64, 96, 128]))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 9)), head_dim)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    magnitude = draw(st.sampled_from([1e-3, 1.0, 300.0]))
    x = torch.randn(shape, generator=gen) * magnitude
    x[..., 0, :] = 0.0  # an all-zero row: scale 0, codes 0
    dtype = draw(st.sampled_from([torch.float16, torch.bfloat16, torch.float32]))
    return x.to(dtype), draw(st.sampled_from([8, 4])), draw(st.sampled_from(divisor_groups(head_dim)))


@kernel_settings(40)
@given(args=tensors_to_quantize())
def test_quantisation_error_is_at_most_half_a_scale(args):
    """|x - scale * code| <= scale / 2 for every element, with the scale its group stores."""
    x, bits, group = args
    kv = quantize_kv(x, bits=bits, group_size=group)
    assert kv.shape == tuple(x.shape) and kv.scales.shape == (*x.shape[:-1], x.shape[-1] // group)
    assert kv.codes.dtype == (torch.int8 if bits == 8 else torch.uint8)
    codes = kv.codes if bits == 8 else kv_quant.unpack_nibbles(kv.codes)
    assert codes.abs().max() <= kv_quant.CODE_MAX[bits]
    scale = kv.scales.to(torch.float64).repeat_interleave(group, dim=-1)
    error = (x.to(torch.float64) - dequantize_kv(kv, torch.float64)).abs()
    assert (error <= scale / 2).all(), f"worst error / scale = {(error / scale.clamp_min(1e-300)).max():.6f}"
    # in the input dtype the bound holds up to that dtype's rounding of the result
    rounding = torch.finfo(x.dtype).eps * x.to(torch.float64).abs()
    assert ((x.to(torch.float64) - dequantize_kv(kv).to(torch.float64)).abs() <= scale / 2 + rounding).all()


def test_nibbles_round_trip_every_code():
    codes = torch.arange(-8, 8, dtype=torch.int8).repeat(2).view(2, 16)
    packed = kv_quant.pack_nibbles(codes)
    assert packed.shape == (2, 8) and packed.dtype == torch.uint8
    assert int(packed[0, 0]) == (-8 & 0xF) | ((-7 & 0xF) << 4)  # element 0 low nibble, element 1 high
    assert torch.equal(kv_quant.unpack_nibbles(packed), codes)


def test_worked_example_bytes_per_row():
    """d = 128, groups of 32, fp16 scales: a row of 256 bytes takes 128 + 8 bytes in 8 bits and 64 + 8 in 4."""
    x = torch.randn(1, 1, 4, 128, dtype=torch.float16)
    sizes = {bits: (lambda kv: kv.codes[0, 0, 0].numel() * kv.codes.element_size()
                    + kv.scales[0, 0, 0].numel() * kv.scales.element_size())(quantize_kv(x, bits, 32))
             for bits in (8, 4)}
    print(f"bytes per 128-element fp16 row: 256 -> {sizes[8]} (8-bit), {sizes[4]} (4-bit)")
    assert sizes == {8: 136, 4: 72}


def test_scale_is_rounded_up_so_no_code_clips():
    """max |x| / 127 rounded to fp16 may round down; the stored scale must not, or the largest element clips."""
    x = torch.full((1, 1, 1, 32), 1.0, dtype=torch.float16)
    x[..., 0] = 1000.0
    kv = quantize_kv(x, bits=8, group_size=32)
    assert kv.scales.to(torch.float64).item() * 127 >= 1000.0
    assert abs(dequantize_kv(kv, torch.float64)[..., 0].item() - 1000.0) <= kv.scales.double().item() / 2


# ---- quantized_decode ------------------------------------------------------------------------------

@st.composite
def quantized_decode_cases(draw):
    group = draw(st.sampled_from([1, 2, 4]))
    kv_heads = draw(st.integers(1, max(1, 4 // group)))
    head_dim = draw(st.sampled_from([16, 32, 48, 64]))
    return dict(
        batch=draw(st.integers(1, max(1, 4 // (group * kv_heads)))), kv_heads=kv_heads, group=group,
        q_len=draw(st.sampled_from([1, 1, 2, 4])), kv_len=draw(st.integers(0, 80)), head_dim=head_dim,
        causal=draw(st.booleans()), num_splits=draw(st.sampled_from([None, 1, 3, 8])),
        dtype=draw(st.sampled_from(low_precision_dtypes())), logit_scale=draw(st.sampled_from([1.0, 12.0])),
        k_bits=draw(st.sampled_from([8, 4])), v_bits=draw(st.sampled_from([8, 4])),
        k_group=draw(st.sampled_from(divisor_groups(head_dim))),
        v_group=draw(st.sampled_from(divisor_groups(head_dim))),
        seed=draw(st.integers(0, 2**16)))


def make_quantized(case):
    gen = torch.Generator().manual_seed(case["seed"])
    b, hkv, d = case["batch"], case["kv_heads"], case["head_dim"]
    q = torch.randn(b, hkv * case["group"], case["q_len"], d, generator=gen) * case["logit_scale"]
    k, v = (torch.randn(b, hkv, case["kv_len"], d, generator=gen).to(DEVICE, case["dtype"]) for _ in range(2))
    return (q.to(DEVICE, case["dtype"]), quantize_kv(k, case["k_bits"], case["k_group"]),
            quantize_kv(v, case["v_bits"], case["v_group"]))


@kernel_settings(15)
@given(case=quantized_decode_cases())
def test_quantized_decode_matches_reference_on_dequantised_kv(case):
    q, k, v = make_quantized(case)
    dtype, causal = case["dtype"], case["causal"]
    out, lse_out = poisoned(q.shape, dtype), poisoned(q.shape[:3], torch.float32)
    o, lse = kv_quant.quantized_decode(q, k, v, num_splits=case["num_splits"], causal=causal, return_lse=True,
                                       out=out, lse_out=lse_out)
    assert o is out and lse is lse_out
    k64, v64 = dequantize_kv(k, torch.float64), dequantize_kv(v, torch.float64)
    o64, lse64 = reference.attention(q, k64, v64, causal=causal)
    # the peer: PyTorch math in q's dtype over K/V dequantised into that dtype, as the kernel's tiles are
    o_peer, lse_peer = reference.attention(q, dequantize_kv(k, dtype), dequantize_kv(v, dtype), causal=causal,
                                           dtype=dtype)
    check_close("quantized_decode O", o, o64, o_peer, dtype)
    check_close("quantized_decode LSE", lse, lse64, lse_peer, dtype)


@pytest.mark.parametrize("num_splits", [1, 4])
def test_launch_configs_are_what_runs(num_splits):
    case = dict(batch=1, kv_heads=2, group=2, q_len=1, kv_len=40, head_dim=32, dtype=torch.float16,
                logit_scale=1.0, k_bits=4, v_bits=8, k_group=16, v_group=32, seed=0)
    q, k, v = make_quantized(case)
    configs = kv_quant.launch_configs(q, k, v, num_splits=num_splits)
    launched = []
    kv_quant.quantized_decode(q, k, v, num_splits=num_splits, launched=launched)
    assert_recorded_as_reported(launched, configs)
    assert configs[0].kernel == "quant_decode_split" and configs[0].grid == (2, 1, num_splits)


@pytest.mark.parametrize("call, message", [
    (lambda x: quantize_kv(x, bits=3), "bits = 3"),
    (lambda x: quantize_kv(x, group_size=24), "group_size = 24"),
    (lambda x: quantize_kv(x[..., :15], bits=4, group_size=1), "odd"),
    (lambda x: quantize_kv(x[..., :24], group_size=12), "group_size = 12: expected a power of two"),
    (lambda x: quantize_kv(x.double()), "float16, bfloat16 or float32"),
    (lambda x: quantize_kv(x, scale_dtype=torch.bfloat16), "scale_dtype"),
])
def test_bad_quantisation_input_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call(torch.randn(1, 1, 4, 32))


def _good():
    q = torch.randn(1, 2, 1, 32, device=DEVICE)
    kv = quantize_kv(torch.randn(1, 1, 8, 32, device=DEVICE))
    return q, kv, kv


@pytest.mark.parametrize("mutate, message", [
    (lambda q, k, v: (q, k.codes, v), "expected a QuantizedKV"),
    (lambda q, k, v: (q, k, quantize_kv(torch.randn(1, 1, 9, 32, device=DEVICE))), "expected one shape"),
    (lambda q, k, v: (q[..., :16], k, v), "does not match q"),
    (lambda q, k, v: (q, QuantizedKV(k.codes[..., :16], k.scales, 8, 32, k.dtype), v), "k.codes"),
])
def test_bad_decode_input_raises_value_error(mutate, message):
    with pytest.raises(ValueError, match=message):
        kv_quant.quantized_decode(*mutate(*_good()))
