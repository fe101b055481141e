"""FlashAttention-2's backward schedules (memsim.schedules.flash2_bwd) against fast mode and the closed form."""

import pytest
from hypothesis import given, settings, strategies as st

from memsim import AttentionShape, TileConfig, predict
from memsim.algorithms import flash2, flash2_bwd
from memsim.engine import simulate
from memsim.hardware import load_gpu
from memsim.schedules.flash2_bwd import backward as schedule

from checks import assert_engine_runs_the_rooflines_kernels, assert_fast_matches_faithful, assert_matches_closed_form

H100 = load_gpu("H100-SXM5-80GB")
CEILINGS = H100.ceilings()
LATENCY_FACTOR = 3.0  # engine / roofline on every pass sampled: 0.8x - 2.8x per kernel, 1.2x - 2.2x per pass
ACCUMULATOR = "dQ accumulator"


def run(shape, tiles, fast=True):
    return simulate(H100, CEILINGS, schedule(shape, tiles), fast=fast)


@settings(max_examples=8, deadline=None)
@given(batch=st.sampled_from([1, 2]), heads=st.sampled_from([(2, 2), (4, 2), (2, 1)]), n=st.integers(32, 600),
       kv_extra=st.sampled_from([0, 0, 91]), causal=st.booleans(), window=st.sampled_from([None, None, 150]),
       d=st.sampled_from([64, 128]), blocks=st.sampled_from([(64, 64), (128, 64), (64, 32)]), stages=st.integers(1, 2))
def test_fast_mode_agrees_with_faithful_mode(batch, heads, n, kv_extra, causal, window, d, blocks, stages):
    shape = AttentionShape(batch=batch, q_heads=heads[0], kv_heads=heads[1], q_len=n, kv_len=n + kv_extra,
                           head_dim=d, dtype="fp16", causal=causal, window=window)
    tiles = TileConfig(block_m=blocks[0], block_n=blocks[1], num_stages=stages)
    for fast, faithful in zip(run(shape, tiles, True), run(shape, tiles, False)):
        assert_fast_matches_faithful(fast, faithful, abs_bytes=1.0)


@pytest.mark.parametrize("shape, tiles", [
    (AttentionShape(batch=2, q_heads=4, q_len=512, head_dim=64, dtype="fp16"), None),
    (AttentionShape(batch=1, q_heads=8, kv_heads=2, q_len=300, kv_len=700, head_dim=128, causal=True), None),
    (AttentionShape(batch=1, q_heads=4, q_len=1000, head_dim=64, causal=True, dtype="fp32"),
     TileConfig(block_m=64, block_n=64, num_stages=1)),
], ids=["mha", "gqa-causal-uneven", "causal-fp32"])
def test_work_and_every_byte_match_the_closed_form_when_all_fits_in_l2(shape, tiles):
    tiles = tiles or flash2.default_tiles(H100, shape)
    assert_matches_closed_form(flash2_bwd.backward(H100, shape, tiles), run(shape, tiles), hbm_too=True)


def test_sliding_window_work_and_l2_bytes_match_the_closed_form():
    # HBM bytes are not compared: the closed form takes the K/V a head shares from HBM as the keys some
    # query sees, the schedule as the whole key blocks it loads (a window need not start on a block).
    shape = AttentionShape(batch=1, q_heads=4, kv_heads=2, q_len=700, kv_len=900, head_dim=64, window=200)
    tiles = flash2.default_tiles(H100, shape)
    assert_matches_closed_form(flash2_bwd.backward(H100, shape, tiles), run(shape, tiles), hbm_too=False)


def test_every_key_block_cta_adds_into_the_same_dq_tiles_in_l2():
    # 4 heads, N = 512, d = 64, 128 x 64 tiles: T_c = 8 key-block CTAs per head each add dS K into all
    # four 128-row dQ tiles of their head: 8 x 512 x 64 x 4 B of atomics per head, fetched from HBM once.
    shape = AttentionShape(batch=1, q_heads=4, q_len=512, head_dim=64, dtype="fp16")
    main = run(shape, TileConfig(block_m=128, block_n=64))[1]
    acc = main.counters.by_tensor()[ACCUMULATOR]
    size = 4 * 512 * 64 * 4
    written_back = acc["hbm_write"] + acc["hbm_write_deferred"]
    print(f"\ndQ accumulator of {size} B: {acc['l2_write'] / size:.0f} x its size added in L2, "
          f"{acc['hbm_read'] / size:.0f} x read from HBM, {written_back / size:.0f} x written back")
    assert acc["l2_write"] == 8 * size
    assert acc["hbm_read"] == size
    assert written_back == size


def test_gqa_adds_the_dk_dv_reduction_and_names_per_head_copies():
    shape = AttentionShape(batch=1, q_heads=4, kv_heads=2, q_len=256, head_dim=64)
    launches = schedule(shape, flash2.default_tiles(H100, shape))
    assert [x.name for x in launches] == ["flash2_bwd_preprocess", "flash2_bwd", "flash2_bwd_dkv_reduce",
                                          "flash2_bwd_convert_dq"]
    written = {s.tensor for s in launches[1].program(0).epilogue}
    assert written == {"dK per q head", "dV per q head"}


@pytest.mark.parametrize("pass_", ["fwd", "bwd", "fwd+bwd"])
def test_predict_with_the_engine_runs_every_pass(pass_):
    shape = AttentionShape(batch=1, q_heads=4, kv_heads=2, q_len=1024, head_dim=64, causal=True)
    q_bytes, kv_bytes = 4 * 1024 * 64 * 2, 2 * 1024 * 64 * 2
    compulsory = q_bytes + 2 * kv_bytes + (2 * q_bytes if "bwd" in pass_ else 0)  # Q, K, V (+ O, dO)
    floor_s = compulsory / CEILINGS.hbm_bandwidth_bytes_per_s
    assert_engine_runs_the_rooflines_kernels("flash2", shape, pass_, floor_s, LATENCY_FACTOR)


def test_backward_latency_within_the_stated_factor_on_a_larger_shape():
    shape = AttentionShape(batch=1, q_heads=16, q_len=2048, head_dim=128)
    des = predict("flash2", shape, pass_="bwd", engine="des").latency_s
    analytic = predict("flash2", shape, pass_="bwd").latency_s
    floor_s = 5 * 16 * 2048 * 128 * 2 / CEILINGS.hbm_bandwidth_bytes_per_s  # Q, K, V, O, dO once
    print(f"\nbwd: engine / roofline = {des / analytic:.2f}, engine / HBM floor = {des / floor_s:.1f}")
    assert 1 / LATENCY_FACTOR <= des / analytic <= LATENCY_FACTOR
    assert des >= floor_s
