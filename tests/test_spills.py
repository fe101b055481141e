"""Register spills (TileConfig.spill_bytes_per_iteration / _per_cta) in the FA2 forward, the decode split kernel and
the FA2 backward's dK/dV kernel: both engines, the CLI, scenarios, and the kernel properties validation.fit_spills
reads from the H100 probes."""

import dataclasses

import pytest
from hypothesis import given, settings, strategies as st

from memsim import AttentionShape, TileConfig, load_gpu, predict
from memsim.algorithms.flash2 import forward as closed_form
from memsim.algorithms.tiling import q_block_tiles
from memsim.cli.main import main
from memsim.engine import simulate
from memsim.errors import MemsimError
from memsim.occupancy import occupancy
from memsim.schedules.flash2 import forward as schedule

from checks import assert_refused_on_one_line, assert_usage_error_on_one_line, written_to_hbm

H100 = load_gpu("H100-SXM5-80GB")


def spilling(spill_iteration: int, spill_cta: int, **tile) -> TileConfig:
    return TileConfig(**{"block_m": 128, "block_n": 64, "num_warps": 4, "num_stages": 1, **tile},
                      spill_bytes_per_iteration=spill_iteration, spill_bytes_per_cta=spill_cta)


@pytest.mark.parametrize("field", ["spill_bytes_per_iteration", "spill_bytes_per_cta"])
@pytest.mark.parametrize("value", [-1, 1.5, True, "7168"])
def test_spill_bytes_must_be_whole_and_not_negative(field, value):
    assert_refused_on_one_line(lambda: TileConfig(**{field: value}), [field, "0 or more"])


def test_spills_are_refused_where_no_schedule_models_them():
    shape = AttentionShape(q_heads=4, q_len=1024)
    assert_refused_on_one_line(lambda: predict("flash3", shape, tiles=spilling(7168, 0)), ["flash2", "flash3"])
    assert_refused_on_one_line(lambda: predict("flash2", shape, tiles=spilling(0, 8192), pass_="bwd"),
                               ["dK/dV", "separate", "'atomic'"])  # the atomic-dQ backward: no model of its spills
    separate = dataclasses.replace(spilling(0, 8192), dq="separate")
    assert_refused_on_one_line(lambda: predict("flash2", shape, tiles=separate, pass_="fwd+bwd"),
                               ["one pass", "fwd+bwd"])


def slots_and_iterations(shape, tiles):
    launch = schedule(shape, tiles)
    slots = occupancy(H100, launch.smem_bytes_per_cta, launch.warps_per_cta, launch.registers_per_thread,
                      launch.grid).slots
    iterations = shape.batch * shape.q_heads * int(q_block_tiles(shape, tiles.block_m, tiles.block_n).tiles.sum())
    return launch, slots, iterations


@settings(max_examples=10, deadline=None)
@given(st.sampled_from([1, 2]), st.sampled_from([2, 8, 32]), st.integers(256, 3000), st.booleans(),
       st.sampled_from([64, 128]), st.integers(0, 8192), st.integers(0, 16384), st.booleans())
def test_spill_stores_reach_l2_in_full_and_hbm_at_most_once_per_cta(batch, heads, n, causal, d, per_iteration,
                                                                      per_cta, fast):
    """Every spilled byte is an SM -> L2 write in both engines; what reaches HBM (during the kernel or after it)
    is at least the lines of the slots in use and at most those plus each later CTA's once-per-CTA spill."""
    shape = AttentionShape(batch=batch, q_heads=heads, q_len=n, head_dim=d, causal=causal)
    tiles = spilling(per_iteration, per_cta)
    launch, slots, iterations = slots_and_iterations(shape, tiles)
    stored = iterations * per_iteration + launch.grid * per_cta
    least = min(slots, launch.grid) * (per_iteration + per_cta)
    most = least + max(0, launch.grid - slots) * per_cta
    sim = simulate(H100, H100.ceilings(), [launch], fast=fast)[0].counters.by_tensor()
    cost = closed_form(H100, shape, tiles).traffic
    if stored == 0:
        assert "spill" not in sim and "spill" not in cost
        return
    assert sim["spill"]["l2_write"] == pytest.approx(stored) == cost["spill"].l2_write
    assert sim["spill"]["l2_read"] == sim["spill"]["hbm_read"] == cost["spill"].l2_read == 0  # reloads hit L1
    for written in (written_to_hbm(sim["spill"]), cost["spill"].hbm_write):
        assert least - 1e-6 <= written <= most + 1e-6
    others = closed_form(H100, shape, dataclasses.replace(tiles, spill_bytes_per_iteration=0, spill_bytes_per_cta=0))
    assert {k: v for k, v in cost.items() if k != "spill"} == others.traffic  # spills change no other tensor


