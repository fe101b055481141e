"""FlashAttention-2's backward with dQ in its own kernel (TileConfig.dq = "separate"): closed form, schedules,
engine, and the match with kernels/flash2.py's launches."""

import dataclasses

import pytest
from hypothesis import given, settings, strategies as st

from memsim import AttentionShape, TileConfig, predict
from memsim.algorithms import flash2_bwd, flash2_bwd_separate_dq as separate
from memsim.algorithms.tiling import keys_touched
from memsim.engine import simulate
from memsim.errors import MemsimError
from memsim.hardware import load_gpu
from memsim.schedules.flash2_bwd import backward as schedule

from checks import assert_fast_matches_faithful, assert_matches_closed_form, by_name, summed

H100 = load_gpu("H100-SXM5-80GB")
# kernels/flash2.py on sm_90, d = 128: dK/dV tiles 32 x 128, 8 warps, 3 stages; its dQ tiles 128 x 32
TILES = TileConfig(block_m=32, block_n=128, num_warps=8, num_stages=3, dq="separate")
NAMES = ["flash2_bwd_delta", "flash2_bwd_dkdv", "flash2_bwd_dq"]


def kernels(shape, tiles=TILES):
    return by_name(flash2_bwd.backward(H100, shape, tiles))


def test_three_kernels_and_no_reduction_for_gqa():
    for shape in (AttentionShape(q_len=1024), AttentionShape(q_heads=32, kv_heads=8, q_len=1024)):
        assert [k.name for k in flash2_bwd.backward(H100, shape, TILES)] == NAMES
        assert [x.name for x in schedule(shape, TILES)] == NAMES


