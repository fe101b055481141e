"""The discrete-event engine against itself (fast vs faithful) and against the closed form."""

import pytest
from hypothesis import given, settings, strategies as st

from memsim import AttentionShape, TileConfig, predict
from memsim.algorithms.flash2 import forward as closed_form
from memsim.engine import simulate
from memsim.hardware import load_gpu
from memsim.schedules.flash2 import forward as schedule

H100 = load_gpu("H100-SXM5-80GB")
FIELDS = ("hbm_read", "hbm_write", "l2_read", "l2_write", "hbm_write_deferred")


def run(shape, tiles, fast):
    return simulate(H100, H100.ceilings(), [schedule(shape, tiles)], fast=fast)[0]


def test_design_md_case_bytes_match_the_closed_form_exactly():
    shape = AttentionShape(batch=1, q_heads=16, q_len=4096)
    tiles = TileConfig()
    sim = run(shape, tiles, fast=True).counters.totals()
    cf = closed_form(H100, shape, tiles).total
    print({k: f"{v / 1e6:.1f} MB" for k, v in sim.items()})
    for key in ("hbm_read", "l2_read", "l2_write"):
        assert sim[key] == pytest.approx(getattr(cf, key), rel=1e-9)
    # Everything written reaches HBM, during the kernel or after it (O stays dirty in L2 here).
    assert sim["hbm_write"] + sim["hbm_write_deferred"] == pytest.approx(cf.hbm_write, rel=1e-9)


@settings(max_examples=8, deadline=None)
@given(st.sampled_from([1, 2]), st.sampled_from([1, 2, 4]), st.integers(64, 1100), st.booleans(),
       st.sampled_from([64, 128]), st.sampled_from([(64, 32), (128, 64)]), st.integers(1, 3))
def test_fast_mode_agrees_with_faithful_mode(batch, kv_heads, n, causal, d, blocks, stages):
    shape = AttentionShape(batch=batch, q_heads=2 * kv_heads, kv_heads=kv_heads, q_len=n, head_dim=d,
                           dtype="fp16", causal=causal)
    tiles = TileConfig(block_m=blocks[0], block_n=blocks[1], num_stages=stages)
    fast, faithful = run(shape, tiles, True), run(shape, tiles, False)
    assert fast.latency_s == pytest.approx(faithful.latency_s, rel=0.01)
    for key in FIELDS:
        assert fast.counters.totals()[key] == pytest.approx(faithful.counters.totals()[key], rel=0.01)
    assert fast.counters.tensor_flops == pytest.approx(faithful.counters.tensor_flops, rel=1e-9)
    assert fast.counters.cuda_ops == pytest.approx(faithful.counters.cuda_ops, rel=1e-9)


def test_work_matches_the_closed_form():
    shape = AttentionShape(batch=2, q_heads=4, q_len=1000, causal=True)
    tiles = TileConfig()
    sim = run(shape, tiles, fast=True).counters
    cf = closed_form(H100, shape, tiles)
    assert sim.tensor_flops == pytest.approx(cf.tensor_flops, rel=1e-9)
    assert sim.cuda_ops == pytest.approx(cf.cuda_ops, rel=1e-9)
    assert sim.exp_ops == pytest.approx(cf.exp_ops, rel=1e-9)


def test_hbm_reads_between_compulsory_and_l2_reads():
    shape = AttentionShape(batch=2, q_heads=32, q_len=16384)  # K/V 268 MB: far more than L2
    sim = run(shape, TileConfig(), fast=True).counters.totals()
    compulsory = 3 * 2 * 32 * 16384 * 128 * 2
    assert compulsory <= sim["hbm_read"] <= sim["l2_read"]


def test_more_bandwidth_or_more_sms_is_never_slower():
    import dataclasses
    shape = AttentionShape(batch=1, q_heads=8, q_len=1, kv_len=32768)  # decode: memory bound
    base = predict("flash2", shape, H100, engine="des").latency_s
    wider = dataclasses.replace(H100, hbm_bandwidth_bytes_per_s=2 * H100.hbm_bandwidth_bytes_per_s, calibration=None)
    assert predict("flash2", shape, wider, engine="des").latency_s <= base
    assert predict("flash2", shape, dataclasses.replace(H100, calibration=None), engine="des").latency_s <= base * 1.2


def test_deterministic():
    shape = AttentionShape(q_len=2048, causal=True)
    assert predict("flash2", shape, engine="des").as_dict() == predict("flash2", shape, engine="des").as_dict()


def test_tile_that_does_not_fit_is_refused():
    from memsim.errors import MemsimError
    with pytest.raises(MemsimError, match="shared memory"):
        predict("flash2", AttentionShape(), engine="des", tiles=TileConfig(block_m=256, block_n=256, num_stages=4))
