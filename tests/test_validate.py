"""The validation harness on the CPU: ncu's CSV read back, launch configs mapped to tiles, error summaries,
and `memsim validate` end to end on the recorded H100 measurements."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from memsim.cli.main import cli, main
from validation import compare as cmp
from validation import ncu
from validation.cases import Case, suite
from validation.mapping import Unmapped, map_case, q_block_rows, shape_of

RESULTS = Path(__file__).resolve().parent.parent / "validation" / "results" / "h100"
THIRD_PARTY = RESULTS / "measurements-third-party-2026-11-22.jsonl"

CSV = '''==PROF== Connected to process 1
"ID","Process ID","Kernel Name","Metric Name","Metric Unit","Metric Value"
"0","1","sdpa_flash.b1h16k16n4096m4096d128c0.bf16/void flash_fwd_kernel<128, 128, 64, 4>(Params)","dram__bytes_read.sum","byte","51,834,112"
"0","1","sdpa_flash.b1h16k16n4096m4096d128c0.bf16/void flash_fwd_kernel<128, 128, 64, 4>(Params)","launch__grid_size","","512"
"1","1","randn_kernel","dram__bytes_read.sum","byte","0"
'''


def recorded() -> list[dict]:
    return [json.loads(line) for line in THIRD_PARTY.read_text().splitlines() if line.strip()]


def row(case_id: str) -> dict:
    return next(r for r in recorded() if r["id"] == case_id)


def test_ncu_csv_rows_carry_their_nvtx_range_and_numbers_without_separators():
    launches = ncu.parse(CSV)
    assert len(launches) == 2
    first = launches[0]
    assert first["range"] == "sdpa_flash.b1h16k16n4096m4096d128c0.bf16"
    assert first["kernel"].startswith("void flash_fwd_kernel<128, 128, 64, 4>")
    assert first["dram__bytes_read.sum"] == 51_834_112
    assert first["launch__grid_size"] == 512
    assert launches[1]["range"] == ""


def test_ncu_command_never_touches_clocks_and_profiles_only_marked_ranges():
    command = ncu.command(["python3", "-m", "x"], ["dram__bytes_read.sum"])
    assert command[command.index("--clock-control") + 1] == "none"
    assert command[command.index("--profile-from-start") + 1] == "off"


def test_case_ids_are_stable_and_carry_no_slash():
    case = Case("sdpa_flash", 1, 16, 16, 4096, 4096, 128, False)
    assert case.id == "sdpa_flash.b1h16k16n4096m4096d128c0.bf16"
    assert all("/" not in c.id for c in suite("third-party"))
    with pytest.raises(ValueError, match="unknown suite"):
        suite("everything")


def test_fa2_launch_config_read_from_ncu_gives_its_tiles():
    """README's worked example: grid 512 = 32 q-blocks x 16 heads -> BLOCK_M 128; 64 KiB shared memory less
    the 32 KiB Q tile holds one 64-key K and V tile -> BLOCK_N 64; 128 threads -> 4 warps."""
    mapped = map_case(row("sdpa_flash.b1h16k16n4096m4096d128c0.bf16"))
    assert mapped.algo == "flash2"
    t = mapped.tiles
    assert (t.block_m, t.block_n, t.num_warps, t.num_stages) == (128, 64, 4, 1)


def test_decode_split_count_comes_from_the_grid():
    mapped = map_case(row("sdpa_flash.b8h32k8n1m32768d128c0.bf16"))
    assert mapped.algo == "flash_decoding"
    assert mapped.tiles.num_splits == 256 // (8 * 8)


def test_cudnn_prefill_runs_on_a_persistent_grid_of_one_cta_per_sm():
    mapped = map_case(row("sdpa_cudnn.b1h16k16n4096m4096d128c0.bf16"))
    assert (mapped.algo, mapped.order, mapped.ctas) == ("flash3", "persistent", 132)


def test_failed_cases_are_not_mapped_and_say_why():
    with pytest.raises(Unmapped, match="No available kernel"):
        map_case(row("sdpa_efficient.b1h32k8n4096m4096d128c0.bf16"))


def test_q_block_rows_refuses_a_grid_that_is_not_blocks_x_heads():
    with pytest.raises(Unmapped, match="not q-blocks"):
        q_block_rows(shape_of(row("sdpa_flash.b1h16k16n4096m4096d128c0.bf16")), 500)


def test_summary_takes_absolute_errors_and_names_the_worst_case():
    rows = [cmp.Row(id=f"c{i}", kernel="k", algo="a", error={"time": e}) for i, e in enumerate((0.1, -0.3, 0.05))]
    stats = cmp.summary(rows)["all"]["time"]
    assert stats["n"] == 3
    assert stats["median"] == pytest.approx(0.1)
    assert stats["worst"] == pytest.approx(0.3)
    assert stats["worst_case"] == "c1"


def test_measured_fields_sum_every_launch_of_a_case():
    r = row("sdpa_flash.b8h32k8n1m32768d128c0.bf16")  # split kernel + combine kernel
    m = cmp.measured(r)
    assert m["hbm_read"] == pytest.approx(sum(k["dram__bytes_read.sum"] for k in r["launches"]))
    assert m["l2_read"] == pytest.approx(32 * sum(k["lts__t_sectors_srcunit_tex_op_read.sum"] for k in r["launches"]))
    assert m["time"] == r["time_s"]


def test_validate_prints_the_error_table_and_writes_report_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    result = CliRunner().invoke(cli, ["validate", "--results", str(THIRD_PARTY), "--engine", "analytic",
                                      "--workers", "1", "--report", str(tmp_path / "r.md"),
                                      "--plots", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    assert "median |error|" in result.output and "hbm_read" in result.output
    assert (tmp_path / "r.md").read_text().startswith("# memsim validation")
    for name in ("predicted_vs_measured.png", "error_by_algorithm.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 10_000


def test_validate_json_has_summary_and_every_row(tmp_path):
    result = CliRunner().invoke(cli, ["validate", "--results", str(THIRD_PARTY), "--engine", "analytic",
                                      "--workers", "1", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[result.output.index("{"):])
    assert set(cmp.FIELDS) <= set(data["summary"])
    assert len(data["rows"]) == len(recorded())


def test_validate_bad_input_is_one_line(tmp_path, capsys):
    (tmp_path / "measurements-bad.jsonl").write_text("{not json\n")
    assert main(["validate", "--results", str(tmp_path)]) == 2
    assert main(["validate", "--results", str(tmp_path / "missing")]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["validate", "--results", str(empty)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(lines) == 3 and all(line.startswith("memsim: error:") for line in lines)
    assert "not a JSON row" in lines[0] and "no such file" in lines[1] and "no measurements" in lines[2]
