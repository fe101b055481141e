import json
from pathlib import Path

import pytest

from memsim import AttentionShape, TileConfig
from memsim.algorithms import flash_decoding, paged
from memsim.algorithms.kv_quant import (DEQUANT_OPS_PER_ELEMENT, SFU_OPS_PER_ELEMENT, dequant_ops, kv_load_ops,
                                        kv_load_work)
from memsim.errors import MemsimError
from memsim.hardware import load_gpu

H100 = load_gpu("H100-SXM5-80GB")
TILES = TileConfig(block_m=16, block_n=128, num_splits=8)
RESULTS = Path(__file__).parent.parent / "validation" / "results" / "h100"


def decode_shape(kv_dtype: str) -> AttentionShape:
    return AttentionShape(batch=4, q_heads=32, kv_heads=8, q_len=1, kv_len=16384, head_dim=128,
                          kv_dtype=kv_dtype, kv_group_size=64)


@pytest.mark.parametrize("kv_dtype, per_element", [("int8", 2), ("int4", 4), ("fp8", 1), ("bf16", 0), ("fp32", 0)])
def test_ops_per_element(kv_dtype, per_element):
    """int8: convert + scale; int4: shift + mask + convert + scale; fp8: convert only."""
    assert dequant_ops(1000, kv_dtype) == 1000 * per_element


def test_unknown_kv_dtype_is_one_line_error():
    with pytest.raises(MemsimError) as err:
        dequant_ops(10, "int3")
    assert "int3" in str(err.value) and "\n" not in str(err.value)


def test_no_work_when_cache_is_the_compute_type():
    assert kv_load_ops(AttentionShape(dtype="bf16"), 1e6) == 0
    assert kv_load_ops(AttentionShape(dtype="fp8", kv_dtype="fp8"), 1e6) == 0
    assert kv_load_ops(AttentionShape(dtype="bf16", kv_dtype="fp32"), 1e6) == 1e6  # one convert


@pytest.mark.parametrize("kv_dtype, expected_ratio", [("int8", 2 / (1 + 2 / 64)), ("int4", 2 / (0.5 + 2 / 64))])
@pytest.mark.parametrize("module", [flash_decoding, paged])
def test_quantised_kv_cuts_kv_bytes_and_adds_dequant(module, kv_dtype, expected_ratio):
    """bf16 K/V take 2 B per element; int8 1 B + 2 B scale / 64 = 1.03125 B; int4 0.53125 B."""
    base = module.kernels(H100, decode_shape("bf16"), TILES, "fwd")[0]
    quant = module.kernels(H100, decode_shape(kv_dtype), TILES, "fwd")[0]
    ratio = base.traffic["K"].hbm_read / quant.traffic["K"].hbm_read
    print(f"{module.__name__} {kv_dtype}: K bytes bf16 {base.traffic['K'].hbm_read / 1e6:.2f} MB, "
          f"{kv_dtype} {quant.traffic['K'].hbm_read / 1e6:.2f} MB, ratio {ratio:.3f} (expected {expected_ratio:.3f})")
    assert ratio == pytest.approx(expected_ratio)
    assert (1.9 < ratio < 2.0) if kv_dtype == "int8" else (3.7 < ratio < 4.0)
    assert quant.traffic["V"].l2_read == pytest.approx(base.traffic["V"].l2_read / expected_ratio)
    elements = 2 * 4 * 8 * 16384 * 128  # K and V, batch x kv heads x keys x d, each loaded once
    assert quant.cuda_ops - base.cuda_ops == pytest.approx(dequant_ops(elements, kv_dtype))
    assert quant.tensor_flops == base.tensor_flops
    assert quant.exp_ops - base.exp_ops == pytest.approx(elements * SFU_OPS_PER_ELEMENT[kv_dtype])


def test_the_integer_convert_shares_the_special_function_unit_as_measured():
    """validation/convert_peak.cu on the H100: cvt.rn.f32.s16 (what a Triton int8 dequantisation compiles to) runs
    at exp2's rate, far below the FMA's, and the two interleaved reach that rate together: one unit."""
    record = json.loads(sorted(RESULTS.glob("convert-peak-*.json"))[-1].read_text())["instructions"]
    rate = {name: r["per_clk_per_sm"] for name, r in record.items()}
    assert rate["cvt.rn.f32.s16"] == pytest.approx(rate["ex2.approx.ftz.f32"], rel=0.05)
    assert rate["ex2.approx.ftz.f32 + cvt.rn.f32.s16"] == pytest.approx(rate["ex2.approx.ftz.f32"], rel=0.05)
    assert rate["cvt.rn.f32.s16"] < rate["fma.rn.f32"] / 4
    # fp8's convert is not on that unit: it runs at CUDA-core rates (two elements per instruction)
    assert rate["cvt.rn.f16x2.e4m3x2"] > 2 * rate["ex2.approx.ftz.f32"]
    assert set(SFU_OPS_PER_ELEMENT) == {"int8", "int4"}
    assert all(SFU_OPS_PER_ELEMENT[k] <= DEQUANT_OPS_PER_ELEMENT[k] for k in SFU_OPS_PER_ELEMENT)


@pytest.mark.parametrize("kv_dtype, sfu", [("int8", 1), ("int4", 1), ("fp8", 0), ("bf16", 0)])
def test_kv_load_work_splits_the_converts_off(kv_dtype, sfu):
    shape = decode_shape(kv_dtype)
    work = kv_load_work(shape, 1000)
    assert work.cuda_ops == kv_load_ops(shape, 1000)  # every op, converts included (VectorOps' convention)
    assert work.exp_ops == 1000 * sfu


@pytest.mark.parametrize("kv_dtype, codes_bytes", [("int8", 1.0), ("int4", 0.5)])
def test_fp32_scales_take_four_bytes_per_group(kv_dtype, codes_bytes):
    """kernels/kv_quant.py keeps fp32 scales for bf16 tensors: 4 B per group of kv_group_size elements, not 2."""
    fp16 = AttentionShape(kv_dtype=kv_dtype, kv_group_size=32)
    fp32 = AttentionShape(kv_dtype=kv_dtype, kv_group_size=32, kv_scale_dtype="fp32")
    assert fp16.kv_element_bytes == codes_bytes + 2 / 32
    assert fp32.kv_element_bytes == codes_bytes + 4 / 32
    assert AttentionShape(kv_scale_dtype="fp32").kv_element_bytes == 2.0  # bf16 K/V carry no scales


def test_an_unknown_scale_dtype_is_one_line_naming_the_choices():
    with pytest.raises(MemsimError) as err:
        AttentionShape(kv_dtype="int8", kv_scale_dtype="bf16")
    assert "'bf16'" in str(err.value) and "fp16, fp32" in str(err.value) and "\n" not in str(err.value)


def test_the_int8_rows_are_described_with_the_fp32_scales_their_kernel_stored():
    """validation.runners quantises bf16 K/V with kernels.kv_quant.quantize_kv's default, fp32 scales: with them
    memsim reads what ncu measured (with fp16 scales it read 5.6% less on every int8 row)."""
    from validation.compare import compare_row, load_rows
    from validation.mapping import shape_of

    rows = [r for r in load_rows(RESULTS) if r.get("kernel") == "kv_int8"]
    assert len(rows) == 5
    for row in rows:
        assert shape_of(row).kv_scale_dtype == "fp32"
        error = compare_row((row, "analytic")).error
        assert abs(error["hbm_read"]) < 0.005 and abs(error["l2_read"]) < 0.005, (row["id"], error)
