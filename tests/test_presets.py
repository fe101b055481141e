"""The GPU presets shipped with memsim: each loads, each number cites its source, and none holds a typo.

The invariants are the ones a slipped digit or a wrong unit breaks: a block's shared memory above
its SM's, HBM faster than L2, a clock of 18 GHz, a bf16 peak that no SM count and clock can give.
"""

import dataclasses

import pytest
import yaml

from memsim.errors import MemsimError
from memsim.hardware import load_gpu, preset_names
from memsim.hardware.load import PRESET_DIR
from memsim.hardware.spec import GPUSpec

PRESET_FILES = sorted(entry.name for entry in PRESET_DIR.iterdir() if entry.name.endswith(".yaml"))
EXPECTED_PRESETS = {
    "A100-SXM4-40GB", "A100-SXM4-80GB", "H100-PCIe-80GB", "H100-SXM5-80GB", "H200-SXM-141GB",
    "B200", "L40S", "RTX-4090", "MI300X",
}

# Dense bf16 tensor FLOP per clock per SM (per CU on AMD), and where each figure comes from.
BF16_FLOP_PER_CLK_PER_SM = {
    "ampere": (2048, "A100 whitepaper: an A100 SM's tensor cores do 1024 dense FP16/BF16 FMA per clock"),
    "hopper": (4096, "H100 whitepaper: an H100 SM does twice the A100 SM's tensor FMA per clock"),
    "blackwell": (8192, "CUTLASS docs, Blackwell SM100 GEMMs: tcgen05.mma kind::f16 runs at 2x Hopper's rate"),
    "ada": (1024, "Ada whitepaper: L40S and RTX 4090 (FP16 accumulate) reach 1024 dense FLOP/clk/SM"),
    "ada-geforce-fp32-acc": (512, "Ada whitepaper: RTX 4090 with FP32 accumulate runs at half rate, 165.2 TFLOP/s"),
    "cdna3": (2048, "ROCm docs, MI300 microarchitecture: Matrix BF16 2048 FLOPS/clock/CU"),
}
TENSOR_ARCH = {
    "A100-SXM4-40GB": "ampere", "A100-SXM4-80GB": "ampere",
    "H100-PCIe-80GB": "hopper", "H100-SXM5-80GB": "hopper", "H200-SXM-141GB": "hopper",
    "B200": "blackwell", "L40S": "ada", "RTX-4090": "ada-geforce-fp32-acc", "MI300X": "cdna3",
}
# Special-function results per clock per SM: CUDA guide's throughput table (exp2, log2, rcp) for
# cc 8.0-10.0; on CDNA 3, 64 lanes per CU at quarter rate for transcendentals.
SFU_RESULTS_PER_CLK_PER_SM = 16

_TEXT_FIELDS = {"name", "vendor", "architecture"}
_NESTED_FIELDS = {"tensor_flops_per_s", "mma_sync_flops_per_s", "links", "calibration", "sources"}
NUMBER_FIELDS = sorted({f.name for f in dataclasses.fields(GPUSpec)} - _TEXT_FIELDS - _NESTED_FIELDS)


def _head(file_name: str) -> dict:
    return yaml.safe_load((PRESET_DIR / file_name).read_text())


def _spec(file_name: str) -> GPUSpec:
    return load_gpu(_head(file_name)["name"])


def _numeric_keys(spec: GPUSpec) -> list[str]:
    """Every number the spec holds, named the way load.py files its citation in spec.sources."""
    keys = list(NUMBER_FIELDS)
    keys += [f"tensor_flops_per_s.{dtype}" for dtype in spec.tensor_flops_per_s]
    keys += [f"mma_sync_flops_per_s.{dtype}" for dtype in spec.mma_sync_flops_per_s or {}]
    for name in spec.links:
        keys += [f"links.{name}.bandwidth_bytes_per_s", f"links.{name}.latency_s"]
    cal = spec.calibration
    if cal is not None:
        keys += [f"calibration.{k}" for k in ("hbm_bandwidth_bytes_per_s", "l2_bandwidth_bytes_per_s",
                                               "launch_overhead_s") if getattr(cal, k) is not None]
        keys += [f"calibration.tensor_flops_per_s.{dtype}" for dtype in cal.tensor_flops_per_s]
    return keys


def test_preset_names_lists_all_nine():
    assert set(preset_names()) == EXPECTED_PRESETS
    assert len(PRESET_FILES) == len(EXPECTED_PRESETS)


@pytest.mark.parametrize("file_name", PRESET_FILES)
def test_preset_loads_by_name_and_file_name_matches(file_name):
    spec = _spec(file_name)
    assert spec.name in EXPECTED_PRESETS
    assert file_name == spec.name.lower() + ".yaml"


@pytest.mark.parametrize("file_name", PRESET_FILES)
def test_every_number_has_a_source(file_name):
    spec = _spec(file_name)
    keys = _numeric_keys(spec)
    missing = [k for k in keys if not str(spec.sources.get(k, "")).strip()]
    assert not missing, f"{spec.name}: no source for {missing}"
    # A one-word source is a `references` key that did not resolve (a typo), not a citation.
    unresolved = {k: spec.sources[k] for k in keys if " " not in spec.sources[k].strip()}
    assert not unresolved, f"{spec.name}: sources that name no reference: {unresolved}"
    placeholders = {k: v for k, v in spec.sources.items() if "pending measurement" in v or "TODO" in v}
    assert not placeholders, f"{spec.name}: placeholder sources: {placeholders}"


