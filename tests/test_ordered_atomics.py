"""Ordered (acq_rel) atomics: each thread's atomics one after another, each a fenced round trip
(memsim.engine.cta.store_tile, memsim.roofline), the H100's latency from validation/atomic_probe.py, and linear
attention's state kernel, whose partial states are added with them."""

import json
from pathlib import Path

import pytest

from memsim import AttentionShape, TileConfig, predict
from memsim.algorithms import linear
from memsim.engine import simulate
from memsim.errors import MemsimError
from memsim.hardware import load_gpu
from memsim.schedules.steps import Atomic, CtaProgram, Launch

from checks import assert_refused_on_one_line

H100 = load_gpu("H100-SXM5-80GB")
RESULTS = Path(__file__).parents[1] / "validation" / "results" / "h100"


def named(prediction, name: str):
    """The prediction's launch of that name."""
    return next(k for k in prediction.kernels if k.name == name)


def one_cta_adding(rounds: int) -> Launch:
    program = CtaProgram(epilogue=(Atomic("acc", ("head", 0), 0, 64 * 1024, ordered_rounds=rounds),))
    return Launch(name="adder", grid=1, warps_per_cta=8, smem_buffers={}, registers_per_thread=32, num_stages=1,
                  program=lambda pid: program)


def test_each_ordered_round_adds_one_fenced_round_trip_and_hands_the_old_values_back():
    ceilings = H100.ceilings()
    (relaxed,), (ordered,) = (simulate(H100, ceilings, [one_cta_adding(r)]) for r in (0, 16))
    assert ordered.latency_s - relaxed.latency_s == pytest.approx(16 * ceilings.ordered_atomic_latency_s, rel=1e-9)
    for key in ("hbm_read", "l2_write"):
        assert ordered.counters.totals()[key] == relaxed.counters.totals()[key]
    assert relaxed.counters.totals()["l2_read"] == 0  # red.global.add: nothing comes back
    assert ordered.counters.totals()["l2_read"] == 64 * 1024  # ATOMG: every old value comes back to its thread


def test_the_h100_preset_takes_the_probes_loaded_figure_and_ordering_costs_far_more_than_relaxed():
    record = json.loads((RESULTS / "atomic-probe-2026-11-23.json").read_text())
    slope = {(s["semantics"], s["ctas"], s["ctas_per_address"], s["warps"]): s["seconds_per_round"]
             for s in record["slopes"]}
    assert H100.ceilings().ordered_atomic_latency_s == pytest.approx(slope["acq_rel", 128, 8, 4], abs=1e-9)
    for ctas, share, warps in ((1, 1, 4), (128, 1, 4), (128, 8, 4), (128, 8, 8)):
        assert slope["acq_rel", ctas, share, warps] > 2 * slope["relaxed", ctas, share, warps]
    assert slope["acq_rel", 1, 1, 4] < slope["acq_rel", 128, 1, 4]  # a GPU full of fences waits longer


def test_rounds_are_the_state_over_16_bytes_per_thread_and_none_when_relaxed():
    acq_rel = TileConfig(num_warps=8, num_splits=8)
    assert linear.ordered_atomic_rounds(linear.state_bytes_per_head(128), acq_rel) == 17  # (128^2 + 128) x 4 / 4096
    assert linear.ordered_atomic_rounds(linear.state_bytes_per_head(128), TileConfig(num_warps=8, atomic_sem="relaxed")) == 0


@pytest.mark.parametrize("engine", ["des", "analytic"])
def test_linear_state_kernel_waits_out_its_ordered_atomics_in_both_engines(engine):
    shape = AttentionShape(q_heads=16, q_len=4096, head_dim=128)
    tiles = {sem: TileConfig(block_m=128, block_n=64, num_warps=8, num_stages=3, num_splits=8, atomic_sem=sem)
             for sem in ("acq_rel", "relaxed")}
    state = {sem: named(predict("linear", shape, H100, t, engine=engine), "linear_state") for sem, t in tiles.items()}
    rounds = linear.ordered_atomic_rounds(linear.state_bytes_per_head(128), tiles["acq_rel"])
    wait_s = rounds * H100.ceilings().ordered_atomic_latency_s
    assert state["acq_rel"].latency_s >= state["relaxed"].latency_s + 0.5 * wait_s
    returned = 8 * 16 * linear.state_bytes_per_head(128)  # every split CTA's state comes back from its atomics
    assert state["acq_rel"].bytes["l2_read"] == pytest.approx(state["relaxed"].bytes["l2_read"] + returned)
    for key in ("hbm_read", "hbm_write", "l2_write"):
        assert state["acq_rel"].bytes[key] == state["relaxed"].bytes[key]


