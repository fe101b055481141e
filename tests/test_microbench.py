"""validation/microbench.py on a machine with no GPU: its pure helpers, its JSON, its refusal
to run without a GPU, and its Triton kernels' logic under the interpreter at tiny sizes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import validation.microbench as mb

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "validation" / "microbench.py"


# --- the random cycle the pointer chase follows -----------------------------------------------


@pytest.mark.parametrize("n_slots,seed", [(2, 0), (3, 1), (17, 2), (1000, 3), (32768, 4)])
def test_cycle_is_one_cycle_over_all_slots(n_slots, seed):
    order = mb.random_cycle_order(n_slots, np.random.default_rng(seed))
    nxt = mb.next_slot_table(order)
    assert sorted(nxt.tolist()) == list(range(n_slots))  # every slot has exactly one predecessor
    assert not np.any(nxt == np.arange(n_slots))  # no slot points at itself
    for start in (0, n_slots - 1):
        assert mb.cycle_length(nxt, start) == n_slots  # back at the start only after visiting all
    assert nxt.dtype == np.int64


def test_cycle_length_sees_two_cycles():
    two_cycles = np.array([1, 0, 3, 2], dtype=np.int64)  # 0 <-> 1 and 2 <-> 3
    assert mb.cycle_length(two_cycles, 0) == 2


def test_cycle_refuses_one_slot():
    with pytest.raises(ValueError, match="n_slots is 1"):
        mb.random_cycle_order(1, np.random.default_rng(0))


@pytest.mark.parametrize("hops", [0, 1, 5, 36, 37, 38, 1000])
def test_walk_end_slot_matches_stepping(hops):
    order = mb.random_cycle_order(37, np.random.default_rng(7))
    nxt = mb.next_slot_table(order)
    start = int(order[11])
    slot = start
    for _ in range(hops):
        slot = int(nxt[slot])
    assert mb.walk_end_slot(order, start, hops) == slot


def test_chase_elements_layout():
    stride = mb.CHASE_STRIDE_BYTES // 8
    assert stride * 8 >= 128  # hops at least one 128-byte line apart
    order = mb.random_cycle_order(50, np.random.default_rng(3))
    table = mb.chase_elements(order, stride)
    assert table.shape == (50, stride) and table.dtype == np.int64
    assert np.array_equal(table[:, 0], mb.next_slot_table(order) * stride)
    assert not table[:, 1:].any()
    # following element indices through the flat buffer walks the slot cycle
    flat, idx = table.reshape(-1), int(order[0]) * stride
    for k in range(1, 120):
        idx = int(flat[idx])
        assert idx == int(order[k % 50]) * stride


# --- accounting -------------------------------------------------------------------------------


def test_copy_bytes_counts_read_and_write():
    print(f"4 GiB copy moves {mb.copy_bytes(mb.HBM_COPY_BYTES)} B")
    assert mb.copy_bytes(4 * 2**30) == 8 * 2**30


def test_matmul_flops_8192():
    flops = mb.matmul_flops(8192, 8192, 8192)
    print(f"8192^3 matmul: {flops} FLOP; at 1.4 ms that is {flops / 1.4e-3 / 1e12:.0f} TFLOP/s")
    assert flops == 1_099_511_627_776
    assert mb.matmul_flops(2, 3, 5) == 60


def test_reread_bytes_and_chain_ops():
    # 792 programs x 4096 steps x 4 loads of 2048 fp32
    assert mb.reread_bytes(792, 4096, 4, 2048, 4) == 792 * 4096 * 4 * 2048 * 4
    assert mb.reread_bytes(1, 1, 1, 1, 4) == 4
    assert mb.chain_ops(2112, 2048, 16, 1024) == 2112 * 2048 * 16 * 1024
    assert mb.fma_flops(10) == 20


def test_rates_and_per_item():
    assert mb.rates(8e9, [2e-3, 4e-3]) == [4e12, 2e12]
    assert mb.per_item_s([1e-3, 2e-3], 1000) == [1e-6, 2e-6]


# --- records and the JSON ---------------------------------------------------------------------


def test_build_record_median_and_spread():
    rec = mb.build_record([3.0, 1.0, 2.0, 10.0], "a way", n_regs=40)
    assert rec == {
        "value": 2.5,
        "spread": {"min": 1.0, "max": 10.0},
        "repeats": 4,
        "method": "a way",
        "n_regs": 40,
    }
    assert mb.build_record([5.0, 1.0, 2.0], "m")["value"] == 2.0
    with pytest.raises(ValueError, match="values is empty"):
        mb.build_record([], "m")


def test_error_record_is_one_line():
    rec = mb.error_record(RuntimeError("CUDA error:\n  out of memory\n"))
    assert rec == {"error": "RuntimeError: CUDA error: out of memory"}


def test_l2_reference_sums_matches_brute_force():
    rng = np.random.default_rng(5)
    block_sums = rng.random(8)
    for n_programs, n_steps, unroll in [(5, 3, 2), (20, 7, 4), (1, 1, 1), (9, 16, 1)]:
        want = [
            sum(block_sums[(p + j) % 8] for j in range(n_steps * unroll)) for p in range(n_programs)
        ]
        got = mb.l2_reference_sums(block_sums, n_programs, n_steps, unroll)
        np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize(
    "n_regs,num_warps,want",
    [
        (36, 8, 6),  # 36 regs -> 1280 per warp -> 51 warps by registers -> 6 programs of 8 warps
        (40, 8, 6),
        (20, 4, 16),  # limited by 2048 threads per SM
        (64, 4, 8),  # 2048 regs per warp -> 32 warps -> 8 programs of 4 warps
        (255, 8, 1),  # 8192 regs per warp -> 8 warps: one program
        (8, 1, 32),  # limited by 32 CTAs per SM
    ],
)
def test_resident_programs_per_sm(n_regs, num_warps, want):
    got = mb.resident_programs_per_sm(n_regs, num_warps, regs_per_sm=65536, threads_per_sm=2048)
    print(f"{n_regs} regs x {num_warps} warps: {got} programs per SM")
    assert got == want


@pytest.mark.parametrize(
    "key,value,text",
    [
        ("hbm_copy_bandwidth_bytes_per_s", 3.01e12, "3.010 TB/s"),
        ("tensor_bf16_flops_per_s", 7.7e14, "770.0 TFLOP/s"),
        ("sfu_exp2_ops_per_s", 3.9e12, "3.900 T/s"),
        ("launch_overhead_s", 4.5e-6, "4.500 us"),
        ("hbm_load_latency_s", 6.5e-7, "650.0 ns"),
    ],
)
def test_human_units(key, value, text):
    assert mb.human(key, value) == text


def test_l2_over_hbm_check():
    good = {"l2_read_bandwidth_bytes_per_s": {"value": 9e12}, "hbm_read_bandwidth_bytes_per_s": {"value": 3e12}}
    assert mb.l2_over_hbm_check(good) == {"l2_over_hbm_read": 3.0, "verdict": "ok"}
    bad = {"l2_read_bandwidth_bytes_per_s": {"value": 3.3e12}, "hbm_read_bandwidth_bytes_per_s": {"value": 3e12}}
    assert mb.l2_over_hbm_check(bad)["verdict"].startswith("L2 figure not well above HBM")
    assert mb.l2_over_hbm_check({"l2_read_bandwidth_bytes_per_s": {"error": "x"}}) is None


class FakeDevice:
    name, sm_count, l2_bytes = "Fake GPU", 132, 52428800


def fail(dev):
    raise RuntimeError("boom")


def test_main_writes_json_and_survives_a_failure(tmp_path, monkeypatch, capsys):
    measurements = (
        ("hbm_copy_bandwidth_bytes_per_s", lambda dev: mb.build_record([3e12, 2.9e12, 3.1e12], "copy")),
        ("l2_read_bandwidth_bytes_per_s", fail),
        ("launch_overhead_s", lambda dev: {"skipped": "no reason"}),
        ("hbm_load_latency_s", lambda dev: mb.build_record([6e-7], "chase", hops_per_repeat=3)),
    )
    monkeypatch.setattr(mb, "MEASUREMENTS", measurements)
    monkeypatch.setattr(mb, "Device", FakeDevice)
    monkeypatch.setattr(mb, "driver_version", lambda: "580.1")
    monkeypatch.setattr(mb.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(mb.torch.cuda, "synchronize", lambda: None)

    assert mb.main(["--out", str(tmp_path / "cal")]) == 0
    doc = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    for key in ("device", "sm_count", "l2_bytes", "driver", "torch", "triton", "cuda", "date"):
        assert key in doc, key
    assert (doc["device"], doc["sm_count"], doc["l2_bytes"], doc["driver"]) == ("Fake GPU", 132, 52428800, "580.1")
    assert doc["date"].endswith("+00:00")
    res = doc["measurements"]
    assert list(res) == [k for k, _ in measurements]  # a failure stopped nothing after it
    assert res["hbm_copy_bandwidth_bytes_per_s"]["value"] == 3e12
    assert res["hbm_copy_bandwidth_bytes_per_s"]["spread"] == {"min": 2.9e12, "max": 3.1e12}
    assert res["l2_read_bandwidth_bytes_per_s"]["error"] == "RuntimeError: boom"
    assert res["launch_overhead_s"]["skipped"] == "no reason"
    assert res["hbm_load_latency_s"]["hops_per_repeat"] == 3
    table = capsys.readouterr().out
    assert "3.000 TB/s" in table and "RuntimeError: boom" in table


def test_budget_skips_the_rest(tmp_path, monkeypatch):
    called = []
    monkeypatch.setattr(mb, "MEASUREMENTS", (("launch_overhead_s", lambda dev: called.append(1)),))
    results = mb.run_all(FakeDevice(), ["launch_overhead_s"], budget_s=-1.0, write=lambda r: None)
    assert called == [] and "time budget" in results["launch_overhead_s"]["skipped"]


def test_only_rejects_unknown_names():
    with pytest.raises(SystemExit):
        mb.parse_args(["--out", "x", "--only", "hbm_copy_bandwidth_bytes_per_s,warp_drive_s"])
    _, names = mb.parse_args(["--out", "x", "--only", "l2_hit_latency_s"])
    assert names == ["l2_hit_latency_s"]


# --- what it runs outside itself --------------------------------------------------------------


def test_driver_query_is_the_only_nvidia_smi_command(monkeypatch):
    assert mb.DRIVER_QUERY == ("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader")
    seen = []

    class Done:
        returncode, stdout = 0, "580.159.04\n"

    def fake_run(argv, **kwargs):
        seen.append(argv)
        return Done()

    monkeypatch.setattr(mb.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(mb.subprocess, "run", fake_run)
    assert mb.driver_version() == "580.159.04"
    assert seen == [list(mb.DRIVER_QUERY)]
    source = SCRIPT.read_text()
    assert source.count("subprocess.run(") == 1  # the driver query is the one command it runs


def test_driver_version_without_nvidia_smi(monkeypatch):
    monkeypatch.setattr(mb.shutil, "which", lambda name: None)
    assert mb.driver_version() is None


def test_without_a_gpu_one_clear_line_and_non_zero(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "cal")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    lines = (done.stdout + done.stderr).strip().splitlines()
    print(lines)
    assert done.returncode != 0
    assert len(lines) == 1 and "no CUDA GPU" in lines[0]
    assert not (tmp_path / "cal" / "calibration.json").exists()


# --- the kernels' logic, under the Triton interpreter on CPU tensors --------------------------

INTERPRETER_CHECKS = r"""
import json
import numpy as np
import torch
import validation.microbench as mb

