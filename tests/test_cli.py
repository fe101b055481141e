"""The memsim command: output on success; on bad input one line on stderr, exit 2, no traceback."""

import json
import subprocess
import sys

import pytest

from memsim.cli.main import main

from checks import assert_usage_error_on_one_line


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_predict_prints_a_table(capsys):
    code, out, err = run(capsys, "predict")
    assert code == 0 and err == ""
    for word in ("flash2", "H100-SXM5-80GB", "latency", "HBM read", "L2 -> SM read", "bound"):
        assert word in out


def test_predict_json(capsys):
    code, out, _ = run(capsys, "predict", "--json", "--seq", "1024", "--heads", "8", "--kv-heads", "2")
    d = json.loads(out)
    assert code == 0 and d["shape"]["q_len"] == 1024 and d["shape"]["kv_heads"] == 2
    assert d["latency_s"] > 0


def test_tile_overrides_reach_the_prediction(capsys):
    _, out, _ = run(capsys, "predict", "--json", "--block-m", "64", "--block-n", "32", "--warps", "8", "--stages", "3")
    t = json.loads(out)["tiles"]
    assert (t["block_m"], t["block_n"], t["num_warps"], t["num_stages"]) == (64, 32, 8, 3)


def test_reload_q_describes_a_kernel_that_rereads_q_and_is_refused_elsewhere(capsys):
    _, kept, _ = run(capsys, "predict", "--json", "--engine", "analytic", "--block-n", "128")
    _, reloaded, _ = run(capsys, "predict", "--json", "--engine", "analytic", "--block-n", "128", "--reload-q")
    assert json.loads(reloaded)["tiles"]["q_reload"] is True
    assert json.loads(reloaded)["bytes"]["l2_read"] > json.loads(kept)["bytes"]["l2_read"]
    code, out, err = run(capsys, "predict", "--algo", "flash3", "--engine", "analytic", "--reload-q")
    assert code != 0 and "q_reload applies to flash2" in err and "Traceback" not in err + out


def test_kv_scale_options_describe_the_cache_and_a_bad_group_size_is_one_line(capsys):
    args = ("predict", "--json", "--engine", "analytic", "--algo", "flash_decoding", "--seq", "1", "--kv-seq", "8192",
            "--kv-dtype", "int8", "--kv-group-size", "32")
    _, fp16, _ = run(capsys, *args)
    _, fp32, _ = run(capsys, *args, "--kv-scale-dtype", "fp32")
    assert json.loads(fp32)["bytes"]["hbm_read"] > json.loads(fp16)["bytes"]["hbm_read"]
    code, out, err = run(capsys, *args[:-1], "0")
    assert code != 0 and "kv_group_size = 0" in err and "Traceback" not in err + out


def test_no_v_prefetch_slows_a_decode_split_kernel_and_is_refused_elsewhere(capsys):
    args = ("predict", "--json", "--algo", "flash_decoding", "--seq", "1", "--kv-seq", "8192", "--heads", "32",
            "--kv-heads", "8", "--batch", "4", "--kv-dtype", "int8")
    _, prefetched, _ = run(capsys, *args)
    _, exposed, _ = run(capsys, *args, "--no-v-prefetch")
    assert json.loads(exposed)["tiles"]["v_prefetch"] is False
    assert json.loads(exposed)["latency_s"] > json.loads(prefetched)["latency_s"]
    assert json.loads(exposed)["bytes"] == json.loads(prefetched)["bytes"]
    _, analytic, _ = run(capsys, *args, "--no-v-prefetch", "--engine", "analytic")
    assert any("v_prefetch = false changes nothing here" in a for a in json.loads(analytic)["assumptions"])
    code, out, err = run(capsys, "predict", "--algo", "flash2", "--no-v-prefetch")
    assert code != 0 and "v_prefetch = false" in err and "flash2" in err and "Traceback" not in err + out


def test_no_lse_writes_o_alone_and_is_refused_elsewhere(capsys):
    _, kept, _ = run(capsys, "predict", "--json", "--heads", "4", "--seq", "1024")
    _, dropped, _ = run(capsys, "predict", "--json", "--heads", "4", "--seq", "1024", "--no-lse")
    kept, dropped = json.loads(kept), json.loads(dropped)
    assert dropped["tiles"]["lse_output"] is False and "LSE" not in dropped["bytes_by_tensor"]
    assert kept["bytes"]["l2_write"] - dropped["bytes"]["l2_write"] == kept["bytes_by_tensor"]["LSE"]["l2_write"]
    code, out, err = run(capsys, "predict", "--algo", "standard", "--no-lse")
    assert code != 0 and "lse_output = false" in err and "standard" in err and "Traceback" not in err + out


