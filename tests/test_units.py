import pytest

from memsim.errors import MemsimError
from memsim.units import dimension_of, parse_quantity


@pytest.mark.parametrize("text, field, expected", [
    ("50 MiB", "l2_bytes", 50 * 2**20),
    ("40 MB", "l2_bytes", 40e6),
    ("3.35 TB/s", "hbm_bandwidth_bytes_per_s", 3.35e12),
    ("989.4 TFLOP/s", "tensor_flops_per_s", 989.4e12),
    ("1980 MHz", "clock_hz", 1.98e9),
    ("600 ns", "hbm_latency_s", 600e-9),
    ("3.9 TOP/s", "sfu_ops_per_s", 3.9e12),
    (132, "sm_count", 132.0),
    ("1e3", "sm_count", 1000.0),
])
def test_parses_quantities_into_base_units(text, field, expected):
    assert parse_quantity(text, field, "f.yaml") == pytest.approx(expected)


@pytest.mark.parametrize("text, field, words", [
    ("3 TB/s", "l2_bytes", ["l2_bytes", "TB/s", "MiB"]),
    ("50 MiB", "hbm_bandwidth_bytes_per_s", ["MiB", "TB/s"]),
    ("fast", "clock_hz", ["fast", "quantity"]),
    (-5, "sm_count", ["negative"]),
    ("-2 GB", "hbm_bytes", ["negative"]),
    ("12 MHz", "sm_count", ["plain count"]),
    (True, "sm_count", ["not a number"]),
    ([1, 2], "sm_count", ["not a number"]),
])
def test_refuses_wrong_units_and_values_naming_file_key_and_value(text, field, words):
    with pytest.raises(MemsimError) as err:
        parse_quantity(text, field, "my.yaml")
    message = str(err.value)
    assert message.startswith("my.yaml: " + field)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_nested_keys_take_the_unit_of_their_parent():
    assert parse_quantity("312 TFLOP/s", "tensor_flops_per_s.bf16", "f", unit_of="tensor_flops_per_s") == 312e12
    assert dimension_of("links.nvlink.latency_s") == "s"
    assert dimension_of("sm_count") is None
