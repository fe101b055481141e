"""kernels.linear against the float64 reference: non-causal (state, then output) and causal (chunked scan)."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from kernel_checks import (DEVICE, assert_launched_as_reported, assert_recorded_as_reported, check_close, expand_kv,
                           kernel_settings, linear_inputs, linear_problems, poisoned, record_launches)

import kernels.lightning
import kernels.linear
from kernels import reference
from kernels.linear import launch_configs, linear_attention, recent_launches, share_keys
from memsim import AttentionShape
from memsim.algorithms.linear import state_splits
from memsim.hardware import load_gpu


@kernel_settings(15)
@given(problem=linear_problems(), causal=st.booleans(), chunk=st.sampled_from([None, 16, 32]))
def test_matches_reference(problem, causal, chunk):
    q, k, v = linear_inputs(**problem)
    dtype, heads = problem["dtype"], problem["q_heads"]
    out = poisoned(q.shape, dtype)
    result = linear_attention(q, k, v, causal=causal, chunk_size=chunk if causal else None, out=out)
    assert result is out
    ke, ve = expand_kv(k, heads), expand_kv(v, heads)
    ref = reference.linear_attention(q, ke, ve, causal=causal)
    peer = reference.linear_attention(q, ke, ve, causal=causal, dtype=dtype)
    check_close("linear o", out, ref, peer, dtype)


def test_worked_example_by_hand():
    """d = 1, q = (1, 2), k = (3, 4), v = (5, 6): causal o = (1*3*5, 2*3*5 + 2*4*6) = (15, 78);
    non-causal o_i = q_i (3*5 + 4*6) = (39, 78)."""
    q, k, v = (torch.tensor(x, dtype=torch.float32, device=DEVICE).view(1, 1, 2, 1)
               for x in ([1.0, 2.0], [3.0, 4.0], [5.0, 6.0]))
    causal = linear_attention(q, k, v, causal=True).flatten().tolist()
    full = linear_attention(q, k, v).flatten().tolist()
    print(f"causal {causal}, non-causal {full}")
    assert causal == [15.0, 78.0] and full == [39.0, 78.0]


def test_non_causal_is_causal_plus_the_strict_upper_triangle():
    """The two paths (state/output kernels and the scan) agree: reversing the sequence turns the causal sum into
    the anti-causal one, and causal + anti-causal - diagonal = non-causal."""
    q, k, v = linear_inputs(1, 2, 1, 37, 24, torch.float32, 1.0, seed=3)
    flip = lambda x: x.flip(2)
    causal = linear_attention(q, k, v, causal=True)
    anti = flip(linear_attention(flip(q), flip(k), flip(v), causal=True))
    diagonal = (q * k).sum(-1, keepdim=True) * v
    full = linear_attention(q, k, v)
    assert torch.allclose(causal + anti - diagonal, full, rtol=1e-4, atol=1e-4)


def test_key_splits_fill_an_h100():
    """B = 1, 8 kv heads, N = 65536 in key tiles of 64 (1024 tiles), d = 128 in one value split: 8 programs for
    132 SMs want 17 key splits; 61 tiles each covers the 1024 in 17 splits (the last one 48 tiles)."""
    splits, per_split = share_keys(1024, 8, 132)
    print(f"{splits} key splits of {per_split} tiles -> {8 * splits} programs on 132 SMs")
    assert (splits, per_split) == (17, 61)
    assert share_keys(3, 1, 132) == (3, 1) and share_keys(1024, 256, 132) == (1, 1024)


@given(programs=st.integers(1, 300), key_tiles=st.integers(1, 5000))
def test_memsim_splits_the_keys_as_the_kernel_does(programs, key_tiles):
    """memsim's state kernel (memsim.algorithms.linear.state_splits) takes the kernel's key splits, rounding included."""
    shape = AttentionShape(batch=1, q_heads=programs, q_len=64 * key_tiles, head_dim=64)  # one value split at d = 64
    assert state_splits(load_gpu("H100-SXM5-80GB"), shape, 64) == share_keys(key_tiles, programs, 132)[0]


@pytest.mark.parametrize("causal, shape", [
    (False, (2, 4, 2, 40, 40)),  # two value splits
    (False, (1, 2, 1, 40, 16)),  # one (batch, kv head) program: three key splits adding with atomics
    (True, (2, 4, 2, 40, 40)),
])
def test_reported_configs_are_the_launched_ones(monkeypatch, causal, shape):
    q, k, v = linear_inputs(*shape, torch.float16, 1.0, seed=5)
    if causal:  # the causal path is Lightning's scan without decay: one launch, its BLOCK is block_m and block_n
        launches = record_launches(monkeypatch, kernels.lightning, "lightning_scan_kernel")
    else:
        launches = record_launches(monkeypatch, kernels.linear, "linear_state_kernel", "linear_output_kernel")
    linear_attention(q, k, v, causal=causal)
    configs = launch_configs(q, k, v, causal=causal)
    print([config.as_dict() for config in configs])
    assert_launched_as_reported(launches, configs, {"lightning_scan_kernel": ("BLOCK", "BLOCK")})
    assert_recorded_as_reported(recent_launches(), configs)


def test_non_contiguous_out_is_written():
    q, k, v = linear_inputs(1, 2, 2, 20, 16, torch.float32, 1.0, seed=7)
    out = poisoned((1, 20, 2, 16), torch.float32).transpose(1, 2)
    linear_attention(q, k, v, out=out)
    ref = reference.linear_attention(q, k, v)
    check_close("linear o", out, ref, reference.linear_attention(q, k, v, dtype=torch.float32), torch.float32)


@pytest.mark.parametrize("change, message", [
    (lambda q, k, v: (q[0], k, v), "4 dims"),
    (lambda q, k, v: (q, k[:, :, :5], v[:, :, :5]), "does not fit"),
    (lambda q, k, v: (q, k, v.double()), "dtype"),
    (lambda q, k, v: (q[:, :3], k[:, :2], v[:, :2]), "multiple"),
    (lambda q, k, v: (q, k, v[..., :4]), "value dim"),
])
def test_bad_inputs_raise(change, message):
    q, k, v = linear_inputs(1, 4, 2, 8, 8, torch.float32, 1.0, seed=0)
    with pytest.raises(ValueError, match=message):
        linear_attention(*change(q, k, v))


def test_bad_chunk_and_out_raise():
    q, k, v = linear_inputs(1, 1, 1, 8, 8, torch.float32, 1.0, seed=0)
    with pytest.raises(ValueError, match="chunk_size = 24"):
        linear_attention(q, k, v, causal=True, chunk_size=24)
    with pytest.raises(ValueError, match="causal=True only"):
        linear_attention(q, k, v, chunk_size=16)
    with pytest.raises(ValueError, match="out is"):
        linear_attention(q, k, v, out=poisoned(q.shape, torch.float16))
