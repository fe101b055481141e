"""`memsim capacity` and `memsim models`: tables and JSON on success; on bad input one line on stderr,
exit 2, no traceback."""

import json

import pytest

from memsim.cli.capacity import both_units

from checks import assert_usage_error_on_one_line


EXAMPLE = ("capacity", "--model", "llama-3-70b", "--gpu", "H100-SXM5-80GB", "--tp", "8", "--context", "32768",
           "--kv-dtype", "fp8")


def test_the_issues_example_prints_every_section(memsim_cli):
    code, out, err = memsim_cli(*EXAMPLE)
    assert code == 0 and err == ""
    for word in ("Llama-3-70B", "KV bytes per token", "163,840 B", "131.42 GiB", "reserve (10%)",
                 "largest batch at 32768 tokens", "prefix sharing", "parallel sampling", "beam search",
                 "decode step, weights (roofline)", "tokens/s", "time to first token", "not included"):
        assert word in out, word


def test_json_numbers(memsim_cli):
    code, out, _ = memsim_cli(*EXAMPLE, "--batch", "16", "--json")
    d = json.loads(out)
    assert code == 0 and d["batch"] == 16 and d["decode"]["batch"] == 16
    assert d["kv"]["bytes_per_token"] == 2 * 80 * 8 * 128 and d["kv"]["kv_heads_per_gpu"] == 1
    assert d["weights"]["bytes_total"] == 70_553_706_496 * 2
    assert d["weights"]["bytes_per_gpu"] == 70_553_706_496 * 2 // 8
    assert d["kv"]["bytes_total_per_gpu"] == 16 * 32768 * 20_480
    assert d["batch_fits"] is True and d["waste"] is None


def test_llama2_7b_fp16(memsim_cli):
    code, out, _ = memsim_cli("capacity", "--model", "Llama-2-7B", "--context", "4096", "--kv-dtype", "fp16",
                              "--weight-dtype", "fp16", "--json")
    d = json.loads(out)
    assert d["kv"]["bytes_per_token"] == 524_288 and d["max_batch"] == 29


def test_weights_that_do_not_fit_say_so_with_numbers(memsim_cli):
    code, out, err = memsim_cli("capacity", "--model", "llama-3-70b")
    assert_usage_error_on_one_line(code, out, err, [
        "Llama-3-70B in bf16 does not fit on one H100-SXM5-80GB: its weights alone need 131.4 GiB"])


def test_lengths_file_and_distribution(memsim_cli, tmp_path):
    path = tmp_path / "lengths.txt"
    path.write_text("100\n2000\n4096\n")
    code, out, _ = memsim_cli("capacity", "--context", "4096", "--lengths", str(path), "--json")
    w = json.loads(out)["waste"]
    assert code == 0 and w["requests"] == 3 and w["contiguous"]["waste_tokens"] == 3 * 4096 - 6196
    assert w["paged"]["waste_tokens"] == 12 + 0 + 0
    code, out, _ = memsim_cli("capacity", "--context", "4096", "--lengths-dist", "lognormal", "--requests", "50",
                              "--seed", "1")
    assert code == 0 and "contiguous (to max length)" in out and "50 requests" in out


def test_reserve_is_printed_and_honoured(memsim_cli):
    _, out, _ = memsim_cli("capacity", "--context", "8192", "--reserve", "0.25", "--json")
    d = json.loads(out)
    assert d["memory"]["reserve_fraction"] == 0.25 and d["memory"]["reserve_bytes"] == 80 * 2**30 // 4
    assert "25%" in d["notes"][0]


def test_plot_is_written(memsim_cli, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "kv.png"
    code, out, _ = memsim_cli("capacity", "--model", "llama-2-13b", "--context", "4096", "--plot", str(path))
    assert code == 0 and "plot written" in out and path.stat().st_size > 1000


def test_models_lists_every_preset(memsim_cli):
    code, out, _ = memsim_cli("models", "--json")
    names = [m["name"] for m in json.loads(out)]
    assert code == 0 and len(names) == 10 and "Qwen2.5-72B" in names
    code, out, _ = memsim_cli("models")
    assert code == 0 and "Mixtral-8x7B" in out and "12.88B" in out


def test_both_units():
    assert both_units(2**30) == "1.07 GB (1.00 GiB)"
    assert both_units(524_288) == "524.29 KB (512.00 KiB)"
    assert both_units(12) == "12 B"


@pytest.mark.parametrize("args, words", [
    (["capacity", "--model", "llama-3-71b"], ["unknown model 'llama-3-71b'", "Llama-3-70B"]),
    (["capacity", "--gpu", "H1000"], ["unknown GPU 'H1000'"]),
    (["capacity", "--tp", "3"], ["tp = 3", "32 query heads"]),
    (["capacity", "--reserve", "1.5"], ["reserve fraction = 1.5"]),
    (["capacity", "--context", "0"], ["context = 0"]),
    (["capacity", "--batch", "0"], ["batch = 0"]),
    (["capacity", "--block-size", "0"], ["block_size = 0"]),
    (["capacity", "--context", "1024", "--prompt-len", "800", "--gen-len", "800"], ["prompt_len + gen_len"]),
    (["capacity", "--lengths", "/no/such/file"], ["cannot read lengths file"]),
    (["capacity", "--lengths", "x.txt", "--lengths-dist", "uniform"], ["not both"]),
    (["capacity", "--lengths-dist", "zipf"], ["'--lengths-dist'", "zipf"]),
    (["capacity", "--kv-dtype", "int2"], ["'--kv-dtype'", "int2"]),
    (["capacity", "--decode-algo", "nope"], ["'--decode-algo'", "nope"]),
    (["capacity", "--dtype", "fp8", "--gpu", "A100-SXM4-80GB"], ["A100-SXM4-80GB has no fp8"]),
])
def test_bad_input_gets_one_line_and_exit_2(memsim_cli, args, words):
    code, out, err = memsim_cli(*args)
    assert_usage_error_on_one_line(code, out, err, words)
