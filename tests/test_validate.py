"""The validation harness on the CPU: ncu's CSV read back, launch configs mapped to tiles, error summaries,
and `memsim validate` end to end on the recorded H100 measurements."""

import dataclasses
import json
import math
import statistics
from pathlib import Path

import pytest
from click.testing import CliRunner

from memsim.cli.main import cli, main
from validation import compare as cmp
from validation import ncu
from validation.cases import Case, suite
from memsim.resources import CtaResources
from validation.mapping import Unmapped, main_launches, map_case, q_block_rows, shape_of

RESULTS = Path(__file__).resolve().parent.parent / "validation" / "results" / "h100"
THIRD_PARTY = RESULTS / "measurements-third-party-2026-11-22.jsonl"  # before the crossbar counters
THIRD_PARTY_V2 = RESULTS / "measurements-v2-third-party-1-2026-11-22.jsonl"  # with them

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


def test_a_case_id_reads_back_into_its_case_and_a_bad_one_names_the_form():
    ours = ("flash2", "flash_decoding", "paged", "ring", "moba", "flash2_fp8", "flash2_bwd")
    for case in suite("full", ours):
        assert Case.from_id(case.id) == case
    with pytest.raises(ValueError, match="is not KERNEL.bBhHkKnNmMdDcC.DTYPE"):
        Case.from_id("flash2.b1h16")


def test_fa2_launch_config_read_from_ncu_gives_its_tiles():
    """README's worked example: grid 512 = 32 q-blocks x 16 heads -> BLOCK_M 128; 64 KiB shared memory less
    the 32 KiB Q tile holds one 64-key K and V tile -> BLOCK_N 64; 128 threads -> 4 warps. The kernel loads the
    next K and V while it computes (two stages of pipelining), in the 64 KiB that ncu reported, and walks each
    query block's key blocks last to first (flash_fwd_kernel.h)."""
    mapped = map_case(row("sdpa_flash.b1h16k16n4096m4096d128c0.bf16"))
    assert mapped.algo == "flash2"
    t = mapped.tiles
    assert (t.block_m, t.block_n, t.num_warps, t.num_stages, t.key_order) == (128, 64, 4, 2, "descending")
    full = next(r for r in cmp.load_rows(RESULTS) if r["id"] == "sdpa_flash.b1h16k16n4096m4096d128c0.bf16")
    assert map_case(full).resources["flash2_fwd"].smem_bytes == 65536  # occupancy: the launch's, not 2 stages' worth


def test_decode_split_count_comes_from_the_grid():
    mapped = map_case(row("sdpa_flash.b8h32k8n1m32768d128c0.bf16"))
    assert mapped.algo == "flash_decoding"
    assert mapped.tiles.num_splits == 256 // (8 * 8)


def test_cudnn_prefill_runs_on_a_persistent_grid_of_one_cta_per_sm():
    mapped = map_case(row("sdpa_cudnn.b1h16k16n4096m4096d128c0.bf16"))
    assert (mapped.algo, mapped.order, mapped.ctas) == ("flash3", "persistent", 132)


@pytest.mark.parametrize("case", ["sdpa_cudnn.b1h16k16n512m512d64c0.bf16", "sdpa_cudnn.b1h16k16n4096m4096d64c0.bf16",
                                  "sdpa_cudnn.b2h32k32n2048m2048d64c1.bf16", "sdpa_cudnn.b1h16k16n4096m4096d128c0.bf16"])
def test_cudnn_prefill_takes_128_query_rows_per_tile_from_its_two_consumer_warpgroups(case):
    """384 threads: a producer and two consumer warpgroups of 64 rows each, at d = 64 as at d = 128 (FlashAttention-3's
    own d = 64 kernel takes 192 rows). Its K/V reads from L2, one pass over the keys per 128 query rows, say so."""
    r = next(r for r in cmp.load_rows(RESULTS) if r["id"] == case)  # the latest row, with the crossbar counters
    mapped = map_case(r)
    assert int(main_launches(r)[0]["launch__block_size"]) == 384 and mapped.tiles.block_m == 128
    error = cmp.compare_row((r, "des")).error["l2_read"]
    assert abs(error) < 0.005, error


