"""Block-sparse attention (MoBA, NSA): closed form against schedule, fast against faithful, the
paper's numbers, MoBA turning into FlashAttention-2, and growth in N against FlashAttention-2."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from memsim import AttentionShape, TileConfig
from memsim.algorithms import block_sparse, flash2, moba, nsa
from memsim.engine import simulate
from memsim.errors import MemsimError
from memsim.hardware import load_gpu
from memsim.schedules import flash2 as flash2_schedule

from checks import assert_fast_matches_faithful, assert_kernel_matches_closed_form, assert_same_kernels

H100 = load_gpu("H100-SXM5-80GB")
SMALL_NSA = dict(cmp_block=16, cmp_stride=8, slc_block=32, slc_count=4, window=64)  # every branch at N of a few hundred


def shape_of(n, batch=1, q_heads=4, kv_heads=2, d=64, **kw):
    return AttentionShape(batch=batch, q_heads=q_heads, kv_heads=kv_heads, q_len=n, head_dim=d, dtype="fp16",
                          causal=True, **kw)


def simulated(alg, shape, tiles, fast=True):
    return simulate(H100, H100.ceilings(), alg.schedule(shape, tiles, "fwd"), fast=fast)


def assert_schedule_matches(alg, shape, tiles):
    """Work and L2<->SM bytes exactly, per tensor; HBM too (these shapes fit in L2)."""
    costs, results = alg.kernels(H100, shape, tiles, "fwd"), simulated(alg, shape, tiles)
    assert_same_kernels(costs, results)
    for cost, r in zip(costs, results):
        print(f"  {cost.name:13s} {cost.tensor_flops:10.4g} FLOPs {cost.cuda_ops:10.4g} CUDA ops "
              f"L2 read {cost.total.l2_read / 1e3:9.1f} kB HBM read {cost.total.hbm_read / 1e3:8.1f} kB")
        assert_kernel_matches_closed_form(cost, r, abs_bytes=1e-6)
    return costs


# ---- MoBA -------------------------------------------------------------------------------------

MOBA_CASES = {
    "top-2 of 256, GQA, partial last block": (moba.algorithm(top_k=2, block_size=256), shape_of(1000, batch=2)),
    "top-3 of 128, tiles of 64 x 32": (moba.algorithm(top_k=3, block_size=128), shape_of(700, q_heads=2, kv_heads=1)),
    "top-1: its own block only": (moba.algorithm(top_k=1, block_size=128), shape_of(512)),
    "top-8 of 4 blocks: no gate": (moba.algorithm(top_k=8, block_size=128), shape_of(512)),
}


@pytest.mark.parametrize("case", list(MOBA_CASES))
def test_moba_schedule_matches_the_closed_form(case):
    alg, shape = MOBA_CASES[case]
    tiles = dataclasses.replace(alg.default_tiles(H100, shape), block_m=64, block_n=32) \
        if "64 x 32" in case else alg.default_tiles(H100, shape)
    print(case)
    costs = assert_schedule_matches(alg, shape, tiles)
    gated = "top-2" in case or "top-3" in case
    assert [k.name for k in costs] == (["moba_pool", "moba_gate", "moba_attn"] if gated else ["moba_attn"])


def test_moba_with_k_at_least_the_blocks_is_flash2():
    """Every tile takes every earlier block: no gate, and FlashAttention-2's kernel exactly."""
    shape = shape_of(1500, batch=2, q_heads=4, kv_heads=2, d=128)
    alg = moba.algorithm(top_k=6, block_size=256)  # ceil(1500 / 256) = 6 blocks
    tiles = alg.default_tiles(H100, shape)
    (moba_attn,) = alg.kernels(H100, shape, tiles, "fwd")
    fa2 = flash2.forward(H100, shape, tiles)
    print(f"MoBA k=6 of 6 blocks of 256: {moba_attn.tensor_flops:.6g} FLOPs, "
          f"L2 read {moba_attn.total.l2_read / 1e6:.3f} MB, "
          f"HBM read {moba_attn.total.hbm_read / 1e6:.3f} MB; FlashAttention-2: {fa2.tensor_flops:.6g}, "
          f"{fa2.total.l2_read / 1e6:.3f} MB, {fa2.total.hbm_read / 1e6:.3f} MB")
    for field in ("grid_ctas", "registers_per_thread", "tensor_flops", "cuda_ops", "exp_ops", "inflight_bytes_per_cta"):
        assert getattr(moba_attn, field) == getattr(fa2, field), field
    assert dict(moba_attn.smem_buffers) == dict(fa2.smem_buffers)
    assert dict(moba_attn.traffic) == dict(fa2.traffic)
    # and the simulated launches count the same
    (sim_moba,) = simulated(alg, shape, tiles)
    sim_fa2 = simulate(H100, H100.ceilings(), [flash2_schedule.forward(shape, tiles)])[0]
    assert sim_moba.counters.totals() == pytest.approx(sim_fa2.counters.totals(), rel=1e-9)
    assert sim_moba.counters.tensor_flops == pytest.approx(sim_fa2.counters.tensor_flops, rel=1e-9)