def test_seven_matmuls_per_tile_pair_four_then_three():
    h, n, d = 8, 4096, 128
    ks = kernels(AttentionShape(q_heads=h, q_len=n, head_dim=d))
    dkdv, dq = ks["flash2_bwd_dkdv"], ks["flash2_bwd_dq"]
    assert dkdv.tensor_flops == 4 * 2 * h * n * n * d
    assert dq.tensor_flops == 3 * 2 * h * n * n * d
    assert dkdv.exp_ops == dq.exp_ops == h * n * n  # P recomputed in both
    assert dkdv.grid_ctas == (n // 128) * h and dq.grid_ctas == (n // 128) * h  # dQ rows = dK/dV's BLOCK_N
    assert ks["flash2_bwd_delta"].grid_ctas == (n // separate.DELTA_ROWS) * h


def test_dkdv_streams_the_q_side_per_key_block_and_dq_streams_kv_per_query_block():
    h, n, d, e = 4, 2048, 64, 2
    ks = kernels(AttentionShape(q_heads=h, q_len=n, head_dim=d, dtype="fp16"))
    dkdv, dq = ks["flash2_bwd_dkdv"], ks["flash2_bwd_dq"]
    t_c = n // TILES.block_n
    assert dkdv.traffic["Q"].l2_read == dkdv.traffic["dO"].l2_read == t_c * h * n * d * e
    assert dkdv.traffic["LSE"].l2_read == t_c * h * n * 4
    assert dkdv.traffic["K"].l2_read == dkdv.traffic["K"].hbm_read == h * n * d * e  # each block by one CTA
    t_r = n // TILES.block_n  # the dQ kernel's query rows per CTA are the dK/dV kernel's keys per CTA
    assert dq.traffic["K"].l2_read == t_r * h * n * d * e
    assert dq.traffic["Q"].l2_read == dq.traffic["Q"].hbm_read == h * n * d * e
    assert dq.traffic["K"].hbm_read == h * n * d * e  # all fits in L2: once


def test_gradients_written_once_no_accumulator():
    h, hkv, n, d, e = 16, 2, 2048, 128, 2
    ks = flash2_bwd.backward(H100, AttentionShape(q_heads=h, kv_heads=hkv, q_len=n, head_dim=d), TILES)
    assert summed(ks, "dQ", "hbm_write") == h * n * d * e
    assert summed(ks, "dK", "hbm_write") == summed(ks, "dV", "hbm_write") == hkv * n * d * e  # summed on chip
    assert all("dQ accumulator" not in k.traffic and "dK per q head" not in k.traffic for k in ks)
    assert summed(ks, "D", "hbm_write") == h * n * 4


def test_separate_dq_trades_matmuls_for_atomics():
    """Against the atomic backward on the same tiles: 7/5 the tensor work, no fp32 accumulator traffic."""
    shape = AttentionShape(q_heads=16, q_len=4096)
    atomic = flash2_bwd.backward(H100, shape, dataclasses.replace(TILES, dq="atomic"))
    ours = flash2_bwd.backward(H100, shape, TILES)
    assert sum(k.tensor_flops for k in ours) == pytest.approx(sum(k.tensor_flops for k in atomic) * 7 / 5)
    assert summed(atomic, "dQ accumulator", "l2_write") > 0
    assert sum(k.total.hbm_write for k in ours) < sum(k.total.hbm_write for k in atomic)


@given(n=st.integers(1, 4000), kv_extra=st.integers(0, 600), d=st.sampled_from([32, 64, 128]),
       heads=st.sampled_from([(4, 4), (8, 2), (8, 1)]), batch=st.integers(1, 3), causal=st.booleans(),
       window=st.one_of(st.none(), st.integers(1, 3000)), dtype=st.sampled_from(["fp16", "bf16", "fp32"]))
def test_every_shape_moves_at_least_the_compulsory_bytes(n, kv_extra, d, heads, batch, causal, window, dtype):
    shape = AttentionShape(batch=batch, q_heads=heads[0], kv_heads=heads[1], q_len=n, kv_len=n + kv_extra,
                           head_dim=d, dtype=dtype, causal=causal, window=window)
    ks = flash2_bwd.backward(H100, shape, TileConfig(block_m=32, block_n=64, num_stages=2, dq="separate"))
    e, kv_e = shape.element_bytes, shape.kv_element_bytes
    q = batch * heads[0] * n * d
    kv = batch * heads[1] * shape.kv_len * d
    for tensor, least in (("Q", 2 * q * e), ("dO", 2 * q * e), ("O", q * e)):  # Q, dO: once in each kernel
        assert summed(ks, tensor, "hbm_read") >= least, tensor
    assert summed(ks, "K", "hbm_read") >= 2 * batch * heads[1] * keys_touched(shape) * d * kv_e
    for tensor, written in (("dQ", q * e), ("dK", kv * e), ("dV", kv * e)):
        assert summed(ks, tensor, "hbm_write") == written, tensor
    for k in ks:
        for t, traffic in k.traffic.items():
            assert traffic.l2_read >= traffic.hbm_read, (k.name, t)


def run(shape, tiles, fast=True):
    return simulate(H100, H100.ceilings(), schedule(shape, tiles), fast=fast)


@pytest.mark.parametrize("shape, tiles", [
    (AttentionShape(batch=2, q_heads=4, q_len=512, head_dim=64, dtype="fp16"), TILES),
    (AttentionShape(batch=1, q_heads=8, kv_heads=2, q_len=300, kv_len=700, head_dim=128, causal=True), TILES),
    (AttentionShape(batch=1, q_heads=4, q_len=1000, head_dim=64, causal=True, dtype="fp32"),
     TileConfig(block_m=32, block_n=64, num_stages=1, dq="separate")),
], ids=["mha", "gqa-causal-uneven", "causal-fp32"])
def test_schedules_match_the_closed_form_when_all_fits_in_l2(shape, tiles):
    assert_matches_closed_form(flash2_bwd.backward(H100, shape, tiles), run(shape, tiles), hbm_too=True)


@settings(max_examples=8, deadline=None)
@given(batch=st.sampled_from([1, 2]), heads=st.sampled_from([(2, 2), (4, 2), (2, 1)]), n=st.integers(32, 600),
       kv_extra=st.sampled_from([0, 0, 91]), causal=st.booleans(), window=st.sampled_from([None, None, 150]),
       d=st.sampled_from([64, 128]), blocks=st.sampled_from([(32, 128), (64, 64), (32, 64)]), stages=st.integers(1, 3))
def test_fast_mode_agrees_with_faithful_mode(batch, heads, n, kv_extra, causal, window, d, blocks, stages):
    shape = AttentionShape(batch=batch, q_heads=heads[0], kv_heads=heads[1], q_len=n, kv_len=n + kv_extra,
                           head_dim=d, dtype="fp16", causal=causal, window=window)
    tiles = TileConfig(block_m=blocks[0], block_n=blocks[1], num_stages=stages, dq="separate")
    for fast, faithful in zip(run(shape, tiles, True), run(shape, tiles, False)):
        assert_fast_matches_faithful(fast, faithful, abs_bytes=1.0)


def test_engine_and_closed_form_predict_the_separate_backward():
    shape = AttentionShape(batch=1, q_heads=16, q_len=2048, head_dim=128)
    des = predict("flash2", shape, tiles=TILES, pass_="bwd", engine="des")
    analytic = predict("flash2", shape, tiles=TILES, pass_="bwd")
    assert [k.name for k in des.kernels] == [k.name for k in analytic.kernels] == NAMES
    assert des.bytes["l2_read"] == pytest.approx(analytic.bytes["l2_read"], rel=1e-9)
    assert 1 / 3 <= des.latency_s / analytic.latency_s <= 3


def test_matches_the_triton_kernels_tile_tables():
    """kernels/flash2.py's dQ tiles are its dK/dV tiles transposed, and its delta kernel takes DELTA_ROWS rows:
    what memsim's separate-dQ backward assumes. (Tables read as data: no GPU needed.)"""
    flash2_kernels = pytest.importorskip("kernels.flash2")
    for head_dim, (m, n, warps, stages) in flash2_kernels.DKDV_SM90.items():
        assert flash2_kernels.DQ_SM90[head_dim][:2] == (n, m), head_dim
        assert flash2_kernels.DQ_SM90[head_dim][2:] == (warps, stages), head_dim
    assert flash2_kernels.DELTA_ROWS_SM90 == separate.DELTA_ROWS


@pytest.mark.parametrize("algo, pass_, message", [
    ("flash3", "bwd", "dq applies to the backward of flash2"),
    ("flash2", "fwd", "pass 'fwd' has none"),
])
def test_dq_is_refused_where_it_means_nothing(algo, pass_, message):
    with pytest.raises(MemsimError, match=message):
        predict(algo, AttentionShape(q_len=256), tiles=TILES, pass_=pass_)
    with pytest.raises(MemsimError, match="dq = 'fused' is not known; use one of atomic, separate"):
        TileConfig(dq="fused")