def test_cudnn_causal_prefill_is_scheduled_dynamically_one_cta_per_sm():
    """Dynamic tile scheduling on a persistent grid of one CTA per SM = first-free-slot dispatch."""
    from memsim.hardware import load_gpu
    from memsim.occupancy import occupancy
    from memsim.schedules.flash3 import forward
    from memsim.algorithms import flash3
    mapped = map_case(row("sdpa_cudnn.b2h16k16n16384m16384d128c1.bf16"))
    assert (mapped.algo, mapped.order, mapped.ctas) == ("flash3", "pid", None)
    h100 = load_gpu("H100-SXM5-80GB")
    launch = forward(mapped.shape, flash3.default_tiles(h100, mapped.shape))
    assert occupancy(h100, launch.smem_bytes_per_cta, launch.warps_per_cta, launch.registers_per_thread,
                     launch.grid, launch.name).slots == 132


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


def test_hbm_writes_below_the_floor_on_both_sides_are_counted_not_scored():
    """A decode kernel writes 0.6 MB to L2; ncu shows 0.23 MB reaching HBM, as a kernel that stores nothing shows:
    memsim and the counter agree as far as the counter resolves, so the row is not scored on HBM writes."""
    decode = cmp.compare_row((next(r for r in cmp.load_rows(RESULTS)
                                   if r["id"] == "flash_decoding.b8h32k8n1m32768d128c0.bf16"), "analytic"))
    assert decode.measured["hbm_write"] < cmp.HBM_WRITE_FLOOR_BYTES
    assert decode.predicted["hbm_write"] < cmp.HBM_WRITE_FLOOR_BYTES
    assert decode.below_floor == ["hbm_write"] and "hbm_write" not in decode.error
    assert "hbm_read" in decode.error
    prefill = cmp.compare_row((next(r for r in cmp.load_rows(RESULTS)
                                    if r["id"] == "flash2.b1h16k16n4096m4096d128c0.bf16"), "analytic"))
    assert prefill.measured["hbm_write"] > cmp.HBM_WRITE_FLOOR_BYTES and "hbm_write" in prefill.error
    stats = cmp.summary([decode, dataclasses.replace(prefill, calibration=False)])["all"]
    assert stats["hbm_write"]["n"] == 1 and stats["hbm_write"]["below_floor"] == 1
    assert stats["hbm_read"]["n"] == 2 and stats["hbm_read"]["below_floor"] == 0


def test_the_hbm_write_floor_is_above_what_kernels_that_store_nothing_showed():
    probe = json.loads((RESULTS / "cta-spread-2026-11-23.json").read_text())["rows"]
    store_nothing = [r["dram_write_bytes"] for r in probe if r["written_bytes_per_cta"] == 0]
    assert len(store_nothing) >= 8
    # the first profiled launch (2.3 MB) is the profiler's start; every later one is under the floor
    assert max(store_nothing[1:]) < cmp.HBM_WRITE_FLOOR_BYTES < 3 * max(store_nothing[1:])
    assert min(store_nothing) > 0  # a floor: never nothing


def test_moba_compares_only_the_attention_launch_that_was_measured():
    rows = cmp.load_rows(Path(__file__).resolve().parent.parent / "validation" / "results" / "h100")
    row = next(r for r in rows if r["kernel"] == "moba")
    mapped = map_case(row)
    assert mapped.kernels == ("moba_attn",)
    from memsim import predict
    whole = predict("moba", mapped.shape, tiles=mapped.tiles)
    attn = next(k for k in whole.kernels if k.name == "moba_attn")
    got = cmp.predicted(mapped, "H100-SXM5-80GB", "analytic")
    assert got["time"] == attn.latency_s < whole.latency_s
    assert got["hbm_read"] == attn.bytes["hbm_read"]


def test_a_re_measured_case_replaces_its_earlier_row(tmp_path):
    old = {"id": "lightning.b1h4k4n64m64d64c1.bf16", "time_s": 2.0}
    other = {"id": "linear.b1h4k4n64m64d64c0.bf16", "time_s": 1.0}
    (tmp_path / "measurements-a.jsonl").write_text(json.dumps(old) + "\n" + json.dumps(other) + "\n")
    (tmp_path / "measurements-b.jsonl").write_text(json.dumps({**old, "time_s": 3.0}) + "\n")
    rows = cmp.load_rows(tmp_path)
    assert [(r["id"], r["time_s"]) for r in rows] == [(other["id"], 1.0), (old["id"], 3.0)]


def _host_run(cases: dict, loop: str | None = cmp.HOST_TIME_LOOP) -> dict:
    return {"clear_s": 90e-6, "cases": cases, **({"loop": loop} if loop else {})}