def test_aliases_are_unique_and_lead_to_their_own_preset():
    owner: dict[str, str] = {}
    for file_name in PRESET_FILES:
        head = _head(file_name)
        for alias in [head["name"], *head.get("aliases", [])]:
            key = str(alias).lower()
            assert key not in owner, f"{alias!r} names both {owner[key]} and {file_name}"
            owner[key] = file_name
            assert load_gpu(str(alias)).name == head["name"]
    assert load_gpu("a100").name == "A100-SXM4-80GB"
    assert load_gpu("h200").name == "H200-SXM-141GB"


@pytest.mark.parametrize("file_name", PRESET_FILES)
def test_sanity_invariants(file_name):
    g = _spec(file_name)
    tensor = g.tensor_flops_per_s
    print(f"{g.name}: clock {g.clock_hz / 1e9:.3f} GHz, HBM {g.hbm_bandwidth_bytes_per_s / 1e12:.3f} TB/s, "
          f"L2 {g.l2_bandwidth_bytes_per_s / 1e12:.2f} TB/s, bf16 {tensor['bf16'] / 1e12:.1f} TFLOP/s, "
          f"fp32 cores {g.cuda_core_fp32_flops_per_s / 1e12:.1f} TFLOP/s")
    assert g.smem_per_block_optin_bytes <= g.smem_per_sm_bytes
    assert tensor["bf16"] > g.cuda_core_fp32_flops_per_s
    assert 0.5e12 <= g.hbm_bandwidth_bytes_per_s <= 10e12
    assert g.l2_bandwidth_bytes_per_s > g.hbm_bandwidth_bytes_per_s
    assert 0.5e9 <= g.clock_hz <= 3e9
    assert g.l2_bytes < g.hbm_bytes
    assert g.max_registers_per_thread * g.warp_size <= g.registers_per_sm
    assert g.warp_size == (64 if g.vendor == "AMD" else 32)
    assert g.smem_reserved_per_block_bytes == (0 if g.vendor == "AMD" else 1024)


@pytest.mark.parametrize("file_name", PRESET_FILES)
def test_tensor_dtypes_match_the_matrix_units(file_name):
    g = _spec(file_name)
    dtypes = set(g.tensor_flops_per_s)
    assert {"fp16", "bf16", "tf32", "int8"} <= dtypes
    assert ("fp4" in dtypes) == g.architecture.startswith("Blackwell")
    assert ("fp8" in dtypes) != g.architecture.startswith("Ampere")
    rates = g.tensor_flops_per_s
    fp8 = rates.get("fp8", rates["bf16"])
    assert rates["tf32"] < rates["bf16"] <= fp8 <= rates.get("fp4", fp8)
    assert rates["bf16"] == rates["fp16"]


@pytest.mark.parametrize("file_name", PRESET_FILES)
def test_bf16_peak_matches_sms_clock_and_per_sm_rate(file_name):
    g = _spec(file_name)
    per_sm, citation = BF16_FLOP_PER_CLK_PER_SM[TENSOR_ARCH[g.name]]
    expected = g.sm_count * g.clock_hz * per_sm
    ratio = g.tensor_flops_per_s["bf16"] / expected
    print(f"{g.name}: {g.sm_count} SMs x {g.clock_hz / 1e9:.3f} GHz x {per_sm} FLOP/clk/SM = "
          f"{expected / 1e12:.1f} TFLOP/s; preset says {g.tensor_flops_per_s['bf16'] / 1e12:.1f} "
          f"(ratio {ratio:.3f}) [{citation}]")
    assert 0.9 <= ratio <= 1.1


@pytest.mark.parametrize("file_name", PRESET_FILES)
def test_sfu_rate_matches_sms_clock_and_per_sm_rate(file_name):
    g = _spec(file_name)
    expected = g.sm_count * g.clock_hz * SFU_RESULTS_PER_CLK_PER_SM
    print(f"{g.name}: {g.sm_count} x {g.clock_hz / 1e9:.3f} GHz x 16 = {expected / 1e12:.3f} TOP/s; "
          f"preset says {g.sfu_ops_per_s / 1e12:.3f}")
    assert 0.95 <= g.sfu_ops_per_s / expected <= 1.05


@pytest.mark.parametrize("typo, close", [
    ("A100-SXM4-60GB", {"A100-SXM4-40GB", "A100-SXM4-80GB"}),
    ("RTX-4080", {"RTX-4090"}),
    ("H200-NVL", {"H200-SXM-141GB"}),
    ("MI325X", {"MI300X"}),
])
def test_unknown_name_names_close_presets(typo, close):
    with pytest.raises(MemsimError) as err:
        load_gpu(typo)
    message = str(err.value)
    print(message)
    assert "\n" not in message and repr(typo) in message
    assert all(name in message for name in close)
