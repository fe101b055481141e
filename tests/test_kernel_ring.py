"""The ring-attention step, the exact LSE merge and the simulated ring (kernels/ring.py) against the
float64 reference, with outputs poisoned with NaN; their launches against what they report."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from kernel_checks import (ATTENTION_HEAD_DIMS, DEVICE, HEAD_LAYOUTS, LOGIT_SCALES, assert_launched_as_reported,
                           assert_recorded_as_reported, check_close, kernel_settings, low_precision_dtypes, poisoned,
                           record_launches)
from kernels import reference, ring
from kernels.ring import block_bounds, launch_configs, merge_launch_configs, merge_steps, ring_attention, \
    ring_attention_step

def random_tensor(gen, shape, dtype, factor=1.0):
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * factor).to(dtype).to(DEVICE)


@st.composite
def heads_and_dims(draw):
    """(batch, kv heads, group, head dim, dtype, generator) with batch * q heads <= 4."""
    kv_heads, group = draw(st.sampled_from(HEAD_LAYOUTS))
    batch = draw(st.integers(1, max(1, 4 // (kv_heads * group))))
    dtype = draw(st.sampled_from(low_precision_dtypes()))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    return batch, kv_heads, group, draw(st.sampled_from(ATTENTION_HEAD_DIMS)), dtype, gen


@given(heads_and_dims(), st.integers(1, 48), st.integers(1, 48), st.integers(0, 80), st.integers(0, 80),
       st.booleans(), st.booleans(), st.sampled_from(LOGIT_SCALES))
@kernel_settings(20)
def test_step_matches_reference(dims, q_len, kv_len, q_start, k_start, causal, fp32_out, logit_scale):
    """Local queries at q_start.. against one block at k_start..: before, across and after the diagonal."""
    batch, kv_heads, group, head_dim, dtype, gen = dims
    q = random_tensor(gen, (batch, kv_heads * group, q_len, head_dim), dtype, logit_scale)
    k, v = (random_tensor(gen, (batch, kv_heads, kv_len, head_dim), dtype) for _ in range(2))
    out = poisoned(q.shape, torch.float32 if fp32_out else dtype)
    lse_out = poisoned(q.shape[:3], torch.float32)
    o, lse = ring_attention_step(q, k, v, q_start=q_start, k_start=k_start, causal=causal, out=out, lse_out=lse_out)
    assert o is out and lse is lse_out
    positions = dict(causal=causal, q_start=q_start, k_start=k_start)
    o64, lse64 = reference.attention(q, k, v, **positions)
    peer_o, peer_lse = reference.attention(q, k, v, dtype=dtype, **positions)
    check_close("O", o, o64, peer_o, dtype)
    check_close("LSE", lse, lse64, peer_lse, dtype)


@given(st.integers(1, 3), st.integers(1, 40), st.sampled_from(ATTENTION_HEAD_DIMS),
       st.sampled_from(low_precision_dtypes()), st.integers(0, 2**16))
@kernel_settings(10)
def test_merge_matches_reference(heads, rows, head_dim, dtype, seed):
    """Partials with LSE -inf on either side, on both, or on neither (O 0 where LSE is -inf)."""
    gen = torch.Generator().manual_seed(seed)
    o_parts = random_tensor(gen, (2, 1, heads, rows, head_dim), dtype)
    lse_parts = random_tensor(gen, (2, 1, heads, rows), torch.float32, 8.0)
    empty = torch.randint(0, 4, (1, heads, rows), generator=gen).to(DEVICE)  # 1: first empty, 2: second, 3: both
    for side in (0, 1):
        gone = (empty == side + 1) | (empty == 3)
        lse_parts[side].masked_fill_(gone, -math.inf)
        o_parts[side].masked_fill_(gone.unsqueeze(-1), 0.0)
    o_acc, lse_acc = o_parts[0].to(torch.float32).clone(), lse_parts[0].clone()
    merged_o, merged_lse = merge_steps(o_acc, lse_acc, o_parts[1], lse_parts[1])
    assert merged_o is o_acc and merged_lse is lse_acc
    o64, lse64 = reference.merge_partials(o_parts, lse_parts)
    peer_o, peer_lse = reference.merge_partials(o_parts, lse_parts, dtype=dtype)
    check_close("O", merged_o, o64, peer_o, dtype)
    check_close("LSE", merged_lse, lse64, peer_lse, dtype)


def test_merge_ignores_whatever_an_empty_side_holds():
    """A side with LSE -inf weighs nothing even if its O holds NaN; both empty gives O 0, LSE -inf."""
    o_acc = torch.full((1, 1, 3, 16), float("nan"), device=DEVICE)
    lse_acc = torch.full((1, 1, 3), -math.inf, device=DEVICE)
    o = torch.ones(1, 1, 3, 16, device=DEVICE)
    lse = torch.tensor([[[0.5, -math.inf, 2.0]]], device=DEVICE)
    o[0, 0, 1] = float("nan")
    merge_steps(o_acc, lse_acc, o, lse)
    assert torch.equal(o_acc[0, 0, 0].cpu(), torch.ones(16)) and torch.equal(o_acc[0, 0, 1].cpu(), torch.zeros(16))
    assert lse_acc[0, 0, 0].item() == 0.5 and lse_acc[0, 0, 1].item() == -math.inf


@st.composite
def rings(draw):
    batch, kv_heads, group, head_dim, dtype, gen = draw(heads_and_dims())
    length = draw(st.integers(1, 64))
    world = draw(st.integers(1, min(4, length)))
    q = random_tensor(gen, (batch, kv_heads * group, length, head_dim), dtype, draw(st.sampled_from(LOGIT_SCALES)))
    k, v = (random_tensor(gen, (batch, kv_heads, length, head_dim), dtype) for _ in range(2))
    return q, k, v, world, draw(st.booleans()), dtype


@given(rings())
@kernel_settings(15)
def test_ring_equals_full_attention(problem):
    q, k, v, world, causal, dtype = problem
    out, lse_out = poisoned(q.shape, dtype), poisoned(q.shape[:3], torch.float32)
    o, lse = ring_attention(q, k, v, world=world, causal=causal, out=out, lse_out=lse_out)
    assert o is out and lse is lse_out
    o64, lse64 = reference.attention(q, k, v, causal=causal)
    peer_o, peer_lse = reference.attention(q, k, v, causal=causal, dtype=dtype)
    check_close("O", o, o64, peer_o, dtype)
    check_close("LSE", lse, lse64, peer_lse, dtype)


def test_worked_example_causal_ring_of_two():
    """Two ranks, 10 tokens, causal: rank 0 holds positions 0-4; at step 1 it holds the block of rank 1
    (positions 5-9), all in its future: O 0 and LSE -inf for every row, which the merge then ignores."""
    (r0, r1) = block_bounds(10, 2)
    assert (r0, r1) == ((0, 5), (5, 10))
    q, k = torch.randn(1, 1, 10, 16, device=DEVICE), torch.randn(1, 1, 10, 16, device=DEVICE)
    o, lse = ring_attention_step(q[:, :, 0:5], k[:, :, 5:10], k[:, :, 5:10], q_start=0, k_start=5, causal=True,
                                 out=poisoned((1, 1, 5, 16), torch.float32))
    assert torch.all(o == 0) and torch.all(torch.isneginf(lse))
    o, lse = ring_attention_step(q[:, :, 5:10], k[:, :, 0:5], k[:, :, 0:5], q_start=5, k_start=0, causal=True)
    assert torch.isfinite(lse).all()  # rank 1 sees all of rank 0's past
    print("blocks", block_bounds(10, 3), block_bounds(7, 4))
    assert block_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)] and block_bounds(7, 4) == [(0, 2), (2, 4), (4, 6), (6, 7)]


def test_launches_are_the_reported_configs(monkeypatch):
    launches = record_launches(monkeypatch, ring, "ring_step", "ring_merge")
    launched = []
    q, k = torch.randn(1, 2, 21, 24, device=DEVICE), torch.randn(1, 1, 21, 24, device=DEVICE)
    ring_attention(q, k, k, world=2, causal=True, launched=launched)
    blocks = [q[:, :, :11], q[:, :, 11:]]
    step = [launch_configs(b, k[:, :, :11], k[:, :, :11])[0] for b in blocks]
    merge = [merge_launch_configs(q.new_empty(1, 2, b.shape[2], 24))[0] for b in blocks]
    expected = [step[0], step[0], merge[0], step[1], step[1], merge[1]]  # per rank: 2 steps, 1 merge
    assert_launched_as_reported(launches, expected)
    assert_recorded_as_reported(launched, expected)


def test_bad_inputs_are_refused_on_one_line():
    q = torch.randn(1, 2, 6, 16, device=DEVICE)
    with pytest.raises(ValueError, match="world = 7"):
        ring_attention(q, q, q, world=7, causal=False)
    with pytest.raises(ValueError, match="k length = 5"):
        ring_attention(q, q[:, :, :5], q[:, :, :5], world=2, causal=False)
    with pytest.raises(ValueError, match="q_start = -1"):
        ring_attention_step(q, q, q, q_start=-1, k_start=0, causal=True)
    with pytest.raises(ValueError, match="out.dtype"):
        ring_attention_step(q, q, q, q_start=0, k_start=0, causal=True, out=q.new_empty(1, 2, 6, 16, dtype=torch.int32))
    with pytest.raises(ValueError, match="lse_acc is"):
        merge_steps(q.clone(), q.new_zeros(1, 2, 5), q, q.new_zeros(1, 2, 6))
