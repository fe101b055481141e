"""kernels.block_sparse (MoBA) against the float64 reference: the gate, and the kernel given the same block mask.

Gating in low precision can break near-ties differently from float64, so the kernel tests pass the reference's
mask explicitly; the gate has its own test that allows disagreement only at such ties."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from kernel_checks import (DEVICE, assert_launched_as_reported, assert_recorded_as_reported, check_close,
                           kernel_settings, low_precision_dtypes, poisoned, record_launches)

import kernels.block_sparse
from kernels import reference
from kernels.block_sparse import launch_configs, moba_attention, moba_select, recent_launches, tile_blocks

HEAD_DIMS = [1, 8, 16, 24, 33, 64, 96]
BLOCK_SIZES = [1, 3, 8, 16, 17, 32, 40]  # one key per block up to blocks longer than a key step


def inputs(batch, q_heads, kv_heads, n_q, n_k, d, dtype, magnitude, seed):
    """q ~ magnitude * N(0, 1) (logits of about +-magnitude after the D^-0.5 scale), k, v ~ N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    q = magnitude * torch.randn(batch, q_heads, n_q, d, generator=g)
    k = torch.randn(batch, kv_heads, n_k, d, generator=g)
    v = torch.randn(batch, kv_heads, n_k, d, generator=g)
    return [t.to(DEVICE, dtype) for t in (q, k, v)]