def test_host_times_join_their_cases_and_only_runs_that_timed_do_benchs_loop_count(tmp_path):
    case = "sdpa_flash.b1h16k16n4096m4096d128c0.bf16"
    (tmp_path / "measurements-a.jsonl").write_text(json.dumps(row(case)) + "\n")
    (tmp_path / "host-time-a.json").write_text(json.dumps(_host_run({case: {"host_s": 1e-3, "call_s": 2e-3}})))
    (tmp_path / "host-time-b.json").write_text(json.dumps(_host_run({case: {"host_s": 5e-3, "call_s": 6e-3}},
                                                                    loop=None)))  # an earlier kind of run
    (tmp_path / "host-time-c.json").write_text(json.dumps(_host_run({case: {"error": "refused"}})))
    [got] = cmp.load_rows(tmp_path)
    assert got["host_time"] == {"host_s": 1e-3, "call_s": 2e-3, "clear_s": 90e-6}
    (tmp_path / "host-time-d.json").write_text("{not json")
    with pytest.raises(cmp.MemsimError, match="host-time-d.json"):
        cmp.load_rows(tmp_path)


@pytest.mark.parametrize("host_s, bound_by", [(1e-3, "host"), (50e-6, "kernels")])
def test_a_call_is_predicted_as_its_kernels_or_its_host_side_whichever_is_longer(host_s, bound_by):
    """do_bench's L2 clear runs on the GPU while the host issues the call: the host's issue time less the clear
    shows where it is the longer; the call is then timed in the run that timed the host."""
    raw = {**row("sdpa_flash.b1h16k16n4096m4096d128c0.bf16"),
           "host_time": {"host_s": host_s, "call_s": 7e-4, "clear_s": 90e-6}}
    got = cmp.compare_row((raw, "analytic"))
    assert got.measured["time"] == 7e-4 and got.host_issue_s == pytest.approx(host_s - 90e-6)
    kernels = got.predicted["kernel_time"]
    assert got.predicted["time"] == (host_s - 90e-6 if bound_by == "host" else kernels)
    assert kernels < 1e-3 - 90e-6 and kernels > 50e-6 - 90e-6
    plain = cmp.compare_row((row("sdpa_flash.b1h16k16n4096m4096d128c0.bf16"), "analytic"))
    assert plain.predicted["time"] == plain.predicted["kernel_time"] and plain.host_issue_s is None


def _repeat(launches: list[dict], written: float, read: float, ns: float) -> list[dict]:
    """`launches` again, as validation/repeat_counters.py records a call: the first launch's DRAM bytes and
    duration replaced."""
    first = {**launches[0], "dram__bytes_write.sum": written, "dram__bytes_read.sum": read,
             "gpu__time_duration.sum": ns}
    return [{k: v for k, v in first.items() if k != "range"}, *launches[1:]]


def test_repeats_join_their_case_only_when_the_kernels_and_their_launch_configs_match(tmp_path):
    case = row("sdpa_flash.b1h16k16n4096m4096d128c0.bf16")
    same = _repeat(case["launches"], 1e6, 2e6, 3e3)
    recompiled = [{**same[0], "launch__registers_per_thread": 128.0}]
    (tmp_path / "measurements-a.jsonl").write_text(json.dumps(case) + "\n")
    (tmp_path / "repeats-a.jsonl").write_text(json.dumps({"id": case["id"], "repeats": [same, recompiled, []]}) + "\n")
    (tmp_path / "repeats-b.jsonl").write_text(json.dumps({"id": "other.case", "repeats": [same]}) + "\n")
    [got] = cmp.load_rows(tmp_path)
    assert got["repeats"] == [same]
    (tmp_path / "repeats-c.jsonl").write_text("{not json")
    with pytest.raises(cmp.MemsimError, match="repeats-c.jsonl:1"):
        cmp.load_rows(tmp_path)
    (tmp_path / "repeats-c.jsonl").write_text(json.dumps({"repeats": [same]}) + "\n")
    with pytest.raises(cmp.MemsimError, match='repeats-c.jsonl:1: a repeat row needs an "id"'):
        cmp.load_rows(tmp_path)


