"""The matrix instruction a kernel compiles to (TileConfig.mma): wgmma, mma.sync or FMA on the CUDA cores.

The mma.sync rates of the Hopper presets come from validation/mma_sync_peak.cu's measurement on the H100
(validation/results/h100/mma-sync-peak-*.json); which instruction each measured kernel used comes from its
PTX or its name (validation/mma_instructions.py, validation/mapping.py)."""

import json
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from memsim import AttentionShape, TileConfig, predict
from memsim.errors import MemsimError
from memsim.hardware import load_gpu
from memsim.predict import resolve_tiles
from validation.mapping import launch_instruction, matrix_instruction
from validation.mma_instructions import instruction

RESULTS = Path(__file__).parent.parent / "validation" / "results" / "h100"
WGMMA_FLOP_PER_CLK_PER_SM = {"bf16": 4096, "fp16": 4096, "fp8": 8192}  # H100 whitepaper, dense


def _measured() -> dict:
    return json.loads(sorted(RESULTS.glob("mma-sync-peak-*.json"))[-1].read_text())


@pytest.mark.parametrize("name", ["H100-SXM5-80GB", "H100-PCIe-80GB", "H200-SXM-141GB"])
def test_hopper_mma_sync_rates_are_the_measured_flop_per_clock(name):
    gpu = load_gpu(name)
    measured = _measured()["dtypes"]
    for dtype, rate in gpu.mma_sync_flops_per_s.items():
        per_clock = measured[dtype]["flop_per_clk_per_sm"]
        assert rate == pytest.approx(per_clock * gpu.sm_count * gpu.clock_hz, rel=1e-3)
        # and the datasheet's tensor rate is wgmma's per clock at the same clock
        assert gpu.tensor_flops_per_s[dtype] == pytest.approx(
            WGMMA_FLOP_PER_CLK_PER_SM[dtype] * gpu.sm_count * gpu.clock_hz, rel=2e-3)


def test_mma_sync_ceilings_keep_the_calibrated_efficiency():
    gpu = load_gpu("h100")
    fastest, warp = gpu.ceilings(True), gpu.ceilings(True, "mma_sync")
    for dtype in ("bf16", "fp16", "fp8"):
        ratio = gpu.mma_sync_flops_per_s[dtype] / gpu.tensor_flops_per_s[dtype]
        assert 0 < ratio < 1
        assert warp.tensor_flops_per_s[dtype] == pytest.approx(fastest.tensor_flops_per_s[dtype] * ratio)
    assert "tf32" not in warp.tensor_flops_per_s  # not measured: refused, not guessed
    assert warp.mma_pipe == "tensor" and "mma.sync" in warp.origin


def test_fma_ceilings_put_matrix_work_on_the_cuda_cores():
    gpu = load_gpu("h100")
    c = gpu.ceilings(True, "fma")
    assert c.mma_pipe == "cuda"
    assert set(c.tensor_flops_per_s.values()) == {c.cuda_core_fp32_flops_per_s}


def test_unknown_path_and_unmeasured_gpu_are_refused_with_the_fix():
    with pytest.raises(MemsimError, match="mma = 'wmma' is not known; use one of fastest, mma_sync, fma"):
        TileConfig(mma="wmma")
    with pytest.raises(MemsimError, match="A100-SXM4-80GB has no measured mma.sync rate"):
        load_gpu("a100-sxm4-80gb").ceilings(True, "mma_sync")
    with pytest.raises(MemsimError, match="no tf32 tensor-core rate on the mma_sync path; it has bf16, fp16, fp8"):
        predict("flash2", AttentionShape(q_heads=4, q_len=1024, dtype="fp32"), tiles=TileConfig(mma="mma_sync"))


@pytest.mark.parametrize("engine", ["analytic", "des"])
def test_fma_path_counts_matrix_work_as_cuda_core_operations(engine):
    shape = AttentionShape(q_heads=4, q_len=1024, causal=False)
    gpu = load_gpu("h100")
    tensor = predict("standard", shape, engine=engine)
    fma = predict("standard", shape, tiles=resolve_tiles(gpu, "standard", shape, mma="fma"), engine=engine)
    if engine == "des":
        flops = sum(k.tensor_flops for k in tensor.kernels)
        assert sum(k.tensor_flops for k in fma.kernels) == 0
        assert sum(k.cuda_ops for k in fma.kernels) == pytest.approx(sum(k.cuda_ops for k in tensor.kernels) + flops / 2)
    assert fma.latency_s > tensor.latency_s
    assert fma.bytes == tensor.bytes  # the instruction moves no bytes


