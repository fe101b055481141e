"""Standard attention's schedules (memsim.schedules.standard) against the engine's fast mode and the closed form."""

import pytest
from hypothesis import given, settings, strategies as st

from memsim import AttentionShape, TileConfig, predict
from memsim.algorithms import standard
from memsim.engine import simulate
from memsim.hardware import load_gpu

from checks import assert_engine_runs_the_rooflines_kernels, assert_fast_matches_faithful, assert_matches_closed_form

H100 = load_gpu("H100-SXM5-80GB")
CEILINGS = H100.ceilings()
LATENCY_FACTOR = 3.0  # the engine and the roofline agree within this on every pass sampled (1.3x - 1.9x seen)


def run(shape, tiles, pass_, fast=True):
    return simulate(H100, CEILINGS, standard.schedule(shape, tiles, pass_, H100), fast=fast)


@settings(max_examples=6, deadline=None)
@given(batch=st.sampled_from([1, 2]), heads=st.sampled_from([(2, 2), (4, 2), (2, 1)]), n=st.integers(16, 400),
       kv_extra=st.sampled_from([0, 0, 37]), causal=st.booleans(), d=st.sampled_from([32, 64]),
       blocks=st.sampled_from([(64, 64), (128, 64), (64, 32)]), pass_=st.sampled_from(["fwd", "bwd"]))
def test_fast_mode_agrees_with_faithful_mode(batch, heads, n, kv_extra, causal, d, blocks, pass_):
    shape = AttentionShape(batch=batch, q_heads=heads[0], kv_heads=heads[1], q_len=n, kv_len=n + kv_extra,
                           head_dim=d, dtype="fp16", causal=causal)
    tiles = TileConfig(block_m=blocks[0], block_n=blocks[1], num_warps=8)
    for fast, faithful in zip(run(shape, tiles, pass_, True), run(shape, tiles, pass_, False)):
        assert_fast_matches_faithful(fast, faithful, abs_bytes=1.0)


@pytest.mark.parametrize("shape", [
    AttentionShape(batch=2, q_heads=4, q_len=512, head_dim=64, dtype="fp16"),
    AttentionShape(batch=1, q_heads=8, kv_heads=2, q_len=300, kv_len=700, head_dim=128, causal=True),
    AttentionShape(batch=1, q_heads=4, q_len=256, head_dim=64, window=100, dtype="fp32"),
], ids=["mha", "gqa-causal-uneven", "window-fp32"])
def test_work_and_every_byte_match_the_closed_form_when_all_fits_in_l2(shape):
    tiles = standard.default_tiles(H100, shape)
    costs = standard.kernels(H100, shape, tiles, "fwd+bwd")
    results = run(shape, tiles, "fwd+bwd")
    assert_matches_closed_form(costs, results)


def test_score_gemm_panels_are_read_by_every_tile_of_their_row_or_column_but_fetched_once():
    # Q K^T for one head, N = 512, d = 64, 128 x 128 tiles: a 4 x 4 grid of CTAs. Each reads a Q panel
    # (128 x 64 fp16 = 16 KiB) and a K panel: 16 CTAs x 2 panels = 512 KiB from L2, of which only the
    # 4 + 4 distinct panels (128 KiB) come from HBM, like the 54-of-90 blocks example of Triton tutorial 03.
    shape = AttentionShape(batch=1, q_heads=1, q_len=512, head_dim=64, dtype="fp16")
    qk = run(shape, TileConfig(block_m=128, block_n=128, num_warps=8), "fwd")[0]
    assert qk.launch.name == "standard_qk"
    tensors = qk.counters.by_tensor()
    panel = 128 * 64 * 2
    print(f"\nQ: {tensors['Q']['l2_read'] / 1024:.0f} KiB from L2, {tensors['Q']['hbm_read'] / 1024:.0f} KiB from "
          f"HBM; K: {tensors['K']['l2_read'] / 1024:.0f} KiB / {tensors['K']['hbm_read'] / 1024:.0f} KiB")
    assert tensors["Q"]["l2_read"] == tensors["K"]["l2_read"] == 16 * panel
    assert tensors["Q"]["hbm_read"] == tensors["K"]["hbm_read"] == 4 * panel
    assert qk.counters.tensor_flops == 2 * 512 * 512 * 64


def test_softmax_row_too_long_for_shared_memory_is_read_three_times_from_l2_once_from_hbm():
    # A bf16 row of 131072 scores is 256 KiB, more than the 227 KiB a block may have on an H100.
    shape = AttentionShape(batch=1, q_heads=1, q_len=4, kv_len=131072, head_dim=64)
    results = run(shape, standard.default_tiles(H100, shape), "fwd")
    softmax = results[1]
    row_bytes = 131072 * 2
    s = softmax.counters.by_tensor()["S"]
    print(f"\nS: {s['l2_read'] / row_bytes:.0f} row reads from L2, {s['hbm_read'] / row_bytes:.0f} from HBM")
    assert softmax.launch.smem_bytes_per_cta == 0
    assert s["l2_read"] == standard.SOFTMAX_FWD_PASSES * 4 * row_bytes
    assert s["hbm_read"] == 4 * row_bytes
    costs = standard.kernels(H100, shape, standard.default_tiles(H100, shape), "fwd")
    assert_matches_closed_form(costs, results, hbm_too=False)


@pytest.mark.parametrize("pass_", ["fwd", "bwd", "fwd+bwd"])
def test_predict_with_the_engine_runs_every_pass(pass_):
    shape = AttentionShape(batch=1, q_heads=4, kv_heads=2, q_len=512, head_dim=64, causal=True)
    q_bytes = 4 * 512 * 64 * 2
    kv_bytes = 2 * 512 * 64 * 2
    compulsory = q_bytes + 2 * kv_bytes + (2 * q_bytes if "bwd" in pass_ else 0)  # Q, K, V (+ O, dO)
    floor_s = compulsory / CEILINGS.hbm_bandwidth_bytes_per_s
    assert_engine_runs_the_rooflines_kernels("standard", shape, pass_, floor_s, LATENCY_FACTOR, l2_reads_too=True)


@pytest.mark.parametrize("shape", [
    AttentionShape(batch=1, q_heads=16, q_len=1024, head_dim=128),
    AttentionShape(batch=2, q_heads=8, kv_heads=2, q_len=1024, head_dim=64, causal=True),
], ids=["mha-1k", "gqa-causal-1k"])
def test_latency_within_the_stated_factor_of_the_closed_form(shape):
    for pass_ in ("fwd", "bwd"):
        des = predict("standard", shape, pass_=pass_, engine="des").latency_s
        analytic = predict("standard", shape, pass_=pass_).latency_s
        print(f"\n{pass_}: engine / roofline = {des / analytic:.2f}")
        assert 1 / LATENCY_FACTOR <= des / analytic <= LATENCY_FACTOR
