"""Lightning Attention-2's schedule against the closed form and against itself (fast vs faithful)."""

import pytest
from hypothesis import given, settings, strategies as st

from memsim import AttentionShape, TileConfig, predict
from memsim.algorithms import lightning
from memsim.engine import simulate
from memsim.errors import MemsimError
from memsim.hardware import load_gpu
from memsim.schedules import lightning as sched
from memsim.schedules.steps import Load, Mma, Store, Vector

from checks import assert_fast_matches_faithful, assert_kernel_matches_closed_form

H100 = load_gpu("H100-SXM5-80GB")


def run(shape, tiles, decay=True, fast=True):
    return simulate(H100, H100.ceilings(), [sched.forward(shape, tiles, decay)], fast=fast)[0]


@pytest.mark.parametrize("decay", [True, False])
@pytest.mark.parametrize("n, d, splits", [(1000, 64, 2), (777, 80, 3), (512, 128, 4)])
def test_schedule_matches_the_closed_form(decay, n, d, splits):
    shape = AttentionShape(batch=2, q_heads=4, kv_heads=2, q_len=n, head_dim=d, causal=True)
    tiles = TileConfig(block_m=64, num_splits=splits)
    cost = lightning.forward(H100, shape, tiles, decay)
    sim = run(shape, tiles, decay)
    c = sim.counters
    print(f"decay={decay} N={n} d={d} s={splits}: {cost.tensor_flops:.4g} FLOPs (sim {c.tensor_flops:.4g}), "
          f"{cost.cuda_ops:.4g} CUDA ops (sim {c.cuda_ops:.4g}), {cost.exp_ops:.4g} exp (sim {c.exp_ops:.4g})")
    assert_kernel_matches_closed_form(cost, sim)


def test_q_k_v_read_once_o_written_once_and_one_rate_per_head():
    b, hq, hkv, n, d = 2, 16, 4, 4096, 128
    shape = AttentionShape(batch=b, q_heads=hq, kv_heads=hkv, q_len=n, head_dim=d, causal=True)
    got = run(shape, lightning.default_tiles(H100, shape)).counters.by_tensor()
    q = o = b * hq * n * d * 2
    kv = b * hkv * n * d * 2
    print(f"HBM read Q {got['Q']['hbm_read'] / 1e6:.3f} MB (= {q / 1e6:.3f}), K {got['K']['hbm_read'] / 1e6:.3f} "
          f"and V {got['V']['hbm_read'] / 1e6:.3f} MB (= {kv / 1e6:.3f}), decay {got['decay']['hbm_read']:.0f} B "
          f"(= {hq} x 4), O {(got['O']['hbm_write'] + got['O']['hbm_write_deferred']) / 1e6:.3f} MB (= {o / 1e6:.3f})")
    assert got["Q"]["hbm_read"] == q
    assert got["K"]["hbm_read"] == got["V"]["hbm_read"] == kv
    assert got["decay"]["hbm_read"] == hq * 4
    assert got["O"]["hbm_write"] + got["O"]["hbm_write_deferred"] == o


def test_block_loop_is_intra_inter_decay_store_update():
    """Per block: left product, right product, decay and sum on CUDA cores, store O, state update;
    the state itself is neither loaded nor stored, and the decay mask is built once per CTA."""
    shape = AttentionShape(batch=1, q_heads=2, q_len=256, head_dim=64, causal=True)
    program = sched.forward(shape, TileConfig(block_m=64, num_splits=2)).program(0)
    assert [type(s) for s in program.loop.compute(0)] == [Vector, Mma, Mma, Vector, Store, Mma]
    assert [type(s) for s in program.prologue] == [Load, Vector]
    assert program.prologue[1].exp_ops == 64 * 64 + 2 * 64 + 1  # M, Lambda, lambda^(B-j), lambda^B
    assert {s.tensor for s in program.loop.loads(0)} == {"Q", "K", "V"}
    assert program.epilogue == ()


@settings(max_examples=8, deadline=None)
@given(st.sampled_from([1, 2]), st.sampled_from([1, 2]), st.integers(1, 700), st.booleans(),
       st.sampled_from([32, 64, 80]), st.sampled_from([32, 64]), st.integers(1, 3), st.integers(1, 4))
def test_fast_mode_agrees_with_faithful_mode(batch, kv_heads, n, decay, d, block, stages, splits):
    shape = AttentionShape(batch=batch, q_heads=2 * kv_heads, kv_heads=kv_heads, q_len=n, head_dim=d,
                           dtype="fp16", causal=True)
    tiles = TileConfig(block_m=block, num_stages=stages, num_splits=splits)
    fast, faithful = run(shape, tiles, decay, True), run(shape, tiles, decay, False)
    assert_fast_matches_faithful(fast, faithful)


def test_predict_runs_both_variants():
    shape = AttentionShape(batch=1, q_heads=8, q_len=4096, causal=True)
    with_decay = predict("lightning", shape, engine="des")
    without = predict("lightning_nodecay", shape, engine="des")
    print(f"lightning N=4096: {with_decay.latency_s * 1e6:.1f} us with decay, {without.latency_s * 1e6:.1f} us without")
    assert with_decay.kernels[0].cuda_ops > without.kernels[0].cuda_ops
    assert with_decay.kernels[0].tensor_flops == without.kernels[0].tensor_flops


def test_bad_input_is_refused_on_one_line():
    with pytest.raises(MemsimError, match="causal") as err:
        sched.forward(AttentionShape(q_len=256), TileConfig(block_m=64))
    assert "\n" not in str(err.value)
    with pytest.raises(MemsimError, match="num_splits = 256"):
        sched.forward(AttentionShape(q_len=256, head_dim=128, causal=True), TileConfig(block_m=64, num_splits=256))
    with pytest.raises(MemsimError, match="fwd"):
        lightning.schedule(AttentionShape(q_len=256, causal=True), TileConfig(), "fwd+bwd")