def test_moba_attention_loads_k_blocks_per_gated_tile():
    """A q tile in block c >= k loads k - 1 whole earlier blocks and its own block up to the diagonal:
    FlashAttention-2's tiles less (c - (k - 1)) blocks' worth."""
    n, k, block, bm, bn, d, heads = 4096, 3, 512, 128, 64, 128, 8
    shape = shape_of(n, q_heads=heads, kv_heads=heads, d=d)
    tiles = TileConfig(block_m=bm, block_n=bn)
    attn = moba.algorithm(top_k=k, block_size=block).kernels(H100, shape, tiles, "fwd")[-1]
    dropped = sum(max(0, i * bm // block - (k - 1)) * block // bn for i in range(n // bm))
    fa2 = flash2.forward(H100, shape, tiles).tensor_flops
    expected = fa2 - heads * dropped * 4 * bm * bn * d
    print(f"FlashAttention-2 {fa2:.6g} FLOPs less {dropped} tiles per head = {expected:.6g}; "
          f"MoBA {attn.tensor_flops:.6g}")
    assert attn.tensor_flops == expected


def test_moba_paper_sparsity_at_8k():
    """MoBA section 3.1: block 512, top-3 at 8K context attends to 3 x 512 of 8192 keys, 81.25% sparse."""
    shape = shape_of(8192, q_heads=1, kv_heads=1, d=128)
    tiles = TileConfig(block_m=128, block_n=64)
    plan = moba.moba_attention_plan(shape, tiles, moba.MobaParams(top_k=3, block_size=512))
    full = flash2.q_block_tiles(shape, 128, 64)
    sparsity = 1 - plan.keys[-1] / full.keys[-1]
    print(f"last query tile: {plan.keys[-1]} of {full.keys[-1]} keys, sparsity {sparsity:.4%} (paper 81.25%)")
    assert sparsity == 1 - 3 * 512 / 8192 == 0.8125


def test_moba_choice_is_deterministic_and_takes_distinct_earlier_blocks():
    p = moba.MobaParams(top_k=4, block_size=128)
    first = moba.moba_earlier_blocks(p, 0, 1, 40, 10)
    assert first == moba.moba_earlier_blocks(moba.MobaParams(top_k=4, block_size=128), 0, 1, 40, 10)
    assert len(set(first)) == 3 and all(0 <= b < 10 for b in first) and list(first) == sorted(first)
    others = {moba.moba_earlier_blocks(moba.MobaParams(top_k=4, block_size=128, seed=s), 0, 1, 40, 10)
              for s in range(8)}
    assert len(others) > 1  # the seed changes the choice
    assert moba.moba_earlier_blocks(p, 0, 1, 8, 2) == (0, 1)  # fewer earlier blocks than k - 1: all of them


# ---- NSA --------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, q_heads, kv_heads", [(400, 4, 2), (333, 2, 2), (12, 2, 1), (100, 32, 1)])
def test_nsa_schedule_matches_the_closed_form(n, q_heads, kv_heads):
    alg = nsa.algorithm(**SMALL_NSA)
    shape = shape_of(n, q_heads=q_heads, kv_heads=kv_heads)
    tiles = TileConfig(block_m=64, block_n=32)
    print(f"NSA N={n} heads {q_heads}/{kv_heads}")
    names = [k.name for k in assert_schedule_matches(alg, shape, tiles)]
    compressing = ["nsa_compress", "nsa_cmp"] * (n >= 16)  # a compression block of 16 keys fits
    ranking = ["nsa_topk"] * (n > 4 * 32)  # some query sees more than 4 selection blocks of 32
    expected = compressing + ranking + ["nsa_slc", "nsa_swa", "nsa_combine"]
    assert names == expected


def test_nsa_sliding_window_branch_is_flash2_with_the_window():
    shape = shape_of(5000, q_heads=8, kv_heads=2, d=128)
    tiles = flash2.default_tiles(H100, shape)
    swa = block_sparse.attention_cost(H100, shape, tiles, nsa.nsa_swa_plan(shape, tiles, nsa.NsaParams()))
    fa2 = flash2.forward(H100, dataclasses.replace(shape, window=512), tiles)
    assert (swa.tensor_flops, swa.cuda_ops, swa.exp_ops) == (fa2.tensor_flops, fa2.cuda_ops, fa2.exp_ops)
    assert swa.total == fa2.total


def test_nsa_paper_tokens_per_query_at_64k():
    """Section 4.1's sizes at 64K: the last query sees (65536 - 32) / 16 + 1 = 4095 compressed tokens,
    16 x 64 = 1024 selected keys and a window of 512: 5631 of 65536 keys."""
    n = 65536
    shape = shape_of(n, q_heads=64, kv_heads=4, d=128)
    p = nsa.NsaParams()
    tiles = TileConfig(block_m=128, block_n=64)
    compressed = int(nsa.compressed_visible(np.array([n - 1]), p, n)[0])
    selected = int(nsa.nsa_slc_plan(shape, tiles, p).keys[-1])
    window = int(nsa.nsa_swa_plan(dataclasses.replace(shape, q_len=n, kv_len=n), tiles, p).keys[-1])
    print(f"last query: {compressed} compressed tokens, {selected} selected keys, window tiles hold {window} keys")
    assert compressed == 4095 and nsa.compressed_tokens(n, p) == 4095
    assert selected == 1024
    assert 512 <= window <= 512 + 128 + 64  # the window rounded out to whole tiles for a 128-row tile


def test_nsa_selection_keeps_the_initial_and_local_blocks():
    p = nsa.NsaParams()
    chosen = nsa.nsa_selected_blocks(p, 0, 3, 500)
    assert len(chosen) == 16 and len(set(chosen)) == 16 and list(chosen) == sorted(chosen)
    assert chosen[0] == 0 and chosen[-2:] == (499, 500)  # initial block, the previous and the current last
    assert chosen == nsa.nsa_selected_blocks(nsa.NsaParams(), 0, 3, 500)
    assert nsa.nsa_selected_blocks(p, 0, 3, 10) == tuple(range(11))  # 11 blocks visible: all of them
    assert nsa.nsa_selected_blocks(dataclasses.replace(p, slc_count=2), 0, 0, 9) == (0, 9)


def test_nsa_group_centric_tile_is_padded_to_16_rows():
    """One CTA per (query, kv head) holds the group's q heads as rows; mma.m16n8k16 needs 16."""
    p, tiles = nsa.NsaParams(), TileConfig()
    for group, rows in ((1, 16), (8, 16), (16, 16), (24, 32)):
        plan = nsa.nsa_slc_plan(shape_of(2048, q_heads=group, kv_heads=1, d=128), tiles, p)
        assert plan.tile_rows == rows and plan.rows[0] == group


@settings(max_examples=6, deadline=None)
@given(st.integers(1, 700), st.sampled_from([1, 2]), st.sampled_from([1, 2]), st.sampled_from([64, 128]),
       st.integers(1, 4), st.sampled_from([(64, 32), (32, 32)]), st.integers(1, 3))
def test_moba_fast_mode_agrees_with_faithful_mode(n, kv_heads, group, block, k, blocks, stages):
    alg = moba.algorithm(top_k=k, block_size=block)
    shape = shape_of(n, q_heads=kv_heads * group, kv_heads=kv_heads)
    tiles = TileConfig(block_m=blocks[0], block_n=blocks[1], num_stages=stages)
    assert_fast_equals_faithful(alg, shape, tiles)


@settings(max_examples=6, deadline=None)
@given(st.integers(1, 300), st.sampled_from([1, 2]), st.sampled_from([1, 2]), st.sampled_from([(64, 32), (32, 16)]),
       st.integers(1, 3))
def test_nsa_fast_mode_agrees_with_faithful_mode(n, kv_heads, group, blocks, stages):
    alg = nsa.algorithm(**SMALL_NSA)
    shape = shape_of(n, q_heads=kv_heads * group, kv_heads=kv_heads)
    tiles = TileConfig(block_m=blocks[0], block_n=blocks[1], num_stages=stages)
    assert_fast_equals_faithful(alg, shape, tiles)


def assert_fast_equals_faithful(alg, shape, tiles):
    for fast, faithful in zip(simulated(alg, shape, tiles, True), simulated(alg, shape, tiles, False)):
        assert_fast_matches_faithful(fast, faithful)


# ---- growth in N ------------------------------------------------------------------------------

def test_flops_grow_about_linearly_while_flash2_grows_quadratically():
    """Doubling N: FlashAttention-2 x4; MoBA x2 (k blocks per query; the gate's N^2 / B term is small);
    NSA's selected and window branches x2, its compressed branch and ranking x4 but at 1/d of full
    attention's slope (N / d compressed tokens per query), so the whole well under x4."""
    def flops(alg, n):
        shape = shape_of(n, q_heads=64, kv_heads=4, d=128)
        return {k.name: k.tensor_flops for k in alg.kernels(H100, shape, alg.default_tiles(H100, shape), "fwd")}

    sizes = [4096, 8192, 16384, 32768]
    fa2 = [flash2.forward(H100, shape_of(n, q_heads=64, kv_heads=4, d=128),
                          flash2.default_tiles(H100, shape_of(n, q_heads=64, kv_heads=4, d=128))).tensor_flops
           for n in sizes]
    moba_flops = [sum(flops(moba.ALGORITHM, n).values()) for n in sizes]
    nsa_flops = [flops(nsa.ALGORITHM, n) for n in sizes]
    for i, n in enumerate(sizes):
        print(f"N={n:6d}: FA2 {fa2[i]:.3g}  MoBA {moba_flops[i]:.3g}  NSA {sum(nsa_flops[i].values()):.3g} "
              f"(compressed {nsa_flops[i]['nsa_cmp']:.3g}, rank {nsa_flops[i]['nsa_topk']:.3g}, "
              f"selected {nsa_flops[i]['nsa_slc']:.3g}, window {nsa_flops[i]['nsa_swa']:.3g})")
    for i in range(1, len(sizes)):
        local = [nsa_flops[j]["nsa_slc"] + nsa_flops[j]["nsa_swa"] for j in (i - 1, i)]
        ratios = (fa2[i] / fa2[i - 1], moba_flops[i] / moba_flops[i - 1],
                  sum(nsa_flops[i].values()) / sum(nsa_flops[i - 1].values()), local[1] / local[0])
        print(f"x2 N -> FA2 x{ratios[0]:.2f}, MoBA x{ratios[1]:.2f}, NSA x{ratios[2]:.2f}, "
              f"NSA selected + window x{ratios[3]:.2f}")
        assert 3.9 < ratios[0] < 4.1
        assert 1.9 < ratios[1] < 2.25
        assert 2.0 < ratios[2] < 3.0
        assert 1.9 < ratios[3] < 2.2  # above 2 while the first n l' queries still take fewer blocks
    compressed_share = nsa_flops[-1]["nsa_cmp"] / fa2[-1]
    print(f"compressed attention / full attention at N={sizes[-1]}: {compressed_share:.4f} (1/d = {1 / 16:.4f})")
    assert compressed_share == pytest.approx(1 / 16, rel=0.05)


# ---- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("make, match", [
    (lambda: moba.algorithm(top_k=0), "top_k = 0"),
    (lambda: moba.algorithm(block_size=-64), "block_size = -64"),
    (lambda: moba.algorithm(seed=-1), "seed = -1"),
    (lambda: nsa.algorithm(cmp_stride=12), "cmp_block = 32 is not a multiple of cmp_stride = 12"),
    (lambda: nsa.algorithm(slc_block=40), "slc_block = 40 is not a multiple of cmp_stride = 16"),
    (lambda: nsa.algorithm(cmp_block=128), "cmp_block = 128 is longer than slc_block = 64"),
    (lambda: nsa.algorithm(slc_count=0), "slc_count = 0"),
    (lambda: nsa.algorithm(window=0), "window = 0"),
])
def test_bad_parameters_are_refused_on_one_line(make, match):
    with pytest.raises(MemsimError, match=match) as err:
        make()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("alg", [moba.ALGORITHM, nsa.ALGORITHM], ids=["moba", "nsa"])