def test_spills_rewritten_in_place_stay_in_l2_when_little_else_passes_through():
    """B1 H16 N4096 d64 brings about 42 MB into L2 over 2 waves: a CTA slot's spill lines are rewritten by the
    next CTA in the slot before the dirty lifetime (44.2 MB, shared K/V counting 1.85 times) runs out, so what
    reaches HBM is the slots' lines once, mostly after the kernel (SDPA's FA2 at this shape wrote 0.65 MB to HBM
    in the kernel, at the counter's floor; validation/results/h100), not every CTA's."""
    shape = AttentionShape(q_heads=16, q_len=4096, head_dim=64)
    tiles = spilling(3032, 13817, block_n=128)
    launch, slots, _ = slots_and_iterations(shape, tiles)
    assert launch.grid > slots  # a second wave reuses the slots
    for engine in ("analytic", "des"):
        spill = predict("flash2", shape, tiles=tiles, engine=engine).bytes_by_tensor["spill"]
        assert written_to_hbm(spill) == pytest.approx(slots * (3032 + 13817), rel=0.01), engine
        assert spill["hbm_write"] <= 0.2 * written_to_hbm(spill), engine


def test_spills_once_per_cta_reach_hbm_where_a_cta_outlives_the_dirty_lifetime():
    """B4 H32 N4096 d128 brings about 40 MB into L2 per wave: each CTA's once-per-CTA spill lines age out before
    the next CTA in its slot rewrites them (SDPA's FA2: 36 MB more written to HBM than our FA2, which does not
    spill, on this shape; memsim: 26-34 MB)."""
    shape = AttentionShape(batch=4, q_heads=32, q_len=4096, head_dim=128)
    tiles = spilling(7158, 8424, mma="mma_sync")
    launch, slots, _ = slots_and_iterations(shape, tiles)
    for engine in ("analytic", "des"):
        spill = predict("flash2", shape, tiles=tiles, engine=engine).bytes_by_tensor["spill"]
        assert spill["hbm_write"] >= 0.6 * (launch.grid - slots) * 8424, engine


def test_predict_takes_spills_on_the_command_line(capsys):
    args = ["predict", "--heads", "8", "--seq", "2048", "--engine", "analytic", "--json", "--block-m", "128",
            "--block-n", "64", "--stages", "1"]
    assert main(args) == 0
    plain = capsys.readouterr().out
    assert main(args + ["--spill-bytes-per-iteration", "7158", "--spill-bytes-per-cta", "8424"]) == 0
    spilled = capsys.readouterr().out
    import json
    plain, spilled = json.loads(plain), json.loads(spilled)
    assert spilled["bytes"]["l2_write"] - plain["bytes"]["l2_write"] == pytest.approx(8 * 16 * (32 * 7158 + 8424))
    assert spilled["tiles"]["spill_bytes_per_iteration"] == 7158


def test_predict_refuses_negative_spills_on_one_line(capsys):
    code = main(["predict", "--spill-bytes-per-cta", "-8"])
    out, err = capsys.readouterr()
    assert_usage_error_on_one_line(code, out, err, ["spill_bytes_per_cta", "-8"])


