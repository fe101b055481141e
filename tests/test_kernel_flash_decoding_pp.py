"""flash_decode_pp (FlashDecoding++'s unified maximum) against the float64 reference, on the fast path
(every score within the window around phi) and on the recompute path (large logits, a phi far from the
scores, overflowing values); the rows it reports as recomputed are the rows that left the window."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from kernel_checks import (DEVICE, assert_recorded_as_reported, check_close, kernel_settings, low_precision_dtypes,
                           poisoned)
from kernels import flash_decoding_pp as fdpp
from kernels import reference


@st.composite
def unified_max_cases(draw):
    group = draw(st.sampled_from([1, 2, 4]))
    kv_heads = draw(st.integers(1, max(1, 4 // group)))
    return dict(
        batch=draw(st.integers(1, max(1, 4 // (group * kv_heads)))), kv_heads=kv_heads, group=group,
        q_len=draw(st.sampled_from([1, 1, 2, 3])), kv_len=draw(st.integers(0, 80)),
        head_dim=draw(st.sampled_from([8, 16, 24, 40, 64])), causal=draw(st.booleans()),
        num_splits=draw(st.sampled_from([None, 1, 2, 5])), dtype=draw(st.sampled_from(low_precision_dtypes())),
        logit_scale=draw(st.sampled_from([1.0, 1.0, 12.0, 40.0])), phi=draw(st.sampled_from([0.0, 0.0, 5.0, 60.0])),
        threshold=draw(st.sampled_from([40.0, 40.0, 10.0])), seed=draw(st.integers(0, 2**16)))


def make_inputs(batch, kv_heads, group, q_len, kv_len, head_dim, dtype, logit_scale, seed, **_):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, kv_heads * group, q_len, head_dim, generator=gen) * logit_scale
    k, v = (torch.randn(batch, kv_heads, kv_len, head_dim, generator=gen) for _ in range(2))
    return q.to(DEVICE, dtype), k.to(DEVICE, dtype), v.to(DEVICE, dtype)


def largest_scores(q, k, causal):
    """[B, Hq, Nq] float64: each row's largest visible scaled score, -inf for a row that sees no key."""
    if k.shape[2] == 0:
        return torch.full(q.shape[:3], float("-inf"), dtype=torch.float64)
    q64, k64 = q.double().cpu(), k.double().cpu().repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scores = (q64 @ k64.transpose(-1, -2)) * q.shape[-1] ** -0.5
    mask = reference.visible(q.shape[2], k.shape[2], causal=causal)
    return scores.masked_fill(~mask, float("-inf")).amax(dim=-1)


def check_recomputed_rows(recomputed, top, phi, threshold):
    """Rows clearly outside [phi - threshold, phi + threshold] must be flagged, rows clearly inside must not
    (a margin absorbs the kernel's fp32 scores against these fp64 ones); empty rows never are."""
    recomputed, margin = recomputed.cpu(), 1e-3 * (top.abs().nan_to_num(posinf=0, neginf=0) + 1)
    seen = torch.isfinite(top)
    outside = seen & ((top > phi + threshold + margin) | (top < phi - threshold - margin))
    inside = seen & (top < phi + threshold - margin) & (top > phi - threshold + margin)
    assert (recomputed >= outside).all(), "a row outside the window was not recomputed"
    assert not (recomputed & inside).any(), "a row inside the window was recomputed"
    assert not (recomputed & ~seen).any(), "an empty row was recomputed"


# Overflowing rows make the interpreter's numpy warn (exp overflow, inf x 0) before the combine flags them.
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@kernel_settings(15)
@given(case=unified_max_cases())
def test_unified_max_matches_reference(case):
    q, k, v = make_inputs(**case)
    dtype, causal = case["dtype"], case["causal"]
    out, lse_out = poisoned(q.shape, dtype), poisoned(q.shape[:3], torch.float32)
    result = fdpp.flash_decode_pp(q, k, v, phi=case["phi"], threshold=case["threshold"],
                                  num_splits=case["num_splits"], causal=causal, out=out, lse_out=lse_out)
    assert result.out is out and result.lse is lse_out and result.recomputed.shape == q.shape[:3]
    o64, lse64 = reference.attention(q, k, v, causal=causal)
    o_peer, lse_peer = reference.attention(q, k, v, causal=causal, dtype=dtype)
    check_close("unified max O", result.out, o64, o_peer, dtype)
    check_close("unified max LSE", result.lse, lse64, lse_peer, dtype)
    check_recomputed_rows(result.recomputed, largest_scores(q, k, causal), case["phi"], case["threshold"])


@pytest.mark.parametrize("dtype", low_precision_dtypes(), ids=str)
def test_fast_path_launches_no_recompute(dtype):
    """Ordinary logits (|s| of a few units) sit inside phi = 0 +- 40: two launches, nothing recomputed."""
    q, k, v = make_inputs(2, 2, 2, 1, 70, 64, dtype, 1.0, seed=11)
    launched = []
    result = fdpp.flash_decode_pp(q, k, v, num_splits=3, launched=launched, out=poisoned(q.shape, dtype))
    assert not result.recomputed.any()
    assert [c.kernel for c in launched] == ["unified_max_split", "unified_max_combine"]
    o64, lse64 = reference.attention(q, k, v)
    peer = reference.attention(q, k, v, dtype=dtype)
    check_close("fast path O", result.out, o64, peer[0], dtype)
    check_close("fast path LSE", result.lse, lse64, peer[1], dtype)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("dtype", low_precision_dtypes(), ids=str)
