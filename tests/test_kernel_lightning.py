"""kernels.lightning (Lightning Attention-2's block scan) against the float64 reference, with and without decay."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from kernel_checks import (DEVICE, assert_launched_as_reported, assert_recorded_as_reported, check_close, expand_kv,
                           kernel_settings, linear_inputs, linear_problems, low_precision_dtypes, poisoned,
                           record_launches)

import kernels.lightning
from kernels import reference
from kernels.lightning import launch_configs, lightning_attention, recent_launches

def reference_pair(q, k, v, decay, dtype):
    """(float64 reference, same math in dtype) with k, v expanded to q's heads."""
    k, v = expand_kv(k, q.shape[1]), expand_kv(v, q.shape[1])
    return (reference.linear_attention(q, k, v, causal=True, decay=decay),
            reference.linear_attention(q, k, v, causal=True, decay=decay, dtype=dtype))


# Rates per head: none, zero (decay present but 1), slow (exp(-0.01) per step), up to fast (exp(-5): gone after
# a few rows, and exp(-5 * 64) underflows to 0 across a block).
rates = st.one_of(st.none(), st.lists(st.sampled_from([0.0, 0.01, 0.1, 0.5, 5.0]), min_size=4, max_size=4))


@kernel_settings(15)
@given(problem=linear_problems(), rate_list=rates, block=st.sampled_from([None, 16, 32]))
def test_matches_reference(problem, rate_list, block):
    q, k, v = linear_inputs(**problem)
    dtype = problem["dtype"]
    decay = None if rate_list is None else torch.tensor(rate_list[:problem["q_heads"]], device=DEVICE)
    out = poisoned(q.shape, dtype)
    assert lightning_attention(q, k, v, decay=decay, block_size=block, out=out) is out
    ref, peer = reference_pair(q, k, v, decay, dtype)
    check_close("lightning o", out, ref, peer, dtype)


def test_worked_example_by_hand():
    """d = 1, q = (1, 2), k = (3, 4), v = (5, 6), rate s = ln 2 (weight 1/2 per step):
    o = (1*3*5, 2*3*5 / 2 + 2*4*6) = (15, 63)."""
    q, k, v = (torch.tensor(x, dtype=torch.float32, device=DEVICE).view(1, 1, 2, 1)
               for x in ([1.0, 2.0], [3.0, 4.0], [5.0, 6.0]))
    o = lightning_attention(q, k, v, decay=torch.tensor([math.log(2.0)], device=DEVICE)).flatten().tolist()
    print(f"o = {o}")
    assert o == pytest.approx([15.0, 63.0], rel=1e-6)


def test_state_crosses_many_blocks():
    """N = 200 over blocks of 16: 13 blocks, the last one short; the state carries the decay across every block."""
    q, k, v = linear_inputs(1, 2, 1, 200, 16, torch.float32, 0.5, seed=11)
    decay = torch.tensor([0.02, 0.0], device=DEVICE)
    out = lightning_attention(q, k, v, decay=decay, block_size=16)
    ref, peer = reference_pair(q, k, v, decay, torch.float32)
    print(f"error ratio {check_close('lightning o', out, ref, peer, torch.float32):.3f}")


@pytest.mark.parametrize("dtype", low_precision_dtypes(), ids=str)
def test_state_keeps_its_low_bits(dtype):
    """Blocks of 16, N = 17. Rows 0-2 put KV[0, 0] = 1 * 1 + 2^-6 * 2^-6 = 1 + 2^-12 and KV[1, 0] = 1 * -1 = -1
    into the state; row 16 reads q = (1, 1, 0, ...) against it: o[16, 0] = 2^-12 exactly. Rounded to fp16 or bf16,
    1 + 2^-12 would be 1 and o 0; as hi + lo 16-bit parts (hi 1, lo 2^-12) the product is exact."""
    q, k, v = (torch.zeros(1, 1, 17, 16, dtype=dtype, device=DEVICE) for _ in range(3))
    k[0, 0, 0, 0], v[0, 0, 0, 0] = 1.0, 1.0
    k[0, 0, 1, 0], v[0, 0, 1, 0] = 2.0 ** -6, 2.0 ** -6
    k[0, 0, 2, 1], v[0, 0, 2, 0] = 1.0, -1.0
    q[0, 0, 16, :2] = 1.0
    out = lightning_attention(q, k, v, block_size=16, out=poisoned(q.shape, dtype))
    expected = torch.zeros(1, 1, 17, 16, dtype=dtype)
    expected[0, 0, 16, 0] = 2.0 ** -12
    print(f"o[16, 0] = {out[0, 0, 16, 0].item()!r} (2^-12 = {2.0 ** -12!r})")
    assert torch.equal(out.cpu(), expected)


