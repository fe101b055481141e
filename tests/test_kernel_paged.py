"""paged_decode against reference.paged_attention, with block tables from random permutations and from
the BlockManager (forked sequences sharing blocks, copy-on-write on append). Slots and blocks no
sequence owns hold NaN, so a read past a sequence's keys shows."""

import random

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from kernel_checks import (DEVICE, assert_recorded_as_reported, check_close, kernel_settings, low_precision_dtypes,
                           poisoned)
from kernels import paged, reference
from kernels.block_manager import BlockManager


@st.composite
def paged_cases(draw):
    group = draw(st.sampled_from([1, 2, 4]))
    kv_heads = draw(st.integers(1, max(1, 4 // group)))
    return dict(
        batch=draw(st.integers(1, 3)), kv_heads=kv_heads, group=group,
        page_size=draw(st.sampled_from([1, 3, 4, 16])), head_dim=draw(st.sampled_from([8, 16, 24, 64])),
        max_len=draw(st.integers(0, 70)), num_splits=draw(st.sampled_from([None, 1, 2, 5])),
        dtype=draw(st.sampled_from(low_precision_dtypes())), logit_scale=draw(st.sampled_from([1.0, 12.0])),
        tables=draw(st.sampled_from(["permutation", "block_manager"])), seed=draw(st.integers(0, 2**16)))


def nan_cache(num_blocks, kv_heads, page_size, head_dim):
    return torch.full((num_blocks, kv_heads, page_size, head_dim), float("nan"), dtype=torch.float64)


def permuted_tables(case, gen, rng):
    """Random lengths, each sequence's pages a random choice of distinct blocks; padding entries point at a
    block of NaN that must never be read."""
    page = case["page_size"]
    lens = [rng.randint(0, case["max_len"]) for _ in range(case["batch"])]
    pages = [-(-n // page) for n in lens]
    max_pages = max(pages + [1])
    num_blocks = max_pages * case["batch"] + 1
    k_cache, v_cache = (nan_cache(num_blocks, case["kv_heads"], page, case["head_dim"]) for _ in range(2))
    order = torch.randperm(num_blocks - 1, generator=gen).tolist()
    nan_block = num_blocks - 1
    tables = []
    for b, (n, used) in enumerate(zip(lens, pages)):
        blocks = order[b * max_pages: b * max_pages + used]
        for t in range(n):
            for cache in (k_cache, v_cache):
                cache[blocks[t // page], :, t % page] = torch.randn(case["kv_heads"], case["head_dim"], generator=gen)
        tables.append(blocks + [nan_block] * (max_pages - used))
    return k_cache, v_cache, tables, lens


def manager_tables(case, gen, rng):
    """Sequences allocated or forked from an earlier one, then grown token by token in random order; each
    copy-on-write the manager asks for is done on the cache before the token is written."""
    page, heads, dim = case["page_size"], case["kv_heads"], case["head_dim"]
    num_blocks = 2 * case["batch"] * (case["max_len"] // page + 3)
    manager = BlockManager(num_blocks, page)
    k_cache, v_cache = nan_cache(num_blocks, heads, page, dim), nan_cache(num_blocks, heads, page, dim)

    def write(seq, t):
        block = manager.block_table(seq)[t // page]
        for cache in (k_cache, v_cache):
            cache[block, :, t % page] = torch.randn(heads, dim, generator=gen)

    for seq in range(case["batch"]):
        if seq > 0 and rng.random() < 0.5:
            manager.fork(rng.randrange(seq), seq)
        else:
            manager.allocate(seq, rng.randint(0, case["max_len"]))
            for t in range(manager.num_tokens(seq)):
                write(seq, t)
    for _ in range(3 * case["batch"]):
        seq = rng.randrange(case["batch"])
        copy = manager.append_token(seq)
        if copy is not None:
            k_cache[copy[1]], v_cache[copy[1]] = k_cache[copy[0]], v_cache[copy[0]]
        write(seq, manager.num_tokens(seq) - 1)
    seqs = list(range(case["batch"]))
    width = max(1, max(len(manager.block_table(s)) for s in seqs))
    return k_cache, v_cache, manager.padded_tables(seqs, width), [manager.num_tokens(s) for s in seqs]


def make_case(case):
    gen, rng = torch.Generator().manual_seed(case["seed"]), random.Random(case["seed"])
    build = permuted_tables if case["tables"] == "permutation" else manager_tables
    k_cache, v_cache, tables, lens = build(case, gen, rng)
    q = torch.randn(case["batch"], case["kv_heads"] * case["group"], case["head_dim"], generator=gen)
    dtype = case["dtype"]
    as_int = dict(dtype=torch.int32, device=DEVICE)
    return ((q * case["logit_scale"]).to(DEVICE, dtype), k_cache.to(DEVICE, dtype), v_cache.to(DEVICE, dtype),
            torch.tensor(tables, **as_int), torch.tensor(lens, **as_int))


def check_paged(q, k_cache, v_cache, table, lens, dtype, **keywords):
    out, lse_out = poisoned(q.shape, q.dtype), poisoned(q.shape[:2], torch.float32)
    o, lse = paged.paged_decode(q, k_cache, v_cache, table, lens, out=out, lse_out=lse_out, **keywords)
    assert o is out and lse is lse_out
    o64, lse64 = reference.paged_attention(q, k_cache, v_cache, table, lens)
    o_peer, lse_peer = reference.paged_attention(q, k_cache, v_cache, table, lens, dtype=dtype)
    check_close("paged O", o, o64, o_peer, dtype)
    check_close("paged LSE", lse, lse64, lse_peer, dtype)


@kernel_settings(15)
@given(case=paged_cases())
def test_paged_decode_matches_reference(case):
    q, k_cache, v_cache, table, lens = make_case(case)
    check_paged(q, k_cache, v_cache, table, lens, case["dtype"], num_splits=case["num_splits"])


def test_forked_sequences_share_blocks_and_diverge():
    """A prompt of 10 tokens on pages of 4, forked twice; each branch appends its own tokens: the full pages
    stay shared, the half-full last page is copied for the branches that write into it."""
    gen = torch.Generator().manual_seed(0)
    manager = BlockManager(16, 4)
    k_cache, v_cache = nan_cache(16, 1, 4, 16), nan_cache(16, 1, 4, 16)
    manager.allocate("prompt", 10)
    for t in range(10):
        block = manager.block_table("prompt")[t // 4]
        k_cache[block, :, t % 4], v_cache[block, :, t % 4] = torch.randn(2, 1, 16, generator=gen)
    for branch in ("a", "b"):
        manager.fork("prompt", branch)
    copies = []
    for branch in ("a", "b", "a"):
        copy = manager.append_token(branch)
        if copy is not None:
            copies.append(copy)
            k_cache[copy[1]], v_cache[copy[1]] = k_cache[copy[0]], v_cache[copy[0]]
        t = manager.num_tokens(branch) - 1
        block = manager.block_table(branch)[t // 4]
        k_cache[block, :, t % 4], v_cache[block, :, t % 4] = torch.randn(2, 1, 16, generator=gen)
    seqs = ["prompt", "a", "b"]
    tables = manager.padded_tables(seqs)
    print(f"tables {tables}, copies {copies}")
    assert tables[0][:2] == tables[1][:2] == tables[2][:2] and len(copies) == 2
    q = torch.randn(3, 2, 16, generator=gen)
    check_paged(q.to(DEVICE), k_cache.float().to(DEVICE), v_cache.float().to(DEVICE),
                torch.tensor(tables, dtype=torch.int32, device=DEVICE),
                torch.tensor([manager.num_tokens(s) for s in seqs], dtype=torch.int32, device=DEVICE),
                torch.float32, num_splits=2)


def test_sequence_of_length_zero_gives_zero_and_minus_inf():
    q = torch.randn(2, 2, 16, device=DEVICE)
    cache = torch.randn(3, 1, 4, 16, device=DEVICE)
    table = torch.tensor([[0, 1], [2, 0]], dtype=torch.int32, device=DEVICE)
    o, lse = paged.paged_decode(q, cache, cache, table, torch.tensor([0, 5], dtype=torch.int32, device=DEVICE),
                                out=poisoned(q.shape, q.dtype))
    assert (o[0] == 0).all() and torch.isneginf(lse[0]).all() and torch.isfinite(lse[1]).all()


@pytest.mark.parametrize("num_splits", [1, 3])
def test_launch_configs_are_what_runs(num_splits):
    q = torch.randn(2, 4, 24, device=DEVICE)
    cache = torch.randn(6, 2, 5, 24, device=DEVICE)
    table = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32, device=DEVICE)
    lens = torch.tensor([11, 15], dtype=torch.int32, device=DEVICE)
    configs = paged.launch_configs(q, cache, cache, table, lens, num_splits=num_splits)
    launched = []
    paged.paged_decode(q, cache, cache, table, lens, num_splits=num_splits, launched=launched)
    assert_recorded_as_reported(launched, configs)
    assert configs[0].grid == (2 * 2, 1, num_splits) and len(configs) == (2 if num_splits > 1 else 1)


def _good():
    cache = torch.randn(4, 1, 4, 16, device=DEVICE)
    return (torch.randn(2, 2, 16, device=DEVICE), cache, cache,
            torch.zeros(2, 2, dtype=torch.int32, device=DEVICE), torch.ones(2, dtype=torch.int32, device=DEVICE))


@pytest.mark.parametrize("mutate, message", [
    (lambda q, k, v, t, n: (q[:, :, None], k, v, t, n), "expected 3 dims"),
    (lambda q, k, v, t, n: (q, k, v[:, :, :2], t, n), "k_cache"),
    (lambda q, k, v, t, n: (q, k, v, t.float(), n), "block_table"),
    (lambda q, k, v, t, n: (q, k, v, t[:1], n), "block_table"),
    (lambda q, k, v, t, n: (q, k, v, t, n[:1]), "seq_lens"),
    (lambda q, k, v, t, n: (q.half(), k, v, t, n), "one dtype"),
    (lambda q, k, v, t, n: (q[..., :8], k, v, t, n), "head dims"),
    (lambda q, k, v, t, n: (q[:, :1].expand(2, 3, 16), k[:, :1].expand(4, 2, 4, 16), v[:, :1].expand(4, 2, 4, 16),
                            t, n), "multiple of kv heads"),
])
def test_bad_inputs_raise_value_error(mutate, message):
    with pytest.raises(ValueError, match=message):
        paged.paged_decode(*mutate(*_good()))


def test_bad_output_raises_value_error():
    with pytest.raises(ValueError, match="out is"):
        paged.paged_decode(*_good(), out=torch.empty(2, 2, 8, device=DEVICE))
    with pytest.raises(ValueError, match="num_splits = 0"):
        paged.paged_decode(*_good(), num_splits=0)


def test_paged_layout_holds_the_same_keys_and_values():
    """kernels.paged.paged_layout (used by the benchmark and the validation runs): a length that is not a whole
    number of pages, pages scattered; attention over the paged cache equals attention over the dense K/V."""
    from kernels.paged import paged_layout

    k, v, q = torch.randn(2, 2, 37, 8), torch.randn(2, 2, 37, 8), torch.randn(2, 4, 8)
    k_cache, v_cache, table, lens = paged_layout(k, v, 16)
    assert tuple(k_cache.shape) == (2 * 3, 2, 16, 8) and lens.tolist() == [37, 37]
    assert sorted(table.flatten().tolist()) == list(range(6))
    paged, _ = reference.paged_attention(q, k_cache, v_cache, table, lens)
    dense, _ = reference.attention(q.unsqueeze(2), k, v)
    assert torch.allclose(paged, dense[:, :, 0])
