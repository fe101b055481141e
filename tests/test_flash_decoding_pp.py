"""FlashDecoding++ (Hong et al. 2023, section 3): closed form and discrete-event schedule."""

import pytest
from hypothesis import given, settings, strategies as st

from memsim import AttentionShape, TileConfig
from memsim.algorithms import flash_decoding as fd
from memsim.algorithms import flash_decoding_pp as fdpp
from memsim.algorithms.softmax import PER_ROW_TILE_OPS
from memsim.engine import simulate
from memsim.errors import MemsimError
from memsim.hardware import load_gpu
from memsim.roofline import kernel_time
from memsim.schedules import flash_decoding as fd_sched
from memsim.schedules import flash_decoding_pp as sched

H100 = load_gpu("H100-SXM5-80GB")
CEILINGS = H100.ceilings()
SHAPE = AttentionShape(batch=2, q_heads=32, kv_heads=8, q_len=1, kv_len=8192)  # 16 groups of 4 q heads
TILES = TileConfig(block_m=16, block_n=128, num_splits=4)


def analytic_s(costs) -> float:
    return sum(kernel_time(H100, CEILINGS, k).latency_s for k in costs)


def simulated(launches, fast: bool = True) -> list:
    return simulate(H100, CEILINGS, launches, fast=fast)


def test_vector_work_worked_example():
    """Per (row, key tile) Flash-Decoding spends 5 + d ops (new max, exp2 of the max change, l update,
    rescale of acc) and 1 exp; FlashDecoding++ adds the row sum to l: 1 op, no exp. Per row and split,
    Flash-Decoding normalises (d + 2 ops, 1 exp); with several splits FlashDecoding++ only tests the
    overflow flag (1 op). The combine: 6s + 2 + 2sd ops (2s + 1 exp) against s + 2 + sd + d (1 exp)."""
    d, s, groups, rows, tiles = 128, 4, 16, 4, 64  # 8192 keys in 64 tiles of 128
    split, split_pp = fd.split_kernel(H100, SHAPE, TILES), fdpp.split_kernel(H100, SHAPE, TILES)
    saved = groups * (rows * tiles * (PER_ROW_TILE_OPS + d - 1) + rows * s * (d + 2 - 1))
    saved_exp = groups * (rows * tiles + rows * s)
    print(f"split: {split.cuda_ops:.6g} -> {split_pp.cuda_ops:.6g} ops (saves {saved:.6g}), "
          f"{split.exp_ops:.6g} -> {split_pp.exp_ops:.6g} exp")
    assert split.cuda_ops - split_pp.cuda_ops == saved
    assert split.exp_ops - split_pp.exp_ops == saved_exp
    combine, combine_pp = fd.combine_kernel(H100, SHAPE, TILES), fdpp.combine_kernel(H100, SHAPE, TILES)
    out_rows = 2 * 32
    print(f"combine: {combine.cuda_ops:.6g} -> {combine_pp.cuda_ops:.6g} ops")
    assert combine.cuda_ops == out_rows * (6 * s + 2 + 2 * s * d)
    assert combine_pp.cuda_ops == out_rows * (s + 2 + s * d + d)
    assert (combine.exp_ops, combine_pp.exp_ops) == (out_rows * (2 * s + 1), out_rows)


@pytest.mark.parametrize("splits", [1, 4])
def test_same_grid_tiles_and_bytes_as_flash_decoding(splits):
    tiles = TileConfig(block_m=16, block_n=128, num_splits=splits)
    plain, pp = fd.kernels(H100, SHAPE, tiles, "fwd"), fdpp.kernels(H100, SHAPE, tiles, "fwd", 0.0)
    assert len(plain) == len(pp)
    for a, b in zip(plain, pp):
        renamed = {("L_partial" if k == "LSE_partial" else k): v for k, v in a.traffic.items()}
        assert dict(b.traffic) == renamed
        assert (b.grid_ctas, b.tensor_flops, b.smem_bytes_per_cta) == (
            a.grid_ctas, a.tensor_flops, a.smem_bytes_per_cta)
        assert b.cuda_ops < a.cuda_ops and b.exp_ops <= a.exp_ops