def test_faithful_runs_every_tile_and_agrees_with_fast_mode(capsys, monkeypatch):
    import memsim.cli.main as cli

    modes, real = [], cli.run
    monkeypatch.setattr(cli, "run", lambda *a, **k: modes.append(k["fast"]) or real(*a, **k))
    args = ("predict", "--json", "--batch", "2", "--heads", "8", "--seq", "4096", "--head-dim", "64")
    _, fast, _ = run(capsys, *args)
    _, faithful, _ = run(capsys, *args, "--faithful")
    assert modes == [True, False]
    assert json.loads(faithful)["latency_s"] == pytest.approx(json.loads(fast)["latency_s"], rel=0.01)
    code, out, err = run(capsys, "predict", "--faithful", "--engine", "analytic")
    assert code != 0 and "--faithful needs --engine des" in err and "Traceback" not in err + out


def test_dq_picks_the_backward_and_is_refused_without_one(capsys):
    args = ("predict", "--json", "--engine", "analytic", "--pass", "bwd", "--block-m", "32", "--block-n", "128")
    _, atomic, _ = run(capsys, *args)
    _, separate, _ = run(capsys, *args, "--dq", "separate")
    assert [k["name"] for k in json.loads(separate)["kernels"]] == \
        ["flash2_bwd_delta", "flash2_bwd_dkdv", "flash2_bwd_dq"]
    assert json.loads(separate)["tiles"]["dq"] == "separate"
    assert json.loads(separate)["flops"]["tensor"] > json.loads(atomic)["flops"]["tensor"]  # S, dP recomputed
    code, out, err = run(capsys, "predict", "--engine", "analytic", "--dq", "separate")
    assert code != 0 and "pass 'fwd' has none" in err and "Traceback" not in err + out


def test_gpus_lists_presets(capsys):
    code, out, _ = run(capsys, "gpus", "--json")
    names = [g["name"] for g in json.loads(out)]
    assert code == 0 and "H100-SXM5-80GB" in names


@pytest.mark.parametrize("args, words", [
    (["predict", "--gpu", "H1000"], ["unknown GPU 'H1000'", "H100-SXM5-80GB"]),
    (["predict", "--gpu", "/no/such/file.yaml"], ["cannot read GPU file"]),
    (["predict", "--heads", "32", "--kv-heads", "5"], ["q_heads = 32", "kv_heads = 5"]),
    (["predict", "--seq", "-4"], ["q_len = -4"]),
    (["predict", "--seq", "0"], ["q_len = 0"]),
    (["predict", "--seq", "abc"], ["'--seq'", "abc"]),
    (["predict", "--head-dim", "0"], ["head_dim = 0"]),
    (["predict", "--batch", "0"], ["batch = 0"]),
    (["predict", "--dtype", "int8"], ["'--dtype'", "int8"]),
    (["predict", "--algo", "nope"], ["'--algo'", "nope"]),
    (["predict", "--block-m", "512", "--block-n", "256", "--stages", "4"], ["shared memory", "232448"]),
    (["predict", "--warps", "3"], ["num_warps = 3"]),
    (["predict", "--window", "0"], ["window = 0"]),
    (["predict", "--causal", "--seq", "10", "--kv-seq", "5"], ["q_len = 10", "kv_len = 5"]),
    (["predict", "--engine", "des", "--algo", "linear", "--pass", "bwd"], ["linear models only the fwd pass"]),
    (["predict", "--compare", "flash2,bogus"], ["unknown algorithm 'bogus'"]),
    (["predict", "--no-such-flag"], ["--no-such-flag"]),
    (["nosuchcommand"], ["nosuchcommand"]),
])
def test_bad_input_gets_one_line_and_exit_2(capsys, args, words):
    code, out, err = run(capsys, *args)
    assert_usage_error_on_one_line(code, out, err, words)


def test_bad_gpu_file_names_file_key_and_value(tmp_path, capsys):
    path = tmp_path / "g.yaml"
    path.write_text("name: X\nsm_count: lots\n")
    code, _, err = run(capsys, "predict", "--gpu", str(path))
    assert code == 2 and str(path) in err and "\n" not in err.strip()


def test_real_process_has_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "memsim.cli.main", "predict", "--gpu", "nope"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
