"""validation/l2_per_sm_probe.py: refuses to run without a GPU, and its committed record says what it claims."""

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from validation import l2_per_sm_probe  # noqa: E402  (needs torch and triton)

RECORD = Path(__file__).parent.parent / "validation" / "results" / "h100" / "l2-per-sm-2026-11-23.json"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_without_a_gpu_it_says_so_and_fails(tmp_path, capsys):
    assert l2_per_sm_probe.main(["--out", str(tmp_path)]) == 1
    assert "no CUDA device" in capsys.readouterr().err


def test_the_record_holds_every_grid_and_warp_count_and_one_sm_reads_far_below_the_l2():
    rows = json.loads(RECORD.read_text())["rows"]
    assert {(r["ctas"], r["warps"]) for r in rows} == {(c, w) for c in l2_per_sm_probe.CTAS for w in l2_per_sm_probe.WARPS}
    for r in rows:
        assert r["bytes_per_s"] == pytest.approx(r["bytes"] / r["median_s"])
    one_sm = max(r["bytes_per_s"] for r in rows if r["ctas"] == 1)
    every_sm = max(r["bytes_per_s"] for r in rows if r["ctas"] == 132)
    assert one_sm < every_sm / 40  # an SM's own port, not the L2, limits a launch of few CTAs