@st.composite
def problems(draw):
    kv_heads = draw(st.sampled_from([1, 2]))
    group = draw(st.sampled_from([1, 2] if kv_heads == 2 else [1, 2, 4]))
    n_k = draw(st.one_of(st.integers(1, 16), st.integers(17, 80)))
    # queries: as many as keys (prefill), fewer (the end of the sequence), or more (rows that see no key)
    n_q = draw(st.sampled_from([n_k, max(1, n_k // 3), n_k + 5]))
    return {"batch": draw(st.sampled_from([1, 2])) if kv_heads * group <= 2 else 1, "kv_heads": kv_heads,
            "q_heads": kv_heads * group, "n_q": n_q, "n_k": n_k, "d": draw(st.sampled_from(HEAD_DIMS)),
            "dtype": draw(st.sampled_from(low_precision_dtypes())),
            "magnitude": draw(st.sampled_from([1.0, 4.0, 30.0])),  # 30: logits of +-30 and more
            "seed": draw(st.integers(0, 2 ** 31 - 1))}


def random_mask(q, n_k, block_size, density, seed):
    """Any blocks for any row, the future and empty rows included: [B, H, Nq, num_blocks] bool."""
    g = torch.Generator().manual_seed(seed + 1)
    shape = (*q.shape[:3], math.ceil(n_k / block_size))
    return (torch.rand(shape, generator=g) < density).to(DEVICE)


def check_against_reference(q, k, v, mask, block_size, dtype, out, lse):
    ref, ref_lse = reference.block_sparse_attention(q, k, v, mask, block_size=block_size)
    peer, peer_lse = reference.block_sparse_attention(q, k, v, mask, block_size=block_size, dtype=dtype)
    check_close("moba o", out, ref, peer, dtype)
    check_close("moba lse", lse, ref_lse, peer_lse, dtype)


@kernel_settings(15)
@given(problem=problems(), block_size=st.sampled_from(BLOCK_SIZES), top_k=st.integers(1, 4),
       gated=st.booleans(), density=st.sampled_from([0.0, 0.3, 0.8]))
def test_matches_reference_given_the_mask(problem, block_size, top_k, gated, density):
    q, k, v = inputs(**problem)
    dtype = problem["dtype"]
    mask = reference.moba_block_mask(q, k, block_size=block_size, top_k=top_k).to(DEVICE) if gated else \
        random_mask(q, problem["n_k"], block_size, density, problem["seed"])
    out, lse = poisoned(q.shape, dtype), poisoned(q.shape[:3], torch.float32)
    result = moba_attention(q, k, v, block_size=block_size, top_k=top_k, block_mask=mask, out=out, lse_out=lse,
                            return_lse=True)
    assert result[0] is out and result[1] is lse
    check_against_reference(q, k, v, mask, block_size, dtype, out, lse)


@kernel_settings(10)
@given(problem=problems(), block_size=st.sampled_from(BLOCK_SIZES))
def test_top_k_of_every_block_is_full_causal_attention(problem, block_size):
    q, k, v = inputs(**problem)
    dtype = problem["dtype"]
    every = math.ceil(problem["n_k"] / block_size)
    out, lse = poisoned(q.shape, dtype), poisoned(q.shape[:3], torch.float32)
    moba_attention(q, k, v, block_size=block_size, top_k=every, out=out, lse_out=lse)  # the gate chooses
    ref, ref_lse = reference.attention(q, k, v, causal=True)
    peer, peer_lse = reference.attention(q, k, v, causal=True, dtype=dtype)
    check_close("moba o", out, ref, peer, dtype)
    check_close("moba lse", lse, ref_lse, peer_lse, dtype)


def tie_gap(q, k, block_size, row_mismatch):
    """Largest float64 gate-score gap between the blocks the two masks disagree on, per disagreeing row."""
    group = q.shape[1] // k.shape[1]
    k64 = k.double().cpu().repeat_interleave(group, dim=1)
    blocks = math.ceil(k.shape[2] / block_size)
    means = torch.stack([k64[:, :, b * block_size:(b + 1) * block_size].mean(2) for b in range(blocks)], dim=2)
    gate = q.double().cpu() @ means.transpose(-1, -2)
    gaps = []
    for index, only_ref, only_ours in row_mismatch:
        scores = gate[index]
        gaps.append(max(abs(scores[a] - scores[b]).item() for a in only_ref for b in only_ours))
    return gaps


@kernel_settings(15)
@given(problem=problems(), block_size=st.sampled_from(BLOCK_SIZES), top_k=st.integers(1, 4))
def test_gate_matches_reference_up_to_ties(problem, block_size, top_k):
    q, k, _ = inputs(**problem)
    ours = moba_select(q, k, block_size=block_size, top_k=top_k).cpu()
    ref = reference.moba_block_mask(q, k, block_size=block_size, top_k=top_k)
    assert ours.shape == ref.shape and ours.dtype == torch.bool
    rows = (ours != ref).any(-1).nonzero().tolist()
    mismatch = [(tuple(r), (ref[tuple(r)] & ~ours[tuple(r)]).nonzero().flatten().tolist(),
                 (ours[tuple(r)] & ~ref[tuple(r)]).nonzero().flatten().tolist()) for r in rows]
    assert all(only_ref and only_ours for _, only_ref, only_ours in mismatch), "the masks differ in size"
    assert all(gap <= 1e-3 * problem["magnitude"] for gap in tie_gap(q, k, block_size, mismatch))
    assert (ours.sum(-1) <= top_k).all()


def test_gate_worked_example():
    """Blocks of 2 keys, d = 1, keys (1, 1 | -1, -1 | 3, 3 | 0): block means 1, -1, 3, 0. A positive query keeps its
    own block and the best earlier one (top_k = 2): at position 1 only block 0 exists; at 3 blocks {1, 0}; at 5
    {2, 0}; the negative query at 6 keeps its own block 3 and block 1 (-1 * -1 = 1 is its best score)."""
    k = torch.tensor([1.0, 1.0, -1.0, -1.0, 3.0, 3.0, 0.0], device=DEVICE).view(1, 1, 7, 1)
    q = torch.tensor([1.0] * 6 + [-1.0], device=DEVICE).view(1, 1, 7, 1)
    mask = moba_select(q, k, block_size=2, top_k=2)[0, 0].cpu()
    chosen = [row.nonzero().flatten().tolist() for row in mask]
    print(f"blocks per query: {chosen}")
    assert chosen == [[0], [0], [0, 1], [0, 1], [0, 2], [0, 2], [1, 3]]


def test_tile_lists_are_the_union_of_their_rows():
    """16 keys in 4 blocks of 4, steps of 2 keys, tiles of 4 rows (Nq = 10 at positions 6..15).
    Tile 0 (positions 6..9): rows choose {0, 2}, {2, 1}, {} , {} -> blocks [0, 1, 2]; block 2 holds keys 8..11,
    the last row sits at 9: 2 + 2 + 1 = 5 steps. Tile 1 (10..13): {3}, {} ... -> [3], keys 12, 13: 1 step.
    Tile 2 (14, 15 and two rows of padding): {} -> nothing, 0 steps."""
    rows = [[1, 0, 1, 0], [0, 1, 1, 0], [0] * 4, [0] * 4, [0, 0, 0, 1]] + [[0] * 4] * 5
    mask = torch.tensor(rows, dtype=torch.bool, device=DEVICE).view(1, 1, 10, 4)
    blocks, steps = tile_blocks(mask, block_m=4, block_n=2, block_size=4, k_len=16)
    lists = [blocks[0, 0, t, :int((mask[0, 0, 4 * t:4 * t + 4].any(0)).sum())].tolist() for t in range(3)]
    print(f"blocks per tile: {lists}, steps {steps.flatten().tolist()}")
    assert lists == [[0, 1, 2], [3], []]
    assert steps.flatten().tolist() == [5, 1, 0]


def test_blocks_no_row_chose_are_never_read():
    """K and V are NaN in every block no row chose; a kernel that loaded them would spread NaN through P V."""
    q, k, v = inputs(1, 2, 1, 48, 48, 16, torch.float32, 1.0, seed=2)
    mask = torch.zeros(1, 2, 48, 6, dtype=torch.bool, device=DEVICE)
    mask[..., 0] = True  # every row: block 0 (8 keys) ...
    mask[:, :, 40:, 5] = True  # ... and the rows of the last block their own
    k_nan, v_nan = k.clone(), v.clone()
    k_nan[:, :, 8:40], v_nan[:, :, 8:40] = math.nan, math.nan
    out, lse = moba_attention(q, k_nan, v_nan, block_size=8, top_k=2, block_mask=mask, return_lse=True)
    check_against_reference(q, k, v, mask, 8, torch.float32, out, lse)


def test_rows_that_see_no_key_give_zero_and_minus_infinity():
    q, k, v = inputs(1, 1, 1, 20, 12, 16, torch.float16, 1.0, seed=4)  # 8 more queries than keys: rows 0..7 see none
    out, lse = moba_attention(q, k, v, block_size=4, top_k=3, return_lse=True)
    assert (out[0, 0, :8] == 0).all() and torch.isneginf(lse[0, 0, :8]).all()
    assert torch.isfinite(lse[0, 0, 8:]).all()


def test_reported_config_is_the_launched_one(monkeypatch):
    q, k, v = inputs(2, 2, 1, 40, 50, 24, torch.float16, 1.0, seed=5)
    launches = record_launches(monkeypatch, kernels.block_sparse, "moba_attention_kernel")
    moba_attention(q, k, v, block_size=16, top_k=2)
    configs = launch_configs(q, k, v, block_size=16, top_k=2)
    print(configs[0].as_dict())
    assert_launched_as_reported(launches, configs)
    assert_recorded_as_reported(recent_launches(), configs)


def test_bad_arguments_raise():
    q, k, v = inputs(1, 2, 1, 8, 8, 8, torch.float32, 1.0, seed=0)
    with pytest.raises(ValueError, match="block_size = 0"):
        moba_attention(q, k, v, block_size=0, top_k=1)
    with pytest.raises(ValueError, match="top_k = 0"):
        moba_select(q, k, block_size=4, top_k=0)
    with pytest.raises(ValueError, match="block_mask is"):
        moba_attention(q, k, v, block_size=4, top_k=1, block_mask=torch.ones(1, 2, 8, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="block_mask is"):
        moba_attention(q, k, v, block_size=4, top_k=1, block_mask=torch.ones(1, 2, 8, 2, device=DEVICE))
    with pytest.raises(ValueError, match="multiple"):
        moba_attention(q[:, :1].expand(1, 3, 8, 8), k.expand(1, 2, 8, 8), v.expand(1, 2, 8, 8), block_size=4, top_k=1)
    with pytest.raises(ValueError, match="lse_out is"):
        moba_attention(q, k, v, block_size=4, top_k=1, lse_out=poisoned((1, 2, 8), torch.float16))
