"""flash_decode against the float64 reference: property tests over shapes, GQA ratios, causal, splits
(including more splits than key blocks) and large logits; the split heuristic's worked examples; the
launch configs against what is launched; bad input."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from kernel_checks import (DEVICE, assert_launched_as_reported, assert_recorded_as_reported, check_close,
                           kernel_settings, low_precision_dtypes, poisoned, record_launches)
from kernels import flash_decoding as fd
from kernels import reference


@st.composite
def decode_cases(draw):
    """Shapes small enough for the interpreter: B x Hq <= 4, Nk 0..80 (empty, one partial tile, several)."""
    group = draw(st.sampled_from([1, 2, 4]))
    kv_heads = draw(st.integers(1, max(1, 4 // group)))
    return dict(
        batch=draw(st.integers(1, max(1, 4 // (group * kv_heads)))), kv_heads=kv_heads, group=group,
        q_len=draw(st.sampled_from([1, 1, 2, 3, 5])), kv_len=draw(st.integers(0, 80)),
        head_dim=draw(st.sampled_from([8, 16, 24, 40, 64])), causal=draw(st.booleans()),
        num_splits=draw(st.sampled_from([None, 1, 2, 3, 8])), dtype=draw(st.sampled_from(low_precision_dtypes())),
        logit_scale=draw(st.sampled_from([1.0, 12.0])), kv_layout=draw(st.sampled_from(["bhnd", "bnhd"])),
        seed=draw(st.integers(0, 2**16)))


def make_inputs(batch, kv_heads, group, q_len, kv_len, head_dim, dtype, logit_scale, kv_layout, seed, **_):
    """q [B, Hq, Nq, D] scaled by logit_scale (large logits), k and v [B, Hkv, Nk, D], the latter as a
    transposed view of [B, Nk, Hkv, D] for kv_layout "bnhd" (non-contiguous strides)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, kv_heads * group, q_len, head_dim, generator=gen) * logit_scale
    kv = [torch.randn(batch, kv_len, kv_heads, head_dim, generator=gen) for _ in range(2)]
    k, v = (x.transpose(1, 2) if kv_layout == "bnhd" else x.transpose(1, 2).contiguous() for x in kv)
    return q.to(DEVICE, dtype), k.to(DEVICE, dtype), v.to(DEVICE, dtype)


def check_against_reference(name, out, lse, q, k, v, causal, dtype):
    o64, lse64 = reference.attention(q, k, v, causal=causal)
    o_peer, lse_peer = reference.attention(q, k, v, causal=causal, dtype=dtype)
    return check_close(f"{name} O", out, o64, o_peer, dtype), check_close(f"{name} LSE", lse, lse64, lse_peer, dtype)


@kernel_settings(15)
@given(case=decode_cases())
def test_flash_decode_matches_reference(case):
    q, k, v = make_inputs(**case)
    out, lse_out = poisoned(q.shape, q.dtype), poisoned(q.shape[:3], torch.float32)
    o, lse = fd.flash_decode(q, k, v, num_splits=case["num_splits"], causal=case["causal"], return_lse=True,
                             out=out, lse_out=lse_out)
    assert o is out and lse is lse_out
    check_against_reference("flash_decode", o, lse, q, k, v, case["causal"], case["dtype"])


@pytest.mark.parametrize("dtype", low_precision_dtypes(), ids=str)
def test_more_splits_than_key_blocks(dtype):
    """Eight splits over 20 keys: the splits past the keys are empty (LSE -inf) and weigh nothing."""
    q, k, v = make_inputs(2, 1, 2, 1, 20, 32, dtype, 1.0, "bhnd", seed=3)
    split, combine = fd.launch_configs(q, k, v, num_splits=8)
    assert fd.keys_per_split(20, 8, split.block_n) * 7 >= 20  # at least the last split starts past the keys
    o, lse = fd.flash_decode(q, k, v, num_splits=8, return_lse=True, out=poisoned(q.shape, dtype))
    check_against_reference("8 splits", o, lse, q, k, v, False, dtype)


def test_rows_that_see_no_key_give_zero_and_minus_inf():
    """Causal with Nq > Nk: query i sees keys j <= i + Nk - Nq, so the first Nq - Nk queries see none."""
    q, k, v = make_inputs(1, 2, 2, 5, 2, 16, torch.float32, 1.0, "bhnd", seed=5)
    o, lse = fd.flash_decode(q, k, v, causal=True, num_splits=2, return_lse=True,
                             out=poisoned(q.shape, q.dtype), lse_out=poisoned(q.shape[:3], torch.float32))
    assert torch.equal(o[:, :, :3].cpu(), torch.zeros_like(o[:, :, :3].cpu()))
    assert torch.isneginf(lse[:, :, :3]).all() and torch.isfinite(lse[:, :, 3:]).all()


