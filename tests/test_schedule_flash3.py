"""FlashAttention-3's schedules (memsim.schedules.flash3) against fast mode and the closed form."""

import dataclasses

import pytest
from hypothesis import given, settings, strategies as st

from memsim import AttentionShape, MemsimError
from memsim.algorithms import flash3
from memsim.engine import simulate
from memsim.hardware import load_gpu
from memsim.schedules import flash2 as flash2_schedule
from memsim.schedules import flash3 as schedule
from memsim.schedules.steps import Mma

from checks import assert_engine_runs_the_rooflines_kernels, assert_fast_matches_faithful, assert_matches_closed_form

H100 = load_gpu("H100-SXM5-80GB")
CEILINGS = H100.ceilings()
LATENCY_FACTOR = 3.0  # engine / roofline on every pass sampled: 1.0x - 2.4x per kernel


def launches(shape, pass_):
    return flash3.schedule(shape, flash3.default_tiles(H100, shape), pass_)


@settings(max_examples=6, deadline=None)
@given(batch=st.sampled_from([1, 2]), heads=st.sampled_from([(2, 2), (4, 2)]), n=st.integers(32, 700),
       causal=st.booleans(), d=st.sampled_from([64, 128]), fwd_dtype=st.sampled_from(["bf16", "fp8"]))
def test_fast_mode_agrees_with_faithful_mode(batch, heads, n, causal, d, fwd_dtype):
    base = dict(batch=batch, q_heads=heads[0], kv_heads=heads[1], q_len=n, head_dim=d, causal=causal)
    work = launches(AttentionShape(**base, dtype=fwd_dtype), "fwd") + launches(AttentionShape(**base), "bwd")
    fast, faithful = simulate(H100, CEILINGS, work, fast=True), simulate(H100, CEILINGS, work, fast=False)
    for a, b in zip(fast, faithful):
        assert_fast_matches_faithful(a, b, abs_bytes=1.0)


@pytest.mark.parametrize("shape, pass_", [
    (AttentionShape(batch=2, q_heads=4, q_len=512, head_dim=64), "fwd+bwd"),
    (AttentionShape(batch=1, q_heads=8, kv_heads=2, q_len=300, kv_len=700, head_dim=128, causal=True), "fwd+bwd"),
    (AttentionShape(batch=1, q_heads=4, kv_heads=2, q_len=700, head_dim=128, causal=True, dtype="fp8"), "fwd"),
    (AttentionShape(batch=1, q_heads=2, q_len=400, head_dim=256, dtype="fp8"), "fwd"),
], ids=["mha", "gqa-causal-uneven", "fp8-causal", "fp8-d256"])
def test_work_and_every_byte_match_the_closed_form_when_all_fits_in_l2(shape, pass_):
    tiles = flash3.default_tiles(H100, shape)
    costs = flash3.kernels(H100, shape, tiles, pass_)
    results = simulate(H100, CEILINGS, flash3.schedule(shape, tiles, pass_))
    assert_matches_closed_form(costs, results)


def test_fp8_runs_fp8_matmuls_writes_o_in_bf16_and_keeps_a_transposed_v():
    shape = AttentionShape(batch=1, q_heads=2, q_len=384, head_dim=128, dtype="fp8")
    (fwd,) = launches(shape, "fwd")
    program = fwd.program(0)
    assert {s.dtype for s in program.loop.compute(0) if isinstance(s, Mma)} == {"fp8"}
    assert fwd.smem_buffers["V tiles transposed"] == fwd.smem_buffers["V tiles"]
    o = simulate(H100, CEILINGS, [fwd])[0].counters.by_tensor()["O"]
    print(f"\nO: {o['l2_write']:.0f} B written for {2 * 384 * 128} fp8 elements")
    assert o["l2_write"] == 2 * 384 * 128 * 2  # bf16


def test_softmax_overlaps_the_matmuls_in_the_forward_and_the_backward_and_saves_time():
    shape = AttentionShape(batch=1, q_heads=16, q_len=2048, head_dim=128)
    work = launches(shape, "fwd+bwd")
    mains = [x for x in work if x.name in ("flash3_fwd", "flash3_bwd")]
    assert len(mains) == 2 and all(x.program(0).loop.overlap_vector for x in mains)
    # The same forward without the overlap: FA2's schedule on FA3's tiles, warps and registers.
    fwd = mains[0]
    serial = dataclasses.replace(flash2_schedule.forward(shape, flash3.default_tiles(H100, shape)), name=fwd.name,
                                 warps_per_cta=fwd.warps_per_cta, registers_per_thread=fwd.registers_per_thread)
    overlapped_s, serial_s = (simulate(H100, CEILINGS, [x])[0].latency_s for x in (fwd, serial))
    print(f"\nforward: {overlapped_s * 1e6:.1f} us overlapped, {serial_s * 1e6:.1f} us in turn")
    assert overlapped_s < serial_s


def test_backward_uses_fa3s_backward_tiles_and_warps():
    shape = AttentionShape(batch=1, q_heads=2, q_len=512, head_dim=128)
    main = next(x for x in launches(shape, "bwd") if x.name == "flash3_bwd")
    tiles = flash3.backward_tiles(shape)
    assert main.warps_per_cta == flash3.BWD_CONSUMER_WARPS + flash3.PRODUCER_WARPS
    assert main.grid == 2 * -(-512 // tiles.block_n)


def test_fp8_backward_is_refused():
    with pytest.raises(MemsimError, match="fp8"):
        schedule.backward(AttentionShape(q_heads=2, q_len=256, dtype="fp8"))


@pytest.mark.parametrize("pass_", ["fwd", "bwd", "fwd+bwd"])
def test_predict_with_the_engine_runs_every_pass(pass_):
    shape = AttentionShape(batch=1, q_heads=4, kv_heads=2, q_len=1024, head_dim=128, causal=True)
    q_bytes, kv_bytes = 4 * 1024 * 128 * 2, 2 * 1024 * 128 * 2
    compulsory = q_bytes + 2 * kv_bytes + (2 * q_bytes if "bwd" in pass_ else 0)  # Q, K, V (+ O, dO)
    floor_s = compulsory / CEILINGS.hbm_bandwidth_bytes_per_s
    assert_engine_runs_the_rooflines_kernels("flash3", shape, pass_, floor_s, LATENCY_FACTOR)