@pytest.mark.parametrize("p, groups", [(0.0, 0), (0.25, 4), (1.0, 16)])
def test_schedule_matches_the_closed_form(p, groups):
    """FLOPs, ops and L2 bytes exactly; HBM bytes too (all fits in L2). 16 groups x p recomputed."""
    costs = fdpp.kernels(H100, SHAPE, TILES, "fwd", p)
    results = simulated(sched.forward(SHAPE, TILES, p))
    assert fdpp.recompute_groups(SHAPE, p) == groups
    assert [r.launch.name for r in results] == [c.name for c in costs]
    assert len(costs) == 2 + (2 if groups else 0)
    for cost, result in zip(costs, results):
        c, sim = result.counters, result.counters.totals()
        assert (c.tensor_flops, c.cuda_ops, c.exp_ops) == pytest.approx(
            (cost.tensor_flops, cost.cuda_ops, cost.exp_ops), rel=1e-12)
        assert set(c.by_tensor()) == set(cost.traffic)
        for tensor, traffic in cost.traffic.items():
            assert (c.l2_read[tensor], c.l2_write[tensor], c.hbm_read[tensor]) == pytest.approx(
                (traffic.l2_read, traffic.l2_write, traffic.hbm_read), rel=1e-12), tensor
        assert sim["hbm_write"] + sim["hbm_write_deferred"] == pytest.approx(cost.total.hbm_write, rel=1e-12)


def test_less_vector_work_than_flash_decoding_in_the_simulation_too():
    for a, b in zip(simulated(fd_sched.forward(SHAPE, TILES)), simulated(sched.forward(SHAPE, TILES, 0.0))):
        print(f"{a.launch.name}: {a.counters.cuda_ops:.6g} ops; {b.launch.name}: {b.counters.cuda_ops:.6g}")
        assert b.counters.cuda_ops < a.counters.cuda_ops
        assert b.counters.exp_ops < a.counters.exp_ops
        assert b.counters.totals() == a.counters.totals()  # same bytes, same names' sums


def test_every_row_overflowing_costs_at_least_flash_decoding():
    """overflow_probability = 1: the first pass is wasted and Flash-Decoding runs over every group."""
    shape = AttentionShape(batch=1, q_heads=32, kv_heads=8, q_len=1, kv_len=32768)
    tiles = fdpp.default_tiles(H100, shape)
    plain_a = analytic_s(fd.kernels(H100, shape, tiles, "fwd"))
    pp_a = analytic_s(fdpp.kernels(H100, shape, tiles, "fwd", 1.0))
    plain_d = sum(r.latency_s for r in simulated(fd_sched.forward(shape, tiles)))
    pp_d = sum(r.latency_s for r in simulated(sched.forward(shape, tiles, 1.0)))
    print(f"analytic: Flash-Decoding {plain_a * 1e6:.1f} us, FlashDecoding++ (p = 1) {pp_a * 1e6:.1f} us; "
          f"simulated: {plain_d * 1e6:.1f} us, {pp_d * 1e6:.1f} us")
    assert pp_a >= plain_a and pp_d >= plain_d
    recompute = fdpp.kernels(H100, shape, tiles, "fwd", 1.0)[-2:]
    for a, b in zip(fd.kernels(H100, shape, tiles, "fwd"), recompute):
        assert (b.total, b.tensor_flops, b.cuda_ops) == (a.total, a.tensor_flops, a.cuda_ops)


def test_rare_overflow_is_never_slower_than_flash_decoding():
    """Batch 1, 8 kv heads: the default 1% per row rounds to no group recomputed."""
    shape = AttentionShape(batch=1, q_heads=32, kv_heads=8, q_len=1, kv_len=32768)
    tiles = fdpp.default_tiles(H100, shape)
    assert fdpp.recompute_groups(shape, fdpp.DEFAULT_OVERFLOW_PROBABILITY) == 0
    plain_a = analytic_s(fd.kernels(H100, shape, tiles, "fwd"))
    assert analytic_s(fdpp.ALGORITHM.kernels(H100, shape, tiles, "fwd")) <= plain_a
    pp_d = sum(r.latency_s for r in simulated(fdpp.ALGORITHM.schedule(shape, tiles, "fwd")))
    # FlashDecoding++'s combine divides by the summed denominators after its loop: one dependent step more
    # than Flash-Decoding's, whose weights are normalised up front (memsim.engine.sharing)
    one_step_s = CEILINGS.dependent_step_latency_s
    assert pp_d <= sum(r.latency_s for r in simulated(fd_sched.forward(shape, tiles))) + one_step_s