def test_one_split_normalises_in_its_own_launch(dtype):
    """With one split there is nothing to sum: unified_max_single alone writes O, LSE and the flags. Entry 1's
    logits of about 100 leave the window: its rows are flagged there and recomputed, entry 0's are not."""
    q, k, v = make_inputs(2, 2, 2, 1, 70, 64, dtype, 1.0, seed=13)
    q[1] *= 60.0
    launched = []
    result = fdpp.flash_decode_pp(q, k, v, num_splits=1, launched=launched, out=poisoned(q.shape, dtype),
                                  lse_out=poisoned(q.shape[:3], torch.float32))
    assert launched[0].kernel == "unified_max_single" and "unified_max_combine" not in [c.kernel for c in launched]
    assert result.recomputed[1].all() and not result.recomputed[0].any()
    o64, lse64 = reference.attention(q, k, v)
    peer = reference.attention(q, k, v, dtype=dtype)
    check_close("one split O", result.out, o64, peer[0], dtype)
    check_close("one split LSE", result.lse, lse64, peer[1], dtype)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_large_logits_recompute_exactly_the_rows_that_overflow():
    """Batch entry 1 gets logits of about 100: its rows leave the window and flash_decode recomputes them;
    entry 0 stays on the fast path."""
    q, k, v = make_inputs(2, 1, 2, 1, 40, 32, torch.float32, 1.0, seed=2)
    q[1] *= 60.0
    launched = []
    result = fdpp.flash_decode_pp(q, k, v, num_splits=2, launched=launched)
    top = largest_scores(q, k, False)
    print(f"largest scores per row: {top.flatten().tolist()}, recomputed {result.recomputed.flatten().tolist()}")
    assert result.recomputed[1].all() and not result.recomputed[0].any()
    # The recompute is flash_decode: its split count (and so whether a combine follows) is the device's choice.
    kernels = [c.kernel for c in launched]
    assert kernels[:3] == ["unified_max_split", "unified_max_combine", "decode_split"]
    assert kernels[3:] in ([], ["decode_combine"])
    o64, lse64 = reference.attention(q, k, v)
    peer = reference.attention(q, k, v, dtype=torch.float32)
    check_close("recomputed O", result.out, o64, peer[0], torch.float32)
    check_close("recomputed LSE", result.lse, lse64, peer[1], torch.float32)


def test_phi_far_above_the_scores_recomputes_every_row():
    """phi = 100 with scores near 0: every exp(s - phi) would underflow; all rows are recomputed."""
    q, k, v = make_inputs(1, 1, 2, 2, 30, 16, torch.float16, 1.0, seed=4)
    result = fdpp.flash_decode_pp(q, k, v, phi=100.0)
    assert result.recomputed.all()
    o64, _ = reference.attention(q, k, v)
    check_close("underflow O", result.out, o64, reference.attention(q, k, v, dtype=torch.float16)[0], torch.float16)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_overflowing_values_are_caught_even_inside_the_window():
    """Scores near 30 are inside 0 +- 40, but exp(30) x values of 1e30 overflow fp32: the row is flagged."""
    q, k, v = make_inputs(1, 1, 1, 1, 16, 16, torch.float32, 1.0, seed=6)
    k = q.expand(1, 1, 16, 16) * (30.0 / (q.norm() ** 2 * 16 ** -0.5))  # every score exactly 30
    v = v * 1e30
    result = fdpp.flash_decode_pp(q, k, v)
    assert result.recomputed.all()
    o64, _ = reference.attention(q, k, v)
    check_close("overflow O", result.out, o64, reference.attention(q, k, v, dtype=torch.float32)[0], torch.float32)


def test_rows_that_see_no_key_are_empty_not_recomputed():
    q, k, v = make_inputs(1, 1, 2, 4, 2, 16, torch.float32, 1.0, seed=8)
    result = fdpp.flash_decode_pp(q, k, v, causal=True, out=poisoned(q.shape, q.dtype))
    assert not result.recomputed.any()
    assert (result.out[:, :, :2] == 0).all() and torch.isneginf(result.lse[:, :, :2]).all()


@pytest.mark.parametrize("num_splits", [1, 4])
def test_launch_configs_are_what_runs(num_splits):
    q, k, v = make_inputs(1, 2, 2, 2, 50, 24, torch.float16, 1.0, seed=9)
    configs = fdpp.launch_configs(q, k, v, num_splits=num_splits)
    launched = []
    fdpp.flash_decode_pp(q, k, v, num_splits=num_splits, launched=launched)
    assert_recorded_as_reported(launched, configs)


@pytest.mark.parametrize("keywords, message", [
    (dict(threshold=0.0), "threshold = 0.0"), (dict(threshold=100.0), "threshold = 100.0"),
    (dict(phi=float("inf")), "phi = inf"), (dict(num_splits=0), "num_splits = 0"),
])
def test_bad_window_raises_value_error(keywords, message):
    q, k, v = make_inputs(1, 1, 1, 1, 4, 16, torch.float32, 1.0, seed=0)
    with pytest.raises(ValueError, match=message):
        fdpp.flash_decode_pp(q, k, v, **keywords)