@settings(max_examples=15, deadline=None)
@given(heads=st.sampled_from([2, 8]), seq=st.sampled_from([512, 1024, 2048]), causal=st.booleans(),
       engine=st.sampled_from(["analytic", "des"]))
def test_a_slower_instruction_is_never_faster(heads, seq, causal, engine):
    shape = AttentionShape(q_heads=heads, q_len=seq, causal=causal)
    times = [predict("flash2", shape, tiles=TileConfig(mma=mma), engine=engine).latency_s
             for mma in ("fastest", "mma_sync", "fma")]
    assert times[0] <= times[1] * (1 + 1e-9) and times[1] <= times[2] * (1 + 1e-9)


@pytest.mark.parametrize("wgmma, mma_sync, path", [(36, 0, "warpgroup"), (0, 32, "warp"), (0, 0, "none")])
def test_ptx_counts_name_the_path(wgmma, mma_sync, path):
    assert instruction(wgmma, mma_sync) == path


@pytest.mark.parametrize("kernel, path", [
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x128_4x1x1_cga1x1x1_kernel0_0", "fastest"),
    ("cudnn_generated_fort_native_sdpa_sm80_flash_fprop_wmma_f16_knob_35_16x128x128_1x4x1_cga1x1x1_kernel0_0", "mma_sync"),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<(int)128, (int)128>>", "mma_sync"),
    ("fmha_cutlassF_bf16_aligned_64x128_rf_sm80(PyTorchMemEffAttention::AttentionKernel)", "mma_sync"),
    ("sm80_xmma_gemm_f32f32_f32f32_f32_tn_n_tilesize64x64x8_stage3_warpsize1x4x1_ffma_aligna4", "fma"),
    ("_flash2_fwd", "fastest"),  # Triton: from its recorded PTX (wgmma)
    ("decode_split", "mma_sync"),  # Triton: a 16-row GQA tile, mma.sync in its PTX
    ("void <unnamed>::softmax_warp_forward<float, float, float, (int)10>", None),
])
def test_launch_instruction_from_name_or_ptx(kernel, path):
    assert launch_instruction(kernel) == path


def test_a_case_takes_the_slowest_instruction_of_its_launches():
    row = {"launches": [{"kernel": "sm80_xmma_gemm_f32f32_f32f32_f32_nn_ffma", "launch__grid_size": 64},
                        {"kernel": "void <unnamed>::softmax_warp_forward<float>", "launch__grid_size": 64},
                        {"kernel": "_flash2_fwd", "launch__grid_size": 64}]}
    assert matrix_instruction(row) == "fma"
    row["launches"] = row["launches"][1:]
    assert matrix_instruction(row) == "fastest"


SCENARIO = """description: the matrix instruction from a scenario
steps:
  - kind: predict
    name: fa2
    gpu: H100-SXM5-80GB
    algos: [flash2]
    shape: {{batch: 1, q_heads: 16, q_len: 4096, head_dim: 128}}
    tiles: {{block_m: 128, block_n: 64, num_warps: 4, num_stages: 1, mma: {mma}}}
    engine: analytic
"""


def test_cli_and_scenarios_take_the_instruction(memsim_cli, tmp_path):
    code, out, _ = memsim_cli("predict", "--engine", "analytic", "--json", "--mma", "mma_sync")
    assert code == 0 and json.loads(out)["tiles"]["mma"] == "mma_sync"
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(SCENARIO.format(mma="mma_sync"))
    bad.write_text(SCENARIO.format(mma="wgmma2"))
    code, out, _ = memsim_cli("run", good)
    assert code == 0 and "mma.sync" in out
    code, out, err = memsim_cli("run", bad)
    assert code != 0 and "tiles.mma = 'wgmma2' is not a known matrix instruction" in err and "Traceback" not in out + err