def test_empty_cache_gives_zero_and_minus_inf():
    q, k, v = make_inputs(2, 1, 1, 1, 0, 16, torch.float16, 1.0, "bhnd", seed=0)
    o, lse = fd.flash_decode(q, k, v, return_lse=True, out=poisoned(q.shape, q.dtype))
    assert not o.isnan().any() and (o == 0).all() and torch.isneginf(lse).all()


# ---- the split heuristic --------------------------------------------------------------------------

def test_split_heuristic_worked_examples():
    """FlashAttention-2's own example (flash_api.cpp): batch x heads = 48 on 108 SMs: 2 splits (efficiency
    0.89) beat 3 (0.67); more splits would reach 1.0, but 0.89 is within 85% of it. And the H100 decode
    target: B = 8, Hkv = 8 (64 programs) on 132 SMs x 2 slots takes 4 splits (256 / 264 = 0.97 of a wave);
    B = 64 (512 programs) already fills the GPU: one split."""
    assert fd.choose_num_splits(48, 1, 32768, 108, ctas_per_sm=1) == 2
    h100 = [fd.choose_num_splits(batch, 8, 32768, fd.H100_SM_COUNT) for batch in (1, 8, 16, 32, 64)]
    print(f"H100, Hkv 8, 32K keys, d 128: splits for B = 1, 8, 16, 32, 64 -> {h100}")
    assert h100[1] == 4 and h100[-1] == 1


def test_split_heuristic_never_exceeds_key_blocks():
    assert fd.choose_num_splits(1, 1, 100, 132, block_n=64) == 2
    assert fd.choose_num_splits(1, 1, 64, 132, block_n=64) == 1
    assert fd.choose_num_splits(1, 1, 0, 132) == 1


@pytest.mark.parametrize("bad, message", [(dict(batch=0), "batch = 0"), (dict(sm_count=0), "sm_count = 0"),
                                          (dict(kv_len=-1), "kv_len = -1")])
def test_split_heuristic_rejects_bad_counts(bad, message):
    args = dict(batch=1, kv_heads=1, kv_len=10, sm_count=132) | bad
    with pytest.raises(ValueError, match=message):
        fd.choose_num_splits(**args)


# ---- launch configs are what runs ------------------------------------------------------------------

@pytest.mark.parametrize("num_splits", [None, 1, 3])
def test_launch_configs_are_what_runs(monkeypatch, num_splits):
    q, k, v = make_inputs(1, 2, 4, 5, 50, 48, torch.float16, 1.0, "bhnd", seed=1)
    launches = record_launches(monkeypatch, fd, "decode_split", "decode_combine")
    configs = fd.launch_configs(q, k, v, num_splits=num_splits)
    launched = []
    fd.flash_decode(q, k, v, num_splits=num_splits, launched=launched)
    assert_launched_as_reported(launches, configs, {"decode_combine": ("BLOCK_M", "BLOCK_S")})
    assert_recorded_as_reported(launched, configs)
    split = configs[0]
    assert split.grid[0] == 2  # one program per (batch, kv head): each K/V tile is read once for its 4 q heads
    assert split.grid[1] == math.ceil(4 * 5 / split.block_m)


def test_launch_configs_accept_meta_tensors():
    """memsim can ask for the H100 configs of a shape without allocating it."""
    q = torch.empty(8, 32, 1, 128, dtype=torch.bfloat16, device="meta")
    k = torch.empty(8, 8, 32768, 128, dtype=torch.bfloat16, device="meta")
    split, combine = fd.launch_configs(q, k, k, sm_count=132)
    assert split.grid[0] == 64 and combine.grid == (8 * 32,)


# ---- bad input -------------------------------------------------------------------------------------

def _good():
    return make_inputs(1, 2, 2, 1, 10, 16, torch.float32, 1.0, "bhnd", seed=0)


@pytest.mark.parametrize("mutate, message", [
    (lambda q, k, v: (q[0], k, v), "expected 4 dims"),
    (lambda q, k, v: (q.double(), k, v), "q.dtype"),
    (lambda q, k, v: (q, k.half(), v.half()), "differs from q dtype"),
    (lambda q, k, v: (q, k, v[:, :, :5]), "must match"),
    (lambda q, k, v: (q[:, :3], k, v), "multiple of kv heads"),
    (lambda q, k, v: (q[..., :8], k, v), "does not match q"),
])
def test_bad_inputs_raise_value_error(mutate, message):
    with pytest.raises(ValueError, match=message):
        fd.flash_decode(*mutate(*_good()))


@pytest.mark.parametrize("keywords, message", [
    (dict(num_splits=0), "num_splits = 0"),
    (dict(out=torch.empty(1)), "out is"),
    (dict(lse_out=torch.empty(1, 4, 1, dtype=torch.float16)), "lse_out is"),
])
def test_bad_keywords_raise_value_error(keywords, message):
    keywords = {k: (t.to(DEVICE) if isinstance(t, torch.Tensor) else t) for k, t in keywords.items()}
    with pytest.raises(ValueError, match=message):
        fd.flash_decode(*_good(), **keywords)