@pytest.mark.parametrize("dtype", low_precision_dtypes(), ids=str)
def test_recorded_h100_bf16_case(dtype):
    """The example that failed in bf16 on the H100 (validation/results/h100/kernel-tests-gpu-2026-11-22.log,
    ratio 5.84), in every dtype this device runs: 12 rows in one block of the default size (the state is still
    zero when the block reads it), 4 q heads on 2 kv heads, d = 40 in two value splits, rates 5 and 0.01."""
    q, k, v = linear_inputs(1, 4, 2, 12, 40, dtype, 0.1, seed=6107044)
    decay = torch.tensor([5.0, 0.01, 5.0, 5.0], device=DEVICE)
    out = poisoned(q.shape, dtype)
    lightning_attention(q, k, v, decay=decay, out=out)
    ref, peer = reference_pair(q, k, v, decay, dtype)
    print(f"error ratio {check_close('lightning o', out, ref, peer, dtype):.3f}")


def test_reported_config_is_the_launched_one(monkeypatch):
    """d = 72: value columns in programs of 64, two per (batch, head): grid 2 * 4 * 2 = 16."""
    q, k, v = linear_inputs(2, 4, 2, 40, 72, torch.float16, 1.0, seed=5)
    launches = record_launches(monkeypatch, kernels.lightning, "lightning_scan_kernel")
    decay = torch.full((4,), 0.1, device=DEVICE)
    lightning_attention(q, k, v, decay=decay, block_size=32)
    configs = launch_configs(q, k, v, decay=decay, block_size=32)
    print(configs[0].as_dict())
    assert configs[0].grid == (16,) and configs[0].block_m == configs[0].block_n == 32
    assert_launched_as_reported(launches, configs, {"lightning_scan_kernel": ("BLOCK", "BLOCK")})
    assert_recorded_as_reported(recent_launches(), configs)


@pytest.mark.parametrize("decay, message", [
    ([0.1, -0.1], "s >= 0"),
    ([0.1, float("nan")], "finite"),
    ([0.1], r"expected \[2\]"),
])
def test_bad_decay_raises(decay, message):
    q, k, v = linear_inputs(1, 2, 1, 8, 8, torch.float32, 1.0, seed=0)
    with pytest.raises(ValueError, match=message):
        lightning_attention(q, k, v, decay=torch.tensor(decay, device=DEVICE))


@pytest.mark.parametrize("block", [8, 24, 0])
def test_bad_block_size_raises(block):
    q, k, v = linear_inputs(1, 1, 1, 8, 8, torch.float32, 1.0, seed=0)
    with pytest.raises(ValueError, match=f"block_size = {block}"):
        lightning_attention(q, k, v, block_size=block)


def test_bad_shapes_and_out_raise():
    q, k, v = linear_inputs(1, 2, 1, 8, 8, torch.float32, 1.0, seed=0)
    with pytest.raises(ValueError, match="D = 300"):
        big = torch.zeros(1, 1, 2, 300, device=DEVICE)
        lightning_attention(big, big, big)
    with pytest.raises(ValueError, match="does not fit"):
        lightning_attention(q, k[:, :, :4], v[:, :, :4])
    with pytest.raises(ValueError, match="out is"):
        lightning_attention(q, k, v, out=poisoned((1, 2, 8, 4), torch.float32))
