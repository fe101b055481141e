"""Linear attention's schedules against the closed form and against themselves (fast vs faithful)."""

import pytest
from hypothesis import given, settings, strategies as st

from memsim import AttentionShape, TileConfig, predict
from memsim.algorithms import linear
from memsim.engine import simulate
from memsim.errors import MemsimError
from memsim.hardware import load_gpu
from memsim.schedules import linear as sched
from memsim.schedules.steps import Load, Store

from checks import assert_fast_matches_faithful, assert_kernel_matches_closed_form, assert_same_kernels

H100 = load_gpu("H100-SXM5-80GB")


def simulated(shape, tiles, fast=True):
    return simulate(H100, H100.ceilings(), sched.forward(shape, tiles), fast=fast)


CASES = {
    "causal, one split, GQA": (AttentionShape(batch=2, q_heads=4, kv_heads=2, q_len=1000, head_dim=64, causal=True),
                               TileConfig(block_m=64, num_splits=1)),
    "causal, 3 value splits of d=80": (AttentionShape(batch=1, q_heads=2, q_len=777, head_dim=80, causal=True),
                                       TileConfig(block_m=32, num_splits=3)),
    "causal, int8 KV cache": (AttentionShape(batch=1, q_heads=2, q_len=512, head_dim=64, kv_dtype="int8", causal=True),
                              TileConfig(block_m=64, num_splits=2)),
    "non-causal, one split (stored)": (AttentionShape(batch=2, q_heads=4, kv_heads=2, q_len=1000, head_dim=64),
                                       TileConfig(block_m=128, block_n=64, num_warps=8, num_splits=1)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_schedule_matches_the_closed_form(case):
    shape, tiles = CASES[case]
    costs = linear.kernels(H100, shape, tiles, "fwd")
    results = simulated(shape, tiles)
    assert_same_kernels(costs, results)
    for cost, result in zip(costs, results):
        print(f"{case}: {cost.name} {cost.tensor_flops:.4g} FLOPs, {cost.cuda_ops:.4g} CUDA ops, "
              f"L2 read {cost.total.l2_read / 1e6:.3f} MB, HBM read {cost.total.hbm_read / 1e6:.3f} MB")
        assert_kernel_matches_closed_form(cost, result, abs_bytes=1e-6)


NON_CAUSAL_SPLIT = (AttentionShape(batch=1, q_heads=4, kv_heads=2, q_len=1000, head_dim=64),
                    TileConfig(block_m=128, block_n=64, num_warps=8, num_splits=4))


def test_atomic_state_reduction_into_a_zeroed_buffer_matches_the_closed_form():
    """Split states are added in L2 with atomics into a buffer zeroed first: the state's lines come from HBM once
    per head."""
    shape, tiles = NON_CAUSAL_SPLIT
    costs, results = linear.kernels(H100, shape, tiles, "fwd"), simulated(shape, tiles)
    assert_same_kernels(costs, results)
    assert [c.name for c in costs] == ["linear_state_zero", "linear_state", "linear_output"]
    for cost, result in zip(costs, results):
        assert_kernel_matches_closed_form(cost, result, abs_bytes=1e-6)


@pytest.mark.parametrize("sem", ["acq_rel", "relaxed"])
def test_ordered_atomics_hand_the_state_back_to_the_sm_and_relaxed_ones_nothing(sem):
    shape, tiles = NON_CAUSAL_SPLIT[0], TileConfig(block_m=128, block_n=64, num_warps=8, num_splits=4, atomic_sem=sem)
    sim = simulated(shape, tiles)[1].counters.by_tensor()["KV_state"]
    returned = shape.batch * shape.kv_heads * 4 * linear.state_bytes_per_head(shape.head_dim)
    assert sim["l2_read"] == (returned if sem == "acq_rel" else 0)
    assert sim["l2_read"] == linear.kernels(H100, shape, tiles, "fwd")[1].traffic["KV_state"].l2_read


@pytest.mark.parametrize("causal", [True, False])
def test_q_k_v_read_once_and_o_written_once(causal):
    b, hq, hkv, n, d = 2, 8, 2, 2048, 128
    shape = AttentionShape(batch=b, q_heads=hq, kv_heads=hkv, q_len=n, head_dim=d, causal=causal)
    results = simulated(shape, linear.default_tiles(H100, shape))
    by_tensor = {}
    for r in results:
        for tensor, got in r.counters.by_tensor().items():
            by_tensor.setdefault(tensor, []).append(got)

    def total(tensor, *keys):
        return sum(got[k] for got in by_tensor[tensor] for k in keys)

    q = o = b * hq * n * d * 2
    kv = b * hkv * n * d * 2
    print(f"causal={causal}: HBM read Q {total('Q', 'hbm_read') / 1e6:.3f} MB (= {q / 1e6:.3f}), "
          f"K {total('K', 'hbm_read') / 1e6:.3f} and V {total('V', 'hbm_read') / 1e6:.3f} MB (= {kv / 1e6:.3f}), "
          f"O written {total('O', 'hbm_write', 'hbm_write_deferred') / 1e6:.3f} MB (= {o / 1e6:.3f})")
    assert total("Q", "hbm_read") == q
    assert total("K", "hbm_read") == total("V", "hbm_read") == kv
    assert total("O", "hbm_write", "hbm_write_deferred") == o


def test_causal_state_never_leaves_the_chip():
    """Every CTA loads only Q, K, V chunks and stores only O chunks: S is neither loaded nor stored."""
    shape = AttentionShape(batch=1, q_heads=2, q_len=300, head_dim=64, causal=True)
    tiles = TileConfig(block_m=64, num_splits=2)
    launch = sched.forward(shape, tiles)[0]
    for pid in range(launch.grid):
        program = launch.program(pid)
        steps = list(program.prologue) + list(program.epilogue)
        for i in range(program.loop.iterations):
            steps += list(program.loop.loads(i)) + list(program.loop.compute(i))
        assert {s.tensor for s in steps if isinstance(s, Load)} == {"Q", "K", "V"}
        assert {s.tensor for s in steps if isinstance(s, Store)} == {"O"}


@settings(max_examples=8, deadline=None)
@given(st.sampled_from([1, 2]), st.sampled_from([1, 2]), st.integers(1, 700), st.booleans(),
       st.sampled_from([32, 64]), st.sampled_from([32, 64]), st.integers(1, 3), st.integers(1, 3))
def test_fast_mode_agrees_with_faithful_mode(batch, kv_heads, n, causal, d, block, stages, splits):
    shape = AttentionShape(batch=batch, q_heads=2 * kv_heads, kv_heads=kv_heads, q_len=n, head_dim=d,
                           dtype="fp16", causal=causal)
    splits = min(splits, -(-n // block))  # the non-causal state kernel needs a chunk per split
    tiles = TileConfig(block_m=block, block_n=block, num_stages=stages, num_splits=splits)
    for fast, faithful in zip(simulated(shape, tiles, True), simulated(shape, tiles, False)):
        assert_fast_matches_faithful(fast, faithful)


def test_predict_runs_the_schedule():
    shape = AttentionShape(batch=1, q_heads=8, q_len=4096, causal=True)
    des, analytic = predict("linear", shape, engine="des"), predict("linear", shape)
    print(f"linear causal N=4096: des {des.latency_s * 1e6:.1f} us, analytic {analytic.latency_s * 1e6:.1f} us")
    assert des.kernels[0].tensor_flops == pytest.approx(analytic.kernels[0].tensor_flops, rel=1e-9)
    assert des.latency_s > 0


def test_more_splits_than_key_chunks_is_refused():
    shape = AttentionShape(batch=1, q_heads=2, q_len=100, head_dim=64)
    with pytest.raises(MemsimError, match="num_splits = 4") as err:
        sched.forward(shape, TileConfig(block_n=64, num_splits=4))
    assert "\n" not in str(err.value)
    with pytest.raises(MemsimError, match="fwd"):
        linear.schedule(shape, TileConfig(), "bwd")
