"""The roofline and the sequence-length plot: the numbers drawn are memsim.predict's (read back from the
figure's artists), the PNG files are written and not empty, matplotlib is imported only to draw, and the
scenarios' `plot:` entries write their files under `memsim run --plot DIR`."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from memsim import AttentionShape, MemsimError, load_gpu, predict
from memsim.plots.roofline import roof, roofline_figure, roofline_plot, roofline_point
from memsim.plots.seq_sweep import seq_sweep_figure, seq_sweep_plot
from memsim.scenario import run_scenario

pytest.importorskip("matplotlib")

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "scenarios"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SHAPE = AttentionShape(batch=1, q_heads=4, q_len=1024, head_dim=64)
ALGOS = ("standard", "flash1", "flash2", "flash3")


def assert_png(path) -> None:
    data = Path(path).read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000, path


@pytest.fixture(scope="module")
def predictions():
    return [predict(a, SHAPE) for a in ALGOS]


def test_roofs_are_the_gpus_ceilings():
    gpu = load_gpu("H100-SXM5-80GB")
    r, c = roof(gpu, "bf16"), gpu.ceilings(True)
    assert (r.tensor_flops_per_s, r.hbm_bandwidth_bytes_per_s, r.l2_bandwidth_bytes_per_s) == \
        (c.tensor_flops_per_s["bf16"], c.hbm_bandwidth_bytes_per_s, c.l2_bandwidth_bytes_per_s)
    peak = roof(gpu, "fp32", calibrated=False)
    assert peak.dtype == "tf32" and peak.tensor_flops_per_s == gpu.tensor_flops_per_s["tf32"]
    with pytest.raises(MemsimError, match="no fp8 tensor-core rate"):
        roof("A100-SXM4-80GB", "fp8")


def test_roofline_draws_predicts_numbers(predictions):
    r = roof("H100-SXM5-80GB", "bf16")
    fig = roofline_figure(r, [roofline_point(p) for p in predictions])
    ax = fig.axes[0]
    hbm_roof, l2_roof = ax.lines[:2]
    x = hbm_roof.get_xdata()
    peak = r.tensor_flops_per_s
    np.testing.assert_array_equal(hbm_roof.get_ydata(), np.minimum(peak, x * r.hbm_bandwidth_bytes_per_s))
    np.testing.assert_array_equal(l2_roof.get_ydata(), np.minimum(peak, x * r.l2_bandwidth_bytes_per_s))
    markers = [c.get_offsets()[0] for c in ax.collections]  # per algorithm: HBM point, then L2 point
    assert len(markers) == 2 * len(predictions)
    for p, hbm, l2 in zip(predictions, markers[0::2], markers[1::2]):
        flops = p.flops["tensor"]
        hbm_bytes = p.bytes["hbm_read"] + p.bytes["hbm_write"] + p.bytes["hbm_write_deferred"]
        l2_bytes = p.bytes["l2_read"] + p.bytes["l2_write"]
        assert tuple(hbm) == (flops / hbm_bytes, flops / p.latency_s)
        assert tuple(l2) == (flops / l2_bytes, flops / p.latency_s)
    assert x[0] < min(m[0] for m in markers) and x[-1] > max(m[0] for m in markers)
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_roofline_plot_writes_a_png(predictions, tmp_path):
    path = roofline_plot(predictions, "H100-SXM5-80GB", tmp_path / "roof.png")
    assert path == str(tmp_path / "roof.png")
    assert_png(path)


def test_roofline_refuses_predictions_it_cannot_place(predictions, tmp_path):
    with pytest.raises(MemsimError, match="predicted on H100-SXM5-80GB"):
        roofline_plot(predictions, "A100-SXM4-80GB", tmp_path / "x.png")
    with pytest.raises(MemsimError, match="datasheet peak"):
        roofline_plot(predictions, "H100-SXM5-80GB", tmp_path / "x.png", calibrated=False)
    with pytest.raises(MemsimError, match="needs all three > 0"):
        roofline_point(dataclasses.replace(predictions[0], kernels=()))  # no kernel: no FLOPs, no bytes
    with pytest.raises(MemsimError, match="at least one prediction"):
        roofline_plot([], "H100-SXM5-80GB", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_seq_sweep_draws_predicts_numbers_and_writes_a_png(tmp_path):
    lengths = [128, 512, 2048]
    series = {a: [predict(a, AttentionShape(q_heads=2, q_len=n, head_dim=64)) for n in lengths]
              for a in ("standard", "flash2")}
    fig = seq_sweep_figure(lengths, series)
    bytes_ax, time_ax = fig.axes
    for line, (algo, ps) in zip(bytes_ax.lines, series.items()):
        assert line.get_label() == algo and list(line.get_xdata()) == lengths
        assert list(line.get_ydata()) == [p.bytes["hbm_read"] + p.bytes["hbm_write"] + p.bytes["hbm_write_deferred"]
                                          for p in ps]
    for line, ps in zip(time_ax.lines, series.values()):
        assert list(line.get_ydata()) == [p.latency_s for p in ps]
    import matplotlib.pyplot as plt

    plt.close(fig)
    assert_png(seq_sweep_plot(lengths, series, tmp_path / "sweep.png", title="t"))
    with pytest.raises(MemsimError, match="2 predictions for 3 lengths"):
        seq_sweep_plot(lengths, {"flash2": series["flash2"][:2]}, tmp_path / "bad.png")


def test_unwritable_plot_path_is_refused_on_one_line(predictions, tmp_path):
    with pytest.raises(MemsimError, match="cannot write plot"):
        roofline_plot(predictions, "H100-SXM5-80GB", tmp_path / "no-such-folder" / "roof.png")


def test_scenario_plot_entries_write_their_pngs(tmp_path):
    result = run_scenario(SCENARIO_DIR / "flash-attention-1-2-3.yaml", plot_dir=tmp_path / "plots")
    assert sorted(Path(p).name for p in result.plots) == ["fa123-across-lengths.png", "fa123-roofline.png"]
    for path in result.plots:
        assert_png(path)


def test_every_kind_with_a_plot_writes_one(tmp_path):
    for name in ("long-document-qa", "decode-split-kv", "multi-turn-chat"):
        result = run_scenario(SCENARIO_DIR / f"{name}.yaml", plot_dir=tmp_path)
        assert result.plots, name
    assert {p.name for p in tmp_path.iterdir()} == {"long-document-kv.png", "long-document-prefill-roofline.png",
                                                  "split-kv-batch-1.png", "chat-kv.png"}


def test_matplotlib_is_imported_only_to_draw_and_torch_never():
    code = ("import sys\n"
            "sys.modules['torch'] = None  # any import of torch now fails\n"
            "import memsim.scenario, memsim.cli.run, memsim.plots.roofline, memsim.plots.seq_sweep\n"
            "assert 'matplotlib' not in sys.modules, 'imported at start'\n"
            f"memsim.scenario.run_scenario({str(SCENARIO_DIR / 'decode-split-kv.yaml')!r})\n"
            "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
