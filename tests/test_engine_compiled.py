"""The compiled engine (memsim.engine.compiled) against the SimPy engine, its reference: the same launches give the
same counters, bytes per tensor and times to the last bit, in fast and faithful mode, over every algorithm, random
small shapes and tile configs, the fast mode's cutoff and more than one GPU. Busy seconds are sums over the SM
groups alive, which the SimPy engine keeps in a set (its order is Python's hash order): they agree to rounding."""

import dataclasses
import math
from unittest import mock

import pytest
from hypothesis import given, settings, strategies as st

from memsim import AttentionShape, TileConfig
from memsim.algorithms import ALGORITHMS
from memsim.engine import compiled, extrapolate, simulate
from memsim.errors import MemsimError
from memsim.hardware import load_gpu
from memsim.predict import run
from memsim.schedules.flash2 import forward as flash2_schedule

from checks import attention_shapes

pytestmark = pytest.mark.skipif(not compiled.available(), reason="the compiled engine is not built (pip install -e .)")

H100 = load_gpu("H100-SXM5-80GB")
BUSY_ROUNDING = 1e-12
BYTE_GROUPS = ("l2_read", "l2_write", "hbm_read", "hbm_write", "hbm_write_deferred")
SCALARS = ("tensor_flops", "cuda_ops", "exp_ops", "smem_bytes")


def on_simpy():
    """The SimPy engine, whatever is built."""
    return mock.patch.object(compiled, "_core", None)


def assert_same(reference: list, results: list) -> None:
    assert len(reference) == len(results)
    for a, b in zip(reference, results):
        name = a.launch.name
        assert (a.start_s, a.end_s) == (b.start_s, b.end_s), name
        assert a.pooled_joins == b.pooled_joins, name
        assert a.extrapolated_ctas == b.extrapolated_ctas, name
        for group in BYTE_GROUPS:
            # the same tensors in the same order (totals are summed in that order), with the same bytes
            assert list(getattr(a.counters, group).items()) == list(getattr(b.counters, group).items()), (name, group)
        for scalar in SCALARS:
            assert getattr(a.counters, scalar) == getattr(b.counters, scalar), (name, scalar)
        assert [(c.pids, c.slots, c.start_s, c.end_s) for c in a.cohorts] == \
            [(c.pids, c.slots, c.start_s, c.end_s) for c in b.cohorts], name
        assert a.busy_s.keys() == b.busy_s.keys()
        for unit, busy in a.busy_s.items():
            assert math.isclose(busy, b.busy_s[unit], rel_tol=BUSY_ROUNDING, abs_tol=1e-18), (name, unit)


def both(algo: str, shape: AttentionShape, **options) -> tuple[list, list]:
    with on_simpy():
        _, reference = run(algo, shape, engine="des", **options)
    _, results = run(algo, shape, engine="des", **options)
    return reference, results


def small_cases():
    return st.sampled_from(sorted(n for n, a in ALGORITHMS.items() if a.schedule is not None)).flatmap(
        lambda name: st.tuples(st.just(name), attention_shapes(
            ALGORITHMS[name], kv_heads=(1, 2), groups=(1, 2, 4), kv_len=(16, 2048), q_len=(1, 1024), batch=(1, 2),
            head_dims=(64, 128), dtypes=("fp16",))))


@settings(max_examples=40, deadline=None)
@given(small_cases(), st.booleans())
def test_every_algorithm_agrees_with_the_simpy_engine(case, fast):
    algo, shape = case
    assert_same(*both(algo, shape, fast=fast))


@pytest.mark.parametrize("algo,pass_", [("flash2", "bwd"), ("flash2", "fwd+bwd"), ("flash1", "fwd"),
                                        ("flash3", "fwd"), ("standard", "fwd"), ("linear", "fwd")])
def test_each_pass_agrees(algo, pass_):
    shape = AttentionShape(batch=1, q_heads=4, kv_heads=2, q_len=1536, head_dim=64, causal=True)
    assert_same(*both(algo, shape, pass_=pass_))