@pytest.mark.parametrize("shape, match", [
    (AttentionShape(q_len=1024), "causal"),
    (AttentionShape(q_len=512, kv_len=1024, causal=True), "q_len == kv_len"),
    (AttentionShape(q_len=1024, causal=True, window=256), "window = 256"),
])
def test_shapes_they_do_not_model_are_refused_on_one_line(alg, shape, match):
    for call in (lambda: alg.default_tiles(H100, shape), lambda: alg.kernels(H100, shape, TileConfig(), "fwd"),
                 lambda: alg.schedule(shape, TileConfig(), "fwd")):
        with pytest.raises(MemsimError, match=match) as err:
            call()
        assert "\n" not in str(err.value)


def test_moba_block_must_be_whole_tiles():
    shape = shape_of(1024)
    with pytest.raises(MemsimError, match="block_size = 96 is not a multiple of block_m = 64") as err:
        moba.algorithm(block_size=96).kernels(H100, shape, TileConfig(block_m=64, block_n=32), "fwd")
    assert "\n" not in str(err.value)
    # the default tiles shrink to fit the block
    tiles = moba.algorithm(block_size=96).default_tiles(H100, shape)
    assert 96 % tiles.block_m == 0 and 96 % tiles.block_n == 0
    with pytest.raises(MemsimError, match="fwd"):
        moba.ALGORITHM.kernels(H100, shape, TileConfig(), "bwd")