torch.manual_seed(0)
found = {}

x = torch.rand(3 * 128 + 10)  # a ragged tail: the mask must drop it
n_programs = -(-x.numel() // 128)
out = torch.full((n_programs,), float("nan"))
mb.launch_stream_read(x, out, block=64, unroll=2, num_warps=1)
padded = torch.cat([x, torch.zeros(n_programs * 128 - x.numel())])
found["read"] = [out.tolist(), padded.view(n_programs, 128).double().sum(1).tolist()]

x = torch.rand(8 * 32)
out = torch.full((5,), float("nan"))
mb.launch_l2_reread(x, out, n_programs=5, n_steps=3, block=32, unroll=2, num_warps=1)
want = mb.l2_reference_sums(x.view(-1, 32).double().sum(1).numpy(), 5, 3, 2)
found["l2"] = [out.tolist(), want.tolist()]

order = mb.random_cycle_order(37, np.random.default_rng(0))
stride = mb.CHASE_STRIDE_BYTES // 8
buf = torch.from_numpy(mb.chase_elements(order, stride)).reshape(-1)
state = torch.tensor([int(order[0]) * stride])
mb.launch_chase(buf, state, 50)
first = int(state.item())
mb.launch_chase(buf, state, 13)  # goes on from where the first launch stopped
found["chase"] = [[first, int(state.item())],
                  [mb.walk_end_slot(order, int(order[0]), 50) * stride,
                   mb.walk_end_slot(order, int(order[0]), 63) * stride]]

for name, kernel, step in [("exp2", mb.exp2_chain_kernel, lambda v: 2.0 ** (-v)),
                           ("fma", mb.fma_chain_kernel, lambda v: v * 0.9990234375 + 0.0009765625)]:
    out = torch.full((3,), float("nan"))
    mb.launch_chain(kernel, out, n_programs=3, n_steps=4, unroll=2, block=16, num_warps=1)
    v = (np.arange(16) + 0.5) / 16
    for _ in range(8):
        v = step(v)
    found[name] = [out.tolist(), [float(v.sum())] * 3]

out = torch.zeros(4)
mb.one_store_kernel[(4,)](out, num_warps=1)
found["one_store"] = [out.tolist(), [1.0] * 4]
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def interpreted():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-c", INTERPRETER_CHECKS], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kernel", ["read", "l2", "chase", "exp2", "fma", "one_store"])
def test_kernel_logic_under_interpreter(interpreted, kernel):
    got, want = interpreted[kernel]
    print(kernel, got, want)
    assert not any(np.isnan(got))
    np.testing.assert_allclose(got, want, rtol=1e-5)
