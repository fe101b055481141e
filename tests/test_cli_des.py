"""The memsim command's discrete-event options: --trace, --order, --explain, and their error lines."""

import json

import pytest

from memsim import AttentionShape, predict
from memsim.cli.main import main
from memsim.predict import run as run_prediction
from memsim.explain import explain

from checks import assert_usage_error_on_one_line

SMALL = ["--heads", "4", "--seq", "1024"]  # 32 CTAs: quick


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_trace_writes_a_perfetto_file(capsys, tmp_path):
    path = tmp_path / "out.json"
    code, out, err = run(capsys, "predict", "--engine", "des", *SMALL, "--trace", str(path))
    assert code == 0 and err == ""
    assert f"trace written to {path}" in out and "latency" in out
    trace = json.loads(path.read_text())
    cta_slices = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["name"].startswith("flash2_fwd pid")]
    assert len(cta_slices) == 4 * 8  # 4 heads x 8 q blocks, one slice each


def test_trace_and_order_prediction_equals_the_plain_one():
    """The CLI's --trace path simulates through memsim.predict.run; with program-id order it must
    give exactly what memsim.predict(engine="des") gives."""
    shape = AttentionShape(q_heads=8, q_len=2048, causal=True)
    p, _ = run_prediction("flash2", shape, engine="des", trace=True)
    assert p.as_dict() == predict("flash2", shape, engine="des").as_dict()


@pytest.mark.parametrize("args, words", [
    (["--engine", "analytic", "--trace", "t.json"], ["--trace t.json needs --engine des"]),
    (["--engine", "analytic", "--order", "swizzle"], ["--order swizzle needs --engine des"]),
    (["--engine", "des", "--compare", "flash2,flash1", "--trace", "t.json"], ["--trace takes one algorithm"]),
    (["--engine", "des", "--order", "swizzle", "--swizzle-group", "0"], ["swizzle group = 0"]),
    (["--engine", "des", "--order", "persistent", "--persistent-ctas", "-3"], ["persistent CTAs = -3"]),
    (["--engine", "des", "--order", "zigzag"], ["'--order'", "zigzag"]),
    (["--engine", "des", "--trace", "/no/such/dir/t.json"], ["cannot write trace file"]),
])
def test_bad_des_options_get_one_line_and_exit_2(capsys, args, words):
    code, out, err = run(capsys, "predict", *SMALL, *args)
    assert_usage_error_on_one_line(code, out, err, words)


@pytest.mark.parametrize("order, note", [("swizzle", "grouped dispatch, 2 (batch, head) rows"),
                                         ("persistent", "persistent grid of 16 CTAs")])
def test_order_reaches_the_prediction(capsys, order, note):
    code, out, _ = run(capsys, "predict", "--engine", "des", *SMALL, "--json", "--order", order,
                       "--swizzle-group", "2", "--persistent-ctas", "16")
    d = json.loads(out)
    base = predict("flash2", AttentionShape(q_heads=4, q_len=1024), engine="des").as_dict()
    assert code == 0 and any(note in a for a in d["assumptions"])
    assert d["flops"] == base["flops"] and d["bytes"]["l2_read"] == base["bytes"]["l2_read"]


@pytest.mark.parametrize("engine", ["analytic", "des"])
def test_explain_prints_after_the_table(capsys, engine):
    code, out, _ = run(capsys, "predict", "--engine", engine, *SMALL, "--explain")
    lines = explain(predict("flash2", AttentionShape(q_heads=4, q_len=1024), engine=engine))
    assert code == 0
    table_end = out.index("engine: " + engine)
    for line in lines:
        assert out.index(line) > table_end


def test_explain_in_json_and_compare(capsys):
    code, out, _ = run(capsys, "predict", *SMALL, "--explain", "--json")
    d = json.loads(out)
    assert code == 0 and d["explain"] == explain(predict("flash2", AttentionShape(q_heads=4, q_len=1024), engine="des"))
    code, out, _ = run(capsys, "predict", *SMALL, "--explain", "--compare", "flash2,flash1")
    assert code == 0 and "flash2:" in out and "flash1:" in out


def test_json_has_utilisation_and_achieved(capsys):
    code, out, _ = run(capsys, "predict", "--engine", "des", *SMALL, "--json")
    d = json.loads(out)
    assert set(d["utilisation"]) == {"tensor", "cuda", "sfu", "smem", "issue", "hbm", "l2"}
    assert set(d["achieved"]) == {"tensor_flops_per_s", "hbm_bytes_per_s", "l2_bytes_per_s"}
    assert d["achieved"]["tensor_flops_per_s"] == pytest.approx(d["flops"]["tensor"] / d["latency_s"], rel=1e-12)
    assert set(d["kernels"][0]["utilisation"]) == set(d["utilisation"])