@settings(max_examples=25, deadline=None)
@given(st.sampled_from([1, 2]), st.sampled_from([1, 2, 4]), st.integers(64, 2500), st.booleans(),
       st.sampled_from([64, 128]), st.sampled_from([(64, 32), (64, 64), (128, 64), (128, 32)]), st.integers(1, 3),
       st.sampled_from([4, 8]), st.booleans())
def test_flash2_tile_configs_agree(batch, kv_heads, n, causal, d, blocks, stages, warps, fast):
    shape = AttentionShape(batch=batch, q_heads=2 * kv_heads, kv_heads=kv_heads, q_len=n, head_dim=d, causal=causal)
    tiles = TileConfig(block_m=blocks[0], block_n=blocks[1], num_stages=stages, num_warps=warps)
    assert_same(*both("flash2", shape, tiles=tiles, fast=fast))


@pytest.mark.parametrize("gpu", ["h200-sxm-141gb", "a100-sxm4-80gb", "l40s"])
def test_other_gpus_agree(gpu):
    shape = AttentionShape(batch=2, q_heads=8, kv_heads=2, q_len=2048, head_dim=128, causal=True)
    assert_same(*both("flash2", shape, gpu=gpu))


def test_a_small_l2_with_write_backs_mid_kernel_agrees():
    """Private tiles of merged cohorts evicted and written back member by member, tiles rewritten in place."""
    gpu = dataclasses.replace(H100, l2_bytes=2**20)
    ceilings = dataclasses.replace(gpu.ceilings(), l2_dirty_lifetime_bytes=2**19, l2_dirty_resident_bytes=2**18)
    launches = [flash2_schedule(AttentionShape(batch=2, q_heads=8, q_len=1024, head_dim=64), TileConfig())]
    for fast in (True, False):
        with on_simpy():
            reference = simulate(gpu, ceilings, launches, fast=fast)
        assert_same(reference, simulate(gpu, ceilings, launches, fast=fast, compiled=True))


def test_a_cut_off_launch_agrees():
    """Fast mode's cutoff (memsim.engine.extrapolate) settles at the same CTA and adds the same rest."""
    shape = AttentionShape(batch=4, q_heads=32, q_len=4096, head_dim=64, causal=True)
    tiles = TileConfig(block_m=128, block_n=64, num_stages=2)
    launch = flash2_schedule(shape, tiles)
    assert extrapolate.watched(launch, 132 * 2)
    reference, results = both("flash2", shape, tiles=tiles)
    assert results[0].extrapolated_ctas > 0
    assert_same(reference, results)


def test_progress_is_reported_as_on_the_simpy_engine():
    shape = AttentionShape(batch=1, q_heads=8, q_len=2048, head_dim=64, causal=True)
    heard = {}
    for name, context in (("simpy", on_simpy), ("compiled", mock.MagicMock)):
        calls = []
        with context():
            run("flash2", shape, engine="des", progress=lambda done, total: calls.append((done, total)))
        heard[name] = calls
    assert heard["simpy"] == heard["compiled"]
    assert heard["compiled"][-1][0] == heard["compiled"][-1][1]


def test_a_dtype_without_a_rate_is_refused_as_on_the_simpy_engine():
    ceilings = dataclasses.replace(H100.ceilings(), tensor_flops_per_s={"bf16": 1e15})
    launches = [flash2_schedule(AttentionShape(q_heads=2, q_len=256, dtype="fp16"), TileConfig())]
    errors = []
    for use in (False, True):
        with pytest.raises(MemsimError) as raised:
            if use:
                simulate(H100, ceilings, launches, compiled=True)
            else:
                with on_simpy():
                    simulate(H100, ceilings, launches)
        errors.append(str(raised.value))
    assert errors[0] == errors[1]
    assert "fp16" in errors[0]


def test_tracing_runs_on_the_simpy_engine_only():
    launches = [flash2_schedule(AttentionShape(q_heads=2, q_len=256), TileConfig())]
    with pytest.raises(ValueError, match="does not trace"):
        simulate(H100, H100.ceilings(), launches, trace=True, compiled=True)
    assert simulate(H100, H100.ceilings(), launches, trace=True)[0].unit_intervals["hbm"]  # traced, on SimPy