@pytest.mark.parametrize("engine", ["des", "analytic"])
def test_split_states_are_added_into_a_zeroed_buffer_and_one_split_stores_into_an_empty_one(engine):
    """kernels/linear.py: torch.zeros before the atomics add into it, torch.empty when one split stores it."""
    shape = AttentionShape(batch=2, q_heads=16, kv_heads=4, q_len=4096, head_dim=128)
    split = predict("linear", shape, H100, TileConfig(block_m=128, block_n=64, num_warps=8, num_splits=8),
                    engine=engine).kernels
    assert [k.name for k in split] == ["linear_state_zero", "linear_state", "linear_output"]
    state = 2 * 4 * linear.state_bytes_per_head(128)
    assert split[0].bytes["l2_write"] == state and split[0].bytes["l2_read"] == 0
    assert split[0].grid_ctas == -(-state // (4 * 1024))  # PyTorch's vectorized fill: 1024 fp32 a CTA
    one = predict("linear", shape, H100, TileConfig(block_m=128, block_n=64, num_warps=8, num_splits=1),
                  engine=engine).kernels
    assert [k.name for k in one] == ["linear_state", "linear_output"]


def test_one_split_stores_its_state_and_waits_for_no_atomics():
    shape = AttentionShape(q_heads=16, q_len=4096, head_dim=128)
    one = {sem: predict("linear", shape, H100, TileConfig(num_warps=8, num_splits=1, atomic_sem=sem), engine="des")
           for sem in ("acq_rel", "relaxed")}
    assert one["acq_rel"].kernels[0].latency_s == one["relaxed"].kernels[0].latency_s


def test_an_unknown_ordering_is_refused_by_name():
    assert_refused_on_one_line(lambda: TileConfig(atomic_sem="seq_cst"), ["atomic_sem", "'seq_cst'", "acq_rel", "relaxed"])
    with pytest.raises(MemsimError):
        TileConfig(atomic_sem="")


@pytest.mark.parametrize("engine", ["des", "analytic"])
def test_explain_names_the_wait_for_ordered_atomics_and_only_where_there_is_one(engine):
    from memsim.explain import explain
    shape = AttentionShape(q_heads=16, q_len=4096, head_dim=128)
    tiles = {sem: TileConfig(block_m=128, block_n=64, num_warps=8, num_stages=3, num_splits=8, atomic_sem=sem)
             for sem in ("acq_rel", "relaxed")}
    ordered = predict("linear", shape, H100, tiles["acq_rel"], engine=engine)
    state = named(ordered, "linear_state")
    rounds = linear.ordered_atomic_rounds(linear.state_bytes_per_head(128), tiles["acq_rel"])
    assert state.ordered_atomic_wait_s == pytest.approx(rounds * H100.ceilings().ordered_atomic_latency_s)
    lines = [line for line in explain(ordered) if "ordered (acq_rel) atomics" in line]
    assert len(lines) == 1 and "--atomic-sem relaxed" in lines[0]
    relaxed = predict("linear", shape, H100, tiles["relaxed"], engine=engine)
    assert named(relaxed, "linear_state").ordered_atomic_wait_s == 0
    assert not [line for line in explain(relaxed) if "atomics" in line]


def test_relaxed_atomics_are_refused_where_there_are_none_to_relax():
    shape = AttentionShape(q_heads=4, q_len=1024, head_dim=64)
    assert_refused_on_one_line(lambda: predict("flash2", shape, H100, TileConfig(atomic_sem="relaxed")),
                               ["atomic_sem = 'relaxed'", "linear", "flash2", "'acq_rel'"])