def test_the_mapping_holds_the_spills_fitted_on_shapes_outside_the_suite():
    from validation.cases import Case, suite
    from validation.fit_spills import fit, probes
    from validation.mapping import SDPA_FA2_SPILLS
    found = probes()
    reported = {case.id for case in suite("third-party")}
    assert found and not {p.case for p in found} & reported  # fitted on shapes the suite does not report
    assert fit(found) == SDPA_FA2_SPILLS
    for p in found:  # two constants per tile shape explain every probe
        per_iteration, per_cta = SDPA_FA2_SPILLS[p.tile]
        assert per_iteration * p.iterations + per_cta * p.ctas == pytest.approx(p.stored_bytes, rel=0.04)
    assert Case.from_id(found[0].case).kernel == "sdpa_flash"


def test_the_mapping_holds_the_decode_kernels_spills_fitted_on_shapes_outside_the_suite():
    """SDPA FA2's one-split decode kernel spills too: two constants explain every d = 128 probe exactly, and the
    suite's decode rows that ran it are given them with its own 128 x 64 tile."""
    from pathlib import Path
    from validation.cases import suite
    from validation.compare import load_rows
    from validation.fit_spills import decode_probes, fit
    from validation.mapping import SDPA_FA2_DECODE_SPILLS, map_case
    found = decode_probes()
    assert found and not {p.case for p in found} & {case.id for case in suite("third-party")}
    assert fit(found) == SDPA_FA2_DECODE_SPILLS
    for p in found:
        if p.tile in SDPA_FA2_DECODE_SPILLS:
            per_block, per_cta = SDPA_FA2_DECODE_SPILLS[p.tile]
            assert per_block * p.iterations + per_cta * p.ctas == pytest.approx(p.stored_bytes, rel=1e-6)
    rows = {r["id"]: r for r in load_rows(Path(__file__).parents[1] / "validation" / "results" / "h100")}
    tiles = map_case(rows["sdpa_flash.b32h32k32n1m2048d128c0.bf16"]).tiles
    assert (tiles.block_m, tiles.block_n, tiles.spill_bytes_per_iteration, tiles.spill_bytes_per_cta) == \
        (128, 64, 4096, 3584)
    split_kv = map_case(rows["sdpa_flash.b8h32k8n1m32768d128c0.bf16"]).tiles  # the split-KV kernel: not this one
    assert not split_kv.spills


@settings(max_examples=6, deadline=None)
@given(st.sampled_from([1, 4]), st.sampled_from([(8, 8), (8, 2)]), st.integers(192, 4096), st.integers(0, 8192),
       st.integers(0, 8192), st.sampled_from([1, 3]))
def test_decode_spills_reach_l2_in_full_in_both_engines_and_change_nothing_else(batch, heads, keys, per_block,
                                                                               per_cta, splits):
    from memsim.algorithms import flash_decoding
    from memsim.schedules import flash_decoding as decode_schedule
    shape = AttentionShape(batch=batch, q_heads=heads[0], kv_heads=heads[1], q_len=1, kv_len=keys, head_dim=128)
    tiles = TileConfig(block_m=64, block_n=64, num_warps=4, num_stages=2, num_splits=splits,
                       spill_bytes_per_iteration=per_block, spill_bytes_per_cta=per_cta)
    assert_spills_stored_in_both_engines(decode_schedule.split_launch(shape, tiles),
                                         lambda t: flash_decoding.split_kernel(H100, shape, t), tiles)


def assert_spills_stored_in_both_engines(launch, closed_form_of, tiles):
    """Every spilled byte of `launch` (its loop iterations x per iteration, its CTAs x per CTA) is an SM -> L2 write of
    the spill tensor in the engine and in `closed_form_of(tiles)`, which spilling changes in nothing else."""
    iterations = sum(launch.program(pid).loop.iterations for pid in range(launch.grid))
    stored = iterations * tiles.spill_bytes_per_iteration + launch.grid * tiles.spill_bytes_per_cta
    sim = simulate(H100, H100.ceilings(), [launch])[0].counters.by_tensor()
    cost = closed_form_of(tiles)
    if stored == 0:
        assert "spill" not in sim and "spill" not in cost.traffic
        return
    assert sim["spill"]["l2_write"] == pytest.approx(stored) == cost.traffic["spill"].l2_write
    plain = closed_form_of(dataclasses.replace(tiles, spill_bytes_per_iteration=0, spill_bytes_per_cta=0))
    assert {k: v for k, v in cost.traffic.items() if k != "spill"} == plain.traffic