@pytest.mark.parametrize("p, batch, kv_heads, groups", [
    (0.01, 2, 8, 0), (0.03, 2, 8, 0), (0.032, 2, 8, 1), (0.25, 2, 8, 4), (1.0, 2, 8, 16), (0.01, 64, 8, 5)])
def test_recompute_groups_round_to_the_nearest(p, batch, kv_heads, groups):
    shape = AttentionShape(batch=batch, q_heads=4 * kv_heads, kv_heads=kv_heads, q_len=1, kv_len=1024)
    assert fdpp.recompute_groups(shape, p) == groups


def test_factory_overrides_the_overflow_probability():
    default, always = fdpp.ALGORITHM, fdpp.algorithm(overflow_probability=1.0)
    assert [k.name for k in default.kernels(H100, SHAPE, TILES, "fwd")] == ["flash_decoding_pp_split",
                                                                             "flash_decoding_pp_combine"]
    assert [k.name for k in always.kernels(H100, SHAPE, TILES, "fwd")][2:] == ["flash_decoding_pp_recompute_split",
                                                                               "flash_decoding_pp_recompute_combine"]
    assert [launch.name for launch in always.schedule(SHAPE, TILES, "fwd")] == [
        k.name for k in always.kernels(H100, SHAPE, TILES, "fwd")]
    assert any("overflow_probability = 0.01 per row" in a for a in default.assumptions)
    assert always.default_tiles(H100, SHAPE) == fd.default_tiles(H100, SHAPE)


@pytest.mark.parametrize("bad", [1.5, -0.1, "0.5", True])
def test_bad_probability_is_refused_with_one_line(bad):
    with pytest.raises(MemsimError) as err:
        fdpp.algorithm(overflow_probability=bad)
    assert "overflow_probability" in str(err.value) and "\n" not in str(err.value)


def test_prefill_is_refused():
    with pytest.raises(MemsimError) as err:
        fdpp.kernels(H100, AttentionShape(q_len=512), TILES, "fwd")
    assert "flash_decoding_pp" in str(err.value)


@settings(max_examples=8, deadline=None)
@given(batch=st.integers(1, 3), kv_heads=st.sampled_from([1, 2, 4]), group=st.sampled_from([1, 4, 8]),
       q_len=st.integers(1, 3), kv_len=st.integers(16, 16000), causal=st.booleans(), block_n=st.sampled_from([32, 64]),
       splits=st.integers(1, 5), p=st.sampled_from([0.0, 0.5, 1.0]))
def test_fast_mode_agrees_with_faithful_mode(batch, kv_heads, group, q_len, kv_len, causal, block_n, splits, p):
    shape = AttentionShape(batch=batch, q_heads=kv_heads * group, kv_heads=kv_heads, q_len=min(q_len, kv_len),
                           kv_len=kv_len, dtype="fp16", causal=causal)
    tiles = TileConfig(block_m=fd.decode_block_m(shape), block_n=block_n,
                       num_splits=min(splits, fd.key_tiles(shape, block_n)))
    launches = sched.forward(shape, tiles, p)
    for fast, faithful in zip(simulated(launches, True), simulated(launches, False), strict=True):
        assert fast.latency_s == pytest.approx(faithful.latency_s, rel=0.01)
        for key, value in faithful.counters.totals().items():
            assert fast.counters.totals()[key] == pytest.approx(value, rel=0.01, abs=1.0)
        assert fast.counters.cuda_ops == pytest.approx(faithful.counters.cuda_ops, rel=1e-9)
        assert fast.counters.tensor_flops == pytest.approx(faithful.counters.tensor_flops, rel=1e-9)