def test_repeated_fields_are_the_median_of_the_row_and_its_repeats():
    case = row("sdpa_flash.b1h16k16n4096m4096d128c0.bf16")
    [launch] = case["launches"]
    alone = cmp.measured(case)
    repeats = [_repeat(case["launches"], w, r, t) for w, r, t in ((1e6, 5e7, 1e5), (2e7, 6e7, 9e5), (9e6, 4e7, 2e5),
                                                                   (3e6, 1e8, 3e5))]
    got = cmp.measured({**case, "repeats": repeats})
    assert got["hbm_write"] == 9e6  # of 1, 20, 9, 3 and the row's 13.5 MB
    assert got["hbm_bytes"] == got["hbm_read"] + got["hbm_write"]
    assert got["hbm_read"] == statistics.median([launch["dram__bytes_read.sum"], 5e7, 6e7, 4e7, 1e8])
    assert got["kernel_time"] == pytest.approx(3e-4)  # of 100, 900, 200, 300 and the row's 398 us
    derived = (*cmp.REPEATED, "hbm_bytes")
    assert {k: v for k, v in got.items() if k not in derived} == {k: v for k, v in alone.items() if k not in derived}
    assert cmp.compare_row(({**case, "repeats": repeats}, "analytic")).runs == 5


def test_repeat_counters_sorts_launches_by_case_and_repeat():
    from validation import repeat_counters as rc

    cases = [Case("sdpa_flash", 1, 16, 16, 512, 512, 64, False), Case("sdpa_cudnn", 1, 16, 16, 512, 512, 64, False)]
    a, b = cases[0].id, cases[1].id
    launches = [{"range": rc.range_name(a, 1), "kernel": "k1"}, {"range": rc.range_name(a, 0), "kernel": "k0"},
                {"range": rc.range_name(a, 0), "kernel": "k0b"}, {"range": a, "kernel": "not a repeat"},
                {"range": rc.range_name(a, 7), "kernel": "beyond the repeats asked for"}]
    got = rc.by_case(launches, cases, repeats=3)
    assert got == {a: [[{"kernel": "k0"}, {"kernel": "k0b"}], [{"kernel": "k1"}]], b: []}


def test_measured_fields_sum_every_launch_of_a_case():
    r = row("sdpa_flash.b8h32k8n1m32768d128c0.bf16")  # split kernel + combine kernel
    m = cmp.measured(r)
    assert m["hbm_read"] == pytest.approx(sum(k["dram__bytes_read.sum"] for k in r["launches"]))
    assert m["hbm_bytes"] == pytest.approx(m["hbm_read"] + sum(k["dram__bytes_write.sum"] for k in r["launches"]))
    got = cmp.compare_row((r, "analytic"))
    assert got.predicted["hbm_bytes"] == got.predicted["hbm_read"] + got.predicted["hbm_write"]
    lookups = 32 * sum(k["lts__t_sectors_srcunit_tex_op_read.sum"] for k in r["launches"])
    assert m["l2_read_lookups"] == pytest.approx(lookups)
    assert m["time"] == r["time_s"]


def test_l2_traffic_is_what_the_sms_received_over_the_crossbar():
    """L2 -> SM bytes are the crossbar's (every SM's copy of a shared sector); rows measured before that counter
    was recorded compare no L2 field rather than the L2's sector lookups under another name."""
    old = cmp.measured(row("sdpa_flash.b8h32k8n1m32768d128c0.bf16"))
    assert "l2_read" not in old and "l2_write" not in old
    new = next(r for r in cmp.load_rows(RESULTS) if r["id"] == "flash2.b1h16k16n4096m4096d128c0.bf16")
    m = cmp.measured(new)
    assert m["l2_read"] == sum(k["l1tex__m_xbar2l1tex_read_bytes.sum"] for k in new["launches"])
    assert m["l2_write"] == sum(k["l1tex__m_l1tex2xbar_write_bytes.sum"] for k in new["launches"])
    assert m["l2_read"] > 2 * m["l2_read_lookups"]  # 512 CTAs of 16 heads read each K/V tile in near lock-step


