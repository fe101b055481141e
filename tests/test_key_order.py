"""validation/key_order_probe.py: a causal FA2 forward walking its key blocks first to last or last to first, as
recorded on the H100, and what memsim's flash2 schedule predicts for the first-to-last walk."""

import json
from pathlib import Path

import pytest

from memsim import AttentionShape, TileConfig, predict
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


@pytest.mark.parametrize("case", [Case(1, 16, 4096), Case(2, 32, 2048)], ids=lambda c: c.label)
def test_memsim_predicts_the_first_to_last_walk_reads(case):
    """The walk memsim's schedule has: HBM reads within 5% of the H100's (1.02x Q + K + V there)."""
    measured = _rows()[("ascending", case.batch, case.heads, case.seq_len)]["dram_read_bytes"]
    shape = AttentionShape(batch=case.batch, q_heads=case.heads, q_len=case.seq_len, head_dim=case.head_dim,
                           causal=True)
    tiles = TileConfig(block_m=BLOCK_M, block_n=BLOCK_N, num_warps=WARPS, num_stages=STAGES, lse_output=False)
    predicted = predict("flash2", shape, tiles=tiles, engine="des").bytes["hbm_read"]
    assert predicted == pytest.approx(measured, rel=0.05)


def test_the_last_to_first_walk_reads_more_from_hbm_the_longer_the_sequence():
    """What the H100 shows and memsim's least-recently-used L2 does not (validation/ACCURACY.md): the same kernel
    walking its keys last to first re-reads K and V, more as a head's K and V grow."""
    rows = _rows()
    ratio = {c: rows[("descending", c.batch, c.heads, c.seq_len)]["dram_read_bytes"] /
             rows[("ascending", c.batch, c.heads, c.seq_len)]["dram_read_bytes"] for c in CASES}
    assert all(r > 1.05 for r in ratio.values())
    by_length = sorted(CASES, key=lambda c: c.seq_len)
    assert ratio[by_length[-1]] > ratio[by_length[0]]