@settings(max_examples=6, deadline=None)
@given(st.sampled_from([1, 2]), st.sampled_from([(8, 8), (8, 2)]), st.integers(256, 2048), st.booleans(),
       st.integers(0, 8192), st.integers(0, 40000))
def test_backward_spills_reach_l2_in_full_in_both_engines_and_change_nothing_else(batch, heads, n, causal,
                                                                                per_pair, per_cta):
    """Our backward's dK/dV kernel spills (validation.mapping.OUR_SPILLS): every byte is an SM -> L2 write of its
    own tensor in both engines, and nothing else moves."""
    from memsim.algorithms import flash2_bwd_separate_dq as backward
    from memsim.schedules import flash2_bwd_separate_dq as backward_schedule
    shape = AttentionShape(batch=batch, q_heads=heads[0], kv_heads=heads[1], q_len=n, head_dim=64, causal=causal)
    tiles = TileConfig(block_m=64, block_n=64, num_warps=4, num_stages=2, dq="separate",
                       spill_bytes_per_iteration=per_pair, spill_bytes_per_cta=per_cta)
    assert_spills_stored_in_both_engines(backward_schedule.dkdv_kernel(shape, tiles, "flash2_bwd"),
                                         lambda t: backward.dkdv_kernel(H100, shape, t, "flash2_bwd"), tiles)


def test_a_spilling_backward_is_predicted_pass_by_pass():
    shape = AttentionShape(q_heads=8, q_len=2048, head_dim=64, causal=True)
    tiles = TileConfig(block_m=64, block_n=64, num_warps=4, num_stages=2, dq="separate", spill_bytes_per_cta=34304)
    for engine in ("analytic", "des"):
        p = predict("flash2", shape, tiles=tiles, pass_="bwd", engine=engine)
        dkdv = next(k for k in p.kernels if k.name.endswith("_dkdv"))
        assert dkdv.bytes_by_tensor["spill"]["l2_write"] == pytest.approx(34304 * dkdv.grid_ctas), engine


def test_the_mapping_holds_our_kernels_spills_probed_on_shapes_outside_the_suite():
    """Our FP8 forward and backward dK/dV kernel at d = 64 run at 255 registers and spill a fixed number of bytes per
    CTA at every probed N; the suite's d = 64 rows of both get them, the d = 128 ones (no spills) do not."""
    from pathlib import Path
    from validation.cases import suite
    from validation.compare import load_rows
    from validation.fit_spills import fit_per_cta, ours_probes
    from validation.mapping import OUR_SPILLS, map_case
    found = ours_probes()
    assert found and not {p.case for p in found} & {case.id for case in suite("full", ("flash2_fp8", "flash2_bwd"))}
    assert fit_per_cta(found) == OUR_SPILLS
    assert {p.key for p in found} == set(OUR_SPILLS)
    rows = {r["id"]: r for r in load_rows(Path(__file__).parents[1] / "validation" / "results" / "h100")}
    assert map_case(rows["flash2_bwd.b2h32k32n4096m4096d64c1.bf16"]).tiles.spill_bytes_per_cta == 34304
    assert map_case(rows["flash2_fp8.b1h16k16n1024m1024d64c0.fp8"]).tiles.spill_bytes_per_cta == 6656
    assert not map_case(rows["flash2_bwd.b1h16k16n4096m4096d128c0.bf16"]).tiles.spills
    assert not map_case(rows["flash2_fp8.b4h32k32n4096m4096d128c0.fp8"]).tiles.spills


def test_a_kernel_whose_spills_grow_with_the_shape_has_no_per_cta_fit():
    from validation.fit_spills import OurProbe, fit_per_cta
    found = [OurProbe("a", ("flash2_fp8", 64, False), 100, 100 * 6656.0),
             OurProbe("b", ("flash2_fp8", 64, False), 200, 200 * 7000.0),
             OurProbe("c", ("flash2_bwd", 64, True), 100, 100 * 34304.0)]
    assert fit_per_cta(found) == {("flash2_bwd", 64, True): 34304}
