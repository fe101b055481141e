"""validation/key_order_probe.py: a causal FA2 forward walking its key blocks first to last or last to first, as
recorded on the H100, and what memsim's flash2 schedule (TileConfig.key_order) predicts for each walk."""

import json
from pathlib import Path

import pytest

from memsim import AttentionShape, TileConfig, predict
from memsim.errors import MemsimError
from memsim.schedules.flash2 import forward
from memsim.workload.tiles import KEY_ORDERS
from validation.key_order_probe import BLOCK_M, BLOCK_N, CASES, KERNELS, STAGES, WARPS, Case

RESULTS = Path(__file__).resolve().parent.parent / "validation" / "results" / "h100" / "key-order-2026-11-24.json"


def _rows() -> dict:
    return {(r["kernel"], r["batch"], r["heads"], r["seq_len"]): r for r in json.loads(RESULTS.read_text())["rows"]}


def test_the_probe_cases_are_distinct_and_count_q_k_v_once():
    assert len({c.label for c in CASES}) == len(CASES)
    assert Case(2, 3, 256, 64).qkv_bytes == 3 * 2 * 3 * 256 * 64 * 2
    assert all(c.seq_len % BLOCK_M == 0 and BLOCK_M % BLOCK_N == 0 for c in CASES)


def test_every_case_and_kernel_was_recorded():
    rows = _rows()
    assert {(k, c.batch, c.heads, c.seq_len) for c in CASES for k in KERNELS} == set(rows)


def _predicted_reads(case: Case, order: str) -> float:
    shape = AttentionShape(batch=case.batch, q_heads=case.heads, q_len=case.seq_len, head_dim=case.head_dim,
                           causal=True)
    tiles = TileConfig(block_m=BLOCK_M, block_n=BLOCK_N, num_warps=WARPS, num_stages=STAGES, lse_output=False,
                       key_order=order)
    return predict("flash2", shape, tiles=tiles, engine="des").bytes["hbm_read"]


@pytest.mark.parametrize("case", [Case(1, 16, 4096), Case(2, 32, 2048)], ids=lambda c: c.label)
def test_memsim_predicts_both_walks_reads(case):
    """HBM reads within 5% of the H100's for the first-to-last walk (1.02x Q + K + V there) and within 6% for the
    last-to-first walk (1.10x and 1.12x: K and V lost to the L2's sets, memsim.engine.l2cache), which reads more."""
    rows = _rows()
    ascending, descending = (_predicted_reads(case, order) for order in ("ascending", "descending"))
    assert ascending == pytest.approx(rows[("ascending", case.batch, case.heads, case.seq_len)]["dram_read_bytes"],
                                      rel=0.05)
    assert descending == pytest.approx(rows[("descending", case.batch, case.heads, case.seq_len)]["dram_read_bytes"],
                                       rel=0.06)
    assert descending > 1.05 * ascending


def test_the_descending_walk_visits_the_same_blocks_last_to_first_with_the_mask_first():
    shape = AttentionShape(batch=1, q_heads=2, q_len=512, head_dim=64, causal=True)
    up, down = (forward(shape, TileConfig(block_m=128, block_n=64, key_order=o)).program(3) for o in KEY_ORDERS)
    n = up.loop.iterations
    assert down.loop.iterations == n == 8
    walk = lambda program: [program.loop.loads(i)[0].index for i in range(n)]  # noqa: E731
    assert walk(down) == walk(up)[::-1]
    masked = lambda program: [program.loop.compute(i)[1] for i in range(n)]  # noqa: E731
    assert masked(down) == masked(up)[::-1]  # the diagonal blocks' masking work goes first
    assert masked(down)[0] != masked(down)[-1]


def test_key_order_is_refused_where_no_schedule_models_it():
    shape = AttentionShape(q_len=1024, causal=True)
    with pytest.raises(MemsimError, match="key_order"):
        predict("flash1", shape, tiles=TileConfig(key_order="descending"))
    with pytest.raises(MemsimError, match="key_order"):
        predict("flash2", shape, tiles=TileConfig(key_order="descending"), pass_="bwd")
    with pytest.raises(MemsimError, match="key_order"):
        TileConfig(key_order="sideways")


def test_the_last_to_first_walk_reads_more_from_hbm_the_longer_the_sequence():
    """What the H100 shows (validation/ACCURACY.md): the same kernel walking its keys last to first re-reads K and
    V, more as a head's K and V grow."""
    rows = _rows()
    ratio = {c: rows[("descending", c.batch, c.heads, c.seq_len)]["dram_read_bytes"] /
             rows[("ascending", c.batch, c.heads, c.seq_len)]["dram_read_bytes"] for c in CASES}
    assert all(r > 1.05 for r in ratio.values())
    by_length = sorted(CASES, key=lambda c: c.seq_len)
    assert ratio[by_length[-1]] > ratio[by_length[0]]


def test_the_analytic_model_says_it_reads_both_walks_alike():
    shape = AttentionShape(q_len=1024, causal=True)
    up, down = (predict("flash2", shape, tiles=TileConfig(key_order=o)) for o in KEY_ORDERS)
    assert down.bytes == up.bytes
    assert any("key_order" in note and "--engine des" in note for note in down.assumptions)
    assert not any("key_order" in note for note in up.assumptions)


HELD_OUT = RESULTS.with_name("key-order-held-out-2026-11-24.json")


def test_every_held_out_case_and_kernel_was_recorded_and_none_was_fitted():
    from validation.key_order_probe import HELD_OUT_CASES

    rows = json.loads(HELD_OUT.read_text())["rows"]
    assert {(r["kernel"], Case(r["batch"], r["heads"], r["seq_len"], r["head_dim"])) for r in rows} == \
        {(k, c) for c in HELD_OUT_CASES for k in KERNELS}
    assert not set(HELD_OUT_CASES) & set(CASES)


def test_the_fit_reads_the_probes_shapes_and_ratios_from_its_rows():
    from validation.fit_l2_ways import measured_ratios, probe_cases, score

    rows = json.loads(RESULTS.read_text())["rows"]
    assert probe_cases(rows) == list(CASES)
    ratios = measured_ratios(rows)
    by_key = _rows()
    c = CASES[0]
    assert ratios[c.label] == by_key[("descending", c.batch, c.heads, c.seq_len)]["dram_read_bytes"] / \
        by_key[("ascending", c.batch, c.heads, c.seq_len)]["dram_read_bytes"]
    assert score(ratios, ratios) == 0.0
    assert score({c.label: ratios[c.label] * 2}, ratios) == pytest.approx(0.6931471805599453 ** 2)