def test_validation_gives_memsim_the_registers_and_shared_memory_ncu_reported():
    new = {r["id"]: r for r in cmp.load_rows(RESULTS)}
    fa2 = new["sdpa_flash.b1h16k16n4096m4096d128c0.bf16"]
    mapped = map_case(fa2)
    (launch,) = main_launches(fa2)
    (given,) = mapped.resources.values()
    assert mapped.resources == {"flash2_fwd": CtaResources(int(launch["launch__registers_per_thread"]),
                                                           int(launch["launch__shared_mem_per_block_dynamic"]),
                                                           given.loop_instructions)}
    # ncu counted 161.6 M warp instructions: over 4 warps x 16 heads x 32 q-blocks x 64 key blocks of 64 keys
    assert given.loop_instructions == pytest.approx(1232.8, abs=0.1)
    # The math path's launches pair with memsim's sdpa_math launches one by one (its one-CTA fill left out on both
    # sides): PyTorch's elementwise kernels take their registers; the softmax, with as many threads per CTA but
    # another grid, only its instruction count; cuBLAS's 128-thread GEMM CTAs are not memsim's 256-thread ones.
    math = map_case(new["sdpa_math.b1h16k16n1024m1024d128c0.bf16"])
    assert math.resources["math_cast_q"] == CtaResources(32, None, None)
    assert math.resources["math_softmax"].registers_per_thread is None
    assert math.resources["math_softmax"].loop_instructions
    assert "math_qk" not in math.resources and "math_pv" not in math.resources


def test_two_ncu_runs_merge_by_position_in_each_range():
    first = [{"range": "a", "kernel": "k1", "x": 1.0}, {"range": "a", "kernel": "k2", "x": 2.0},
             {"range": "b", "kernel": "k1", "x": 3.0}]
    second = [{"range": "b", "kernel": "k1", "y": 30.0}, {"range": "a", "kernel": "k1", "y": 10.0},
              {"range": "a", "kernel": "other", "y": 20.0}]
    merged = ncu.merge([first, second])
    assert merged == [{"range": "a", "kernel": "k1", "x": 1.0, "y": 10.0}, {"range": "a", "kernel": "k2", "x": 2.0},
                      {"range": "b", "kernel": "k1", "x": 3.0, "y": 30.0}]
    assert first[0] == {"range": "a", "kernel": "k1", "x": 1.0}  # the runs themselves are left as they were


