"""Flash-Decoding's discrete-event schedule: against itself (fast vs faithful) and against its closed form."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from memsim import AttentionShape, TileConfig, predict
from memsim.algorithms import flash_decoding as fd
from memsim.algorithms.kv_quant import DEQUANT_OPS_PER_ELEMENT
from memsim.algorithms.tiling import q_block_tiles
from memsim.engine import simulate
from memsim.hardware import load_gpu
from memsim.schedules import flash_decoding as sched
from memsim.schedules.steps import Load

from checks import (assert_fast_matches_faithful, assert_same_bytes_per_tensor, assert_same_kernels,
                    assert_same_tensors, assert_same_total_bytes, assert_same_work)

H100 = load_gpu("H100-SXM5-80GB")
CEILINGS = H100.ceilings()

CASES = {
    "gqa, 4 splits": (AttentionShape(batch=2, q_heads=32, kv_heads=8, q_len=1, kv_len=8192),
                      TileConfig(block_m=16, block_n=128, num_splits=4)),
    "MQA, 4 M blocks, causal": (AttentionShape(q_heads=64, kv_heads=1, q_len=4, kv_len=3001, causal=True),
                                TileConfig(block_m=64, block_n=128, num_splits=5)),
    "window, int4 cache": (AttentionShape(q_heads=8, kv_heads=2, q_len=3, kv_len=3001, window=700, kv_dtype="int4"),
                           TileConfig(block_m=16, block_n=64, num_splits=3)),
    "3 empty splits": (AttentionShape(q_heads=8, q_len=1, kv_len=1000),  # 8 tiles, 7 splits of up to 2
                       TileConfig(block_m=16, block_n=128, num_splits=7)),
    "one split, int8 cache": (AttentionShape(batch=3, q_heads=16, kv_heads=4, q_len=2, kv_len=2500, kv_dtype="int8"),
                              TileConfig(block_m=16, block_n=128, num_splits=1)),
}


def run(shape: AttentionShape, tiles: TileConfig, fast: bool = True) -> list:
    return simulate(H100, CEILINGS, sched.forward(shape, tiles), fast=fast)


def latency_s(results: list) -> float:
    return sum(r.latency_s for r in results)


@pytest.mark.parametrize("case", CASES)
def test_work_and_bytes_equal_the_closed_form(case):
    """FLOPs, CUDA and exp ops and L2 bytes exactly; HBM bytes too, since each K/V tile is read from HBM once."""
    shape, tiles = CASES[case]
    costs = fd.kernels(H100, shape, tiles, "fwd")
    results = run(shape, tiles)
    assert_same_kernels(costs, results)
    for cost, result in zip(costs, results):
        c = result.counters
        sim = c.totals()
        print(f"{cost.name}: {c.tensor_flops:.6g} FLOPs, {c.cuda_ops:.6g} CUDA ops, "
              f"{sim['l2_read']:.6g} B from L2, {sim['hbm_read']:.6g} B from HBM")
        assert_same_work(cost, c, rel=1e-12)
        assert_same_tensors(cost, c)
        assert_same_bytes_per_tensor(cost, c, ("l2_read", "l2_write", "hbm_read"), rel=1e-12)
        assert_same_total_bytes(cost, c, ("hbm_write",), rel=1e-12)


@settings(max_examples=10, deadline=None)
@given(batch=st.integers(1, 2), kv_heads=st.sampled_from([1, 2, 4]), group=st.sampled_from([1, 4, 16]),
       q_len=st.integers(1, 4), kv_len=st.integers(16, 20000), causal=st.booleans(), d=st.sampled_from([64, 128]),
       kv_dtype=st.sampled_from(["fp16", "int8", "int4"]), block_n=st.sampled_from([32, 64]),
       splits=st.integers(1, 6), stages=st.integers(1, 3), v_prefetch=st.booleans())
def test_fast_mode_agrees_with_faithful_mode(batch, kv_heads, group, q_len, kv_len, causal, d, kv_dtype, block_n,
                                             splits, stages, v_prefetch):
    shape = AttentionShape(batch=batch, q_heads=kv_heads * group, kv_heads=kv_heads, q_len=min(q_len, kv_len),
                           kv_len=kv_len, head_dim=d, dtype="fp16", kv_dtype=kv_dtype, causal=causal)
    tiles = TileConfig(block_m=fd.decode_block_m(shape), block_n=block_n, num_stages=stages,
                       num_splits=min(splits, fd.key_tiles(shape, block_n)), v_prefetch=v_prefetch)
    for fast, faithful in zip(run(shape, tiles, True), run(shape, tiles, False), strict=True):
        assert_fast_matches_faithful(fast, faithful, abs_bytes=1.0, also=("exp_ops",))


@settings(max_examples=60, deadline=None)
@given(q_len=st.integers(1, 16), kv_len=st.integers(16, 3000), window=st.one_of(st.none(), st.integers(1, 2000)),
       block_n=st.sampled_from([16, 64, 128]))
def test_edge_tiles_are_those_holding_a_masked_pair(q_len, kv_len, window, block_n):
    """Counted key by key: a tile is an edge tile when some row cannot see one of its key slots
    (slots past kv_len included, as the closed form's causal count has them)."""
    shape = AttentionShape(q_heads=1, q_len=min(q_len, kv_len), kv_len=kv_len, causal=True, window=window)
    blocks = q_block_tiles(shape, shape.q_len, block_n)
    first, last = shape.key_ranges()
    expected = []
    for tile in range(int(blocks.first_tile[0]), int(blocks.first_tile[0] + blocks.tiles[0])):
        slots = np.arange(tile * block_n, (tile + 1) * block_n)
        seen = (slots[None, :] >= first[:, None]) & (slots[None, :] < last[:, None])
        expected.append(not seen.all())
    flags = sched.edge_tiles(shape, block_n)
    assert list(flags) == expected
    assert flags.sum() == blocks.edge_tiles[0]


@pytest.mark.parametrize("case", CASES)
def test_v_loaded_in_the_iteration_that_uses_it_moves_the_same_bytes_and_work(case):
    shape, tiles = CASES[case]
    prefetched, exposed = run(shape, tiles), run(shape, dataclasses.replace(tiles, v_prefetch=False))
    for a, b in zip(prefetched, exposed, strict=True):
        assert a.counters.totals() == pytest.approx(b.counters.totals(), rel=1e-12)
        assert (a.counters.tensor_flops, a.counters.cuda_ops) == (b.counters.tensor_flops, b.counters.cuda_ops)


def test_v_loaded_in_the_iteration_that_uses_it_waits_out_each_load():
    """kernels/kv_quant.py's int8 decode (TileConfig.v_prefetch): V leaves the prefetched loads for the compute
    steps, and every iteration then waits at least one HBM latency (decode reads each V tile once: all misses)."""
    shape = AttentionShape(batch=8, q_heads=32, kv_heads=8, q_len=1, kv_len=32768, kv_dtype="int8")
    tiles = TileConfig(block_m=16, block_n=64, num_warps=8, num_stages=3, num_splits=4)
    exposed = dataclasses.replace(tiles, v_prefetch=False)
    loop = sched.split_launch(shape, exposed).program(0).loop
    assert [load.tensor for load in loop.loads(5)] == ["K"]
    assert [s.tensor for s in loop.compute(5) if isinstance(s, Load)] == ["V"]
    assert [load.tensor for load in sched.split_launch(shape, tiles).program(0).loop.loads(5)] == ["K", "V"]
    split_prefetched, split_exposed = run(shape, tiles)[0], run(shape, exposed)[0]
    assert split_exposed.latency_s >= loop.iterations * CEILINGS.hbm_latency_s
    assert split_exposed.latency_s > split_prefetched.latency_s


def test_quantised_kv_cuts_hbm_bytes_and_adds_dequant_work():
    """K and V from HBM: bf16 2 B, int8 1 B + 2/64 B of scale, int4 0.5 B + 2/64 B per element;
    dequantising costs 2 (int8) or 4 (int4) CUDA ops per K or V element (memsim.algorithms.kv_quant)."""
    elements = 2 * 8 * 8192 * 128  # K and V, 8 kv heads, 8192 keys, d = 128
    tiles = TileConfig(block_m=16, block_n=128, num_splits=4)
    got = {}
    for kv_dtype in ("bf16", "int8", "int4"):
        shape = AttentionShape(q_heads=32, kv_heads=8, q_len=1, kv_len=8192, kv_dtype=kv_dtype)
        split = run(shape, tiles)[0].counters
        got[kv_dtype] = (split.hbm_read["K"] + split.hbm_read["V"], split.cuda_ops)
        print(f"{kv_dtype}: K+V {got[kv_dtype][0] / 1e6:.3f} MB from HBM, {got[kv_dtype][1]:.5g} CUDA ops")
    assert got["bf16"][0] == elements * 2
    assert got["int8"][0] == pytest.approx(elements * (1 + 2 / 64), rel=1e-12)
    assert got["int4"][0] == pytest.approx(elements * (0.5 + 2 / 64), rel=1e-12)
    for kv_dtype in ("int8", "int4"):
        added = got[kv_dtype][1] - got["bf16"][1]
        assert added == pytest.approx(elements * DEQUANT_OPS_PER_ELEMENT[kv_dtype], rel=1e-12)


def test_split_kv_beats_no_split_at_batch_1_long_context():
    """8 kv heads, 64K keys: unsplit, 8 CTAs stream all K/V while 124 SMs idle; split 14 ways, 112 do."""
    shape = AttentionShape(batch=1, q_heads=32, kv_heads=8, q_len=1, kv_len=65536)
    tiles = fd.default_tiles(H100, shape)
    split, single = run(shape, tiles), run(shape, dataclasses.replace(tiles, num_splits=1))
    print(f"{tiles.num_splits} splits: {latency_s(split) * 1e6:.1f} us "
          f"({' + '.join(f'{r.latency_s * 1e6:.1f}' for r in split)}); 1 split: {latency_s(single) * 1e6:.1f} us")
    assert tiles.num_splits == 14
    assert latency_s(split) < latency_s(single)
    kv_once = 8 * 65536 * 128 * 2  # K (or V) is 268 MB together: far more than L2, still read once
    for results in (split, single):
        assert results[0].counters.hbm_read["K"] == results[0].counters.hbm_read["V"] == kv_once


def test_predict_runs_the_schedule():
    shape = AttentionShape(batch=2, q_heads=32, kv_heads=8, q_len=1, kv_len=4096)
    analytic, des = predict("flash_decoding", shape, H100), predict("flash_decoding", shape, H100, engine="des")
    assert [k.name for k in des.kernels] == [k.name for k in analytic.kernels]
    assert des.bytes["l2_read"] == pytest.approx(analytic.bytes["l2_read"], rel=1e-12)
