"""A user's own GPU YAML: accepted when right, refused in one line naming file, key and value when not."""

from pathlib import Path

import pytest
import yaml

from memsim.errors import MemsimError
from memsim.hardware import load_gpu
from memsim.hardware.load import PRESET_DIR

H100_FILE = PRESET_DIR / "h100-sxm5-80gb.yaml"


def write_variant(tmp_path: Path, change) -> Path:
    data = yaml.safe_load(H100_FILE.read_text())
    change(data)
    path = tmp_path / "my-gpu.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_user_file_with_plain_numbers_loads(tmp_path):
    def plain(d):
        d["name"] = "MyGPU"
        d["sm_count"] = 100
        d["l2_bytes"] = "64 MiB"
        d.pop("calibration")
    spec = load_gpu(str(write_variant(tmp_path, plain)))
    assert spec.name == "MyGPU" and spec.sm_count == 100 and spec.l2_bytes == 64 * 2**20
    assert spec.calibration is None
    assert spec.ceilings().origin == "datasheet peak"


def _error(tmp_path, change) -> str:
    with pytest.raises(MemsimError) as err:
        load_gpu(str(write_variant(tmp_path, change)))
    message = str(err.value)
    assert "\n" not in message and "my-gpu.yaml" in message
    return message


def test_missing_key(tmp_path):
    assert "missing key 'l2_bytes'" in _error(tmp_path, lambda d: d.pop("l2_bytes"))


def test_unknown_key_suggests_the_close_one(tmp_path):
    def typo(d):
        d["l2_byte"] = d.pop("l2_bytes")
    message = _error(tmp_path, typo)
    assert "unknown key 'l2_byte'" in message and "l2_bytes" in message


def test_wrong_unit(tmp_path):
    def wrong(d):
        d["hbm_bandwidth_bytes_per_s"] = "3.35 TB"
    message = _error(tmp_path, wrong)
    assert "hbm_bandwidth_bytes_per_s" in message and "'3.35 TB'" in message


def test_negative_value(tmp_path):
    def negative(d):
        d["sm_count"] = {"value": -132, "source": "x"}
    message = _error(tmp_path, negative)
    assert "sm_count" in message and "-132" in message


def test_fractional_count(tmp_path):
    def frac(d):
        d["sm_count"] = 132.5
    assert "whole number" in _error(tmp_path, frac)


def test_unknown_tensor_dtype(tmp_path):
    def bad(d):
        d["tensor_flops_per_s"]["fp12"] = "1 TFLOP/s"
    assert "tensor_flops_per_s.fp12" in _error(tmp_path, bad)


def test_block_smem_larger_than_sm(tmp_path):
    def bad(d):
        d["smem_per_block_optin_bytes"] = 10**6
    assert "smem_per_block_optin_bytes" in _error(tmp_path, bad)


def test_not_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(MemsimError, match="broken.yaml: not valid YAML at line"):
        load_gpu(str(path))


def test_missing_file():
    with pytest.raises(MemsimError, match="cannot read GPU file"):
        load_gpu("/nonexistent/gpu.yaml")


def test_preset_names_are_case_insensitive_and_have_aliases():
    assert load_gpu("h100-sxm5-80gb").name == load_gpu("H100").name == "H100-SXM5-80GB"


def test_unknown_preset_lists_close_names():
    with pytest.raises(MemsimError, match="unknown GPU 'H100-SXM6': did you mean H100-SXM5-80GB"):
        load_gpu("H100-SXM6")


def test_calibration_replaces_only_what_was_measured():
    spec = load_gpu("H100-SXM5-80GB")
    peak, measured = spec.ceilings(calibrated=False), spec.ceilings()
    assert peak.hbm_bandwidth_bytes_per_s == 3.35e12
    assert measured.hbm_bandwidth_bytes_per_s == spec.calibration.hbm_bandwidth_bytes_per_s
    assert measured.hbm_bandwidth_bytes_per_s == pytest.approx(3.0e12, rel=0.05)  # DESIGN.md's copy figure
    assert measured.hbm_latency_s == spec.calibration.hbm_latency_s != peak.hbm_latency_s
    assert peak.l2_hit_latency_s == 0.0 < measured.l2_hit_latency_s
    assert measured.tensor_flops_per_s["int8"] == peak.tensor_flops_per_s["int8"]  # not measured: peak stays
    assert measured.tensor_flops_per_s["bf16"] < peak.tensor_flops_per_s["bf16"]


@pytest.mark.parametrize("ways", [6.5, 0])
def test_l2_ways_must_be_a_whole_number_of_ways(tmp_path, ways):
    def odd(d):
        d["calibration"]["l2_ways"] = ways
    message = _error(tmp_path, odd)
    assert "calibration.l2_ways" in message and f"{ways:g}" in message and "whole number" in message


def test_the_h100s_l2_has_six_ways_and_a_file_without_them_is_fully_associative(tmp_path):
    assert load_gpu("H100-SXM5-80GB").ceilings().l2_ways == 6
    def without(d):
        d["calibration"].pop("l2_ways")
    assert load_gpu(str(write_variant(tmp_path, without))).ceilings().l2_ways is None