def test_validate_prints_the_error_table_and_writes_report_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    result = CliRunner().invoke(cli, ["validate", "--results", str(THIRD_PARTY_V2), "--engine", "analytic",
                                      "--workers", "1", "--report", str(tmp_path / "r.md"),
                                      "--plots", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    assert "median |error|" in result.output and "hbm_read" in result.output
    assert (tmp_path / "r.md").read_text().startswith("# memsim validation")
    for name in ("predicted_vs_measured.png", "error_by_algorithm.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 10_000


def test_plots_say_so_where_rows_lack_a_counter(tmp_path):
    pytest.importorskip("matplotlib")
    result = CliRunner().invoke(cli, ["validate", "--results", str(THIRD_PARTY), "--engine", "analytic",
                                      "--workers", "1", "--plots", str(tmp_path)])
    assert result.exit_code == 0, result.output  # rows recorded before the crossbar counters: no L2 panes
    assert (tmp_path / "predicted_vs_measured.png").stat().st_size > 10_000


def test_validate_json_has_summary_and_every_row(tmp_path):
    result = CliRunner().invoke(cli, ["validate", "--results", str(THIRD_PARTY_V2), "--engine", "analytic",
                                      "--workers", "1", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[result.output.index("{"):])
    assert set(cmp.FIELDS) <= set(data["summary"])
    assert len(data["rows"]) == len(THIRD_PARTY_V2.read_text().splitlines())


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


# ---- ring, MoBA, FP8 and the FlashAttention-2 backward: cases, runners, mapping ------------------------------------

NEW_KERNELS = ("ring", "moba", "flash2_fp8", "flash2_bwd")
# (case with a small shape, the kernel launch whose grid and tiles memsim's main launch must equal, that launch)
NEW_CASES = [
    (Case("ring", 2, 4, 2, 48, 48, 64, True), "ring_step", "flash2_fwd"),
    (Case("ring", 1, 2, 2, 40, 40, 128, False), "ring_step", "flash2_fwd"),
    (Case("moba", 1, 2, 1, 2048, 2048, 64, True), "moba_attention_kernel", "moba_attn"),
    (Case("flash2_fp8", 1, 2, 1, 200, 200, 64, True, "fp8"), "_flash2_fp8_fwd", "flash2_fwd"),
    (Case("flash2_fp8", 2, 2, 2, 130, 130, 128, False, "fp8"), "_flash2_fp8_fwd", "flash2_fwd"),
    (Case("flash2_bwd", 1, 2, 2, 96, 96, 64, True), "_flash2_bwd_dkdv", "flash2_bwd_dkdv"),
    (Case("flash2_bwd", 2, 1, 1, 80, 80, 128, False), "_flash2_bwd_dkdv", "flash2_bwd_dkdv"),
]


def described(case: Case) -> dict:
    """A recorded row as measure.py writes it, launch configs built on the CPU (the interpreter's tiles there)."""
    runners = pytest.importorskip("validation.runners")
    return {**case.as_dict(), **runners.launch_description(case, device="cpu"), "device": "NVIDIA H100 80GB HBM3",
            "launches": [{"kernel": "recorded", "launch__grid_size": 2}]}


def test_new_kernels_have_cases_with_stable_ids():
    ids = {c.id for c in suite("full", NEW_KERNELS)}
    for case_id in ("ring.b1h32k32n4096m4096d128c1.bf16", "moba.b1h32k8n8192m8192d128c1.bf16",
                    "flash2_fp8.b4h32k32n4096m4096d128c0.fp8", "flash2_bwd.b1h16k16n4096m4096d128c1.bf16"):
        assert case_id in ids
    mine = [c for c in suite("full", NEW_KERNELS) if c.kernel in NEW_KERNELS]
    for kernel in NEW_KERNELS:
        cases = [c for c in mine if c.kernel == kernel]
        assert {c.head_dim for c in cases} == {64, 128} and len(cases) >= 5
        assert kernel == "moba" or {c.causal for c in cases} == {False, True}
    assert all(c.causal and c.q_len == c.kv_len for c in mine if c.kernel == "moba")
    assert all(c.q_heads == c.kv_heads for c in mine if c.kernel == "flash2_bwd")
    assert all(c.dtype == "fp8" for c in mine if c.kernel == "flash2_fp8")


@pytest.mark.parametrize("case,config_kernel,launch_name", NEW_CASES, ids=[c.id for c, _, _ in NEW_CASES])
def test_new_kernels_map_to_memsim_launches_with_their_grid_and_tiles(case, config_kernel, launch_name):
    from memsim.algorithms import ALGORITHMS
    from memsim.hardware import load_gpu

    row = described(case)
    config = next(c for c in row["launch_configs"] if c["kernel"] == config_kernel)
    mapped = map_case(row)
    alg = ALGORITHMS[mapped.algo]
    launch = next(x for x in alg.schedule(mapped.shape, mapped.tiles, mapped.pass_) if x.name == launch_name)
    cost = next(x for x in alg.kernels(load_gpu("H100-SXM5-80GB"), mapped.shape, mapped.tiles, mapped.pass_)
                if x.name == launch_name)
    grid = math.prod(config["grid"])
    print(f"{case.id}: {config_kernel} grid {config['grid']} = {grid}, tiles {config['block_m']} x "
          f"{config['block_n']}, {config['num_warps']} warps, {config['num_stages']} stages -> {mapped.algo} "
          f"{mapped.pass_} {launch.name} grid {launch.grid}")
    assert (launch.grid, cost.grid_ctas) == (grid, grid)
    assert (launch.warps_per_cta, launch.num_stages) == (config["num_warps"], config["num_stages"])
    assert (mapped.tiles.block_m, mapped.tiles.block_n) == (config["block_m"], config["block_n"])
    assert mapped.pass_ == ("bwd" if case.kernel == "flash2_bwd" else "fwd")
    assert mapped.shape.dtype == case.dtype
    assert mapped.how.startswith(f"the kernel's own launch config ({config_kernel})")


@pytest.mark.parametrize("case", [c for c, _, _ in NEW_CASES if c.kernel == "flash2_bwd"], ids=lambda c: c.id)
def test_our_backwards_dq_kernel_is_memsims_separate_dq_launch(case):
    """Our backward computes dQ in its own kernel (TileConfig.dq = "separate"): its grid and tile, the dK/dV
    tile transposed, are memsim's flash2_bwd_dq launch's."""
    from memsim.algorithms import ALGORITHMS

    row = described(case)
    config = next(c for c in row["launch_configs"] if c["kernel"] == "_flash2_bwd_dq")
    mapped = map_case(row)
    assert mapped.tiles.dq == "separate"
    launch = next(x for x in ALGORITHMS["flash2"].schedule(mapped.shape, mapped.tiles, "bwd") if x.name == "flash2_bwd_dq")
    assert launch.grid == math.prod(config["grid"])
    assert (mapped.tiles.block_n, mapped.tiles.block_m) == (config["block_m"], config["block_n"])
    assert (launch.warps_per_cta, launch.num_stages) == (config["num_warps"], config["num_stages"])


@pytest.mark.parametrize("engine", ["analytic", "des"])
@pytest.mark.parametrize("case", [c for c, _, _ in NEW_CASES[::2]], ids=lambda c: c.id)
def test_new_kernels_predict_with_both_engines(case, engine):
    from memsim.predict import predict

    mapped = map_case(described(case))
    p = predict(mapped.algo, mapped.shape, cmp.GPU_BY_DEVICE["NVIDIA H100 80GB HBM3"], mapped.tiles,
                pass_=mapped.pass_, engine=engine, order=mapped.order, ctas=mapped.ctas)
    print(f"{case.id} {engine}: {[k.name for k in p.kernels]}, {p.latency_s * 1e6:.2f} us, "
          f"HBM read {p.bytes['hbm_read']:.0f} B")
    assert p.latency_s > 0 and p.bytes["hbm_read"] > 0 and p.bytes["l2_read"] >= p.bytes["hbm_read"] * 0.5


def test_moba_rows_with_another_block_size_are_refused():
    row = {**described(NEW_CASES[2][0]), "moba_block_size": 256}
    with pytest.raises(Unmapped, match="memsim's moba models blocks of 512, top-3"):
        map_case(row)


def test_moba_runner_runs_what_memsim_moba_models():
    runners = pytest.importorskip("validation.runners")
    from memsim.algorithms.moba import MOBA_BLOCK_SIZE, MOBA_TOP_K

    assert (runners.MOBA_BLOCK_SIZE, runners.MOBA_TOP_K) == (MOBA_BLOCK_SIZE, MOBA_TOP_K)


def test_flash2_backward_maps_its_dkdv_kernel_not_the_delta_kernel():
    row = described(NEW_CASES[5][0])
    assert [c["kernel"] for c in row["launch_configs"]] == ["_flash2_bwd_delta", "_flash2_bwd_dkdv", "_flash2_bwd_dq"]
    row["launch_configs"] = row["launch_configs"][:1]
    with pytest.raises(Unmapped, match="no _flash2_bwd_dkdv"):
        map_case(row)


def measure_only(only: str) -> list[Case]:
    measure = pytest.importorskip("validation.measure")
    import argparse

    return measure.select(argparse.Namespace(suite="full", ours=",".join(NEW_KERNELS), only=only))


def test_measure_selects_only_the_new_cases():
    """The command validation/README.md gives for measuring them on the GPU."""
    cases = measure_only(r"^(ring|moba|flash2_fp8|flash2_bwd)\.")
    assert {c.kernel for c in cases} == set(NEW_KERNELS)
    assert len(cases) == len([c for c in suite("full", NEW_KERNELS) if c.kernel in NEW_KERNELS])


def test_measure_help_still_works():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "validation.measure", "--help"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0 and "--ours" in done.stdout and "--only" in done.stdout


# The runners on tiny shapes, where kernels run (the interpreter on a CPU): fp16, which the interpreter runs.

def reference(q, k, v, causal: bool):
    """float64 attention, GQA by repeating K and V, queries aligned to the end of the keys."""
    import torch

    group = q.shape[1] // k.shape[1]
    k, v = (x.double().repeat_interleave(group, dim=1) for x in (k, v))
    s = q.double() @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        n, m = s.shape[-2:]
        s = s.masked_fill(torch.ones(n, m, dtype=torch.bool, device=s.device).triu(m - n + 1), -math.inf)
    return torch.softmax(s, dim=-1) @ v


def one_set(case: Case):
    runners = pytest.importorskip("validation.runners")
    from kernel_checks import DEVICE

    return runners.input_sets(case, device=DEVICE, count=1)[0]


def test_ring_runner_is_one_step_of_exact_attention():
    runners = pytest.importorskip("validation.runners")
    for causal in (True, False):
        case = Case("ring", 1, 2, 1, 40, 40, 64, causal, "fp16")
        q, k, v = one_set(case)
        o, lse = runners.kernel_call(case)(q, k, v)
        error = (o.double() - reference(q, k, v, causal)).abs().max().item()
        print(f"{case.id}: max |O - O_ref| = {error:.2e}")
        assert error < 4e-3


def test_moba_runner_launches_the_kernel_as_moba_attention_does(monkeypatch):
    """Blocks of 32 and top-2 here, so that 128 keys hold 4 blocks and the gate chooses."""
    runners = pytest.importorskip("validation.runners")
    import torch
    from kernels.block_sparse import launch_configs, moba_attention

    monkeypatch.setattr(runners, "MOBA_BLOCK_SIZE", 32)
    monkeypatch.setattr(runners, "MOBA_TOP_K", 2)
    case = Case("moba", 1, 2, 1, 128, 128, 64, True, "fp16")
    q, k, v = one_set(case)
    o, lse = runners.kernel_call(case)(q, k, v)
    block_m = launch_configs(q, k, v, block_size=32, top_k=2)[0].block_m
    mask = runners.tile_gate_mask(q, k, block_m)
    tiles = mask.view(1, 2, 128 // block_m, block_m, 4)
    assert (tiles == tiles[:, :, :, :1]).all(), "every row of a query tile takes its tile's blocks"
    chosen = mask.sum(dim=-1)
    assert (chosen[:, :, :32] == 1).all() and (chosen[:, :, 32:] == 2).all(), "its own block, then the top-1"
    o_op, lse_op = moba_attention(q, k, v, block_size=32, top_k=2, block_mask=mask, return_lse=True)
    assert torch.equal(o, o_op) and torch.equal(lse, lse_op)


def test_backward_runner_gives_the_gradients_of_its_saved_output():
    runners = pytest.importorskip("validation.runners")
    case = Case("flash2_bwd", 1, 2, 2, 48, 48, 64, True, "fp16")
    q, k, v = one_set(case)
    dq, dk, dv = runners.kernel_call(case)(q, k, v)
    _, _, do = runners.backward_inputs(q, k, v, True)
    q64, k64, v64 = (x.double().requires_grad_() for x in (q, k, v))
    reference(q64, k64, v64, True).backward(do.double())
    errors = [(got.double() - want.grad).abs().max().item() for got, want in ((dq, q64), (dk, k64), (dv, v64))]
    print(f"{case.id}: max |dQ|, |dK|, |dV| errors {errors}")
    assert max(errors) < 1e-2


def test_fp8_runner_quantises_once_and_attends(monkeypatch):
    """fp16 output here (the interpreter runs no bf16); e4m3 keeps 3 mantissa bits, P too: a loose bound."""
    runners = pytest.importorskip("validation.runners")
    import torch

    monkeypatch.setattr(runners, "FP8_OUT_DTYPE", torch.float16)
    case = Case("flash2_fp8", 1, 2, 1, 40, 40, 64, True, "fp8")
    q, k, v = one_set(case)
    assert q.dtype == torch.bfloat16
    call = runners.kernel_call(case)
    o = call(q, k, v)
    assert torch.equal(o, call(q, k, v))
    error = (o.double() - reference(q, k, v, True)).abs().max().item()
    print(f"{case.id}: max |O - O_ref| = {error:.3f}")
    assert o.dtype == torch.float16 and error < 0.25


def test_the_fp8_rows_say_what_memsim_writes_and_it_writes_o_in_bf16():
    from memsim import predict
    row = next(r for r in cmp.load_rows(RESULTS) if r["kernel"] == "flash2_fp8")
    mapped = map_case(row)
    assert "O written in bf16" in mapped.how and "scales" in mapped.how
    p = predict(mapped.algo, mapped.shape, "H100-SXM5-80GB", mapped.tiles, engine="analytic")
    s = mapped.shape
    assert p.bytes_by_tensor["O"]["l2_write"] == s.batch * s.q_heads * s.q_len * s.head_dim * 2


def test_probe_counters_are_bytes_and_seconds_of_what_was_profiled():
    launch = {"range": "r", "dram__bytes_write.sum": 1000.0, "lts__t_sectors_srcunit_tex_op_write.sum": 10.0,
              "gpu__time_duration.sum": 2500.0}
    assert ncu.probe_counters(launch) == {"dram_write_bytes": 1000.0, "l2_write_bytes": 320.0, "time_s": 2.5e-6}


def test_probe_counters_give_the_l2_fabric_sectors_in_bytes():
    assert ncu.probe_counters({"lts__t_sectors_srcunit_ltcfabric.sum": 3.0}) == {"fabric_bytes": 96.0}
