"""kernels.bench on a machine with no GPU: every group's function runs its calls once at tiny shapes under the
interpreter (median_s replaced, since do_bench needs CUDA), so that every call signature is right; the torch
linear-attention peer computes what the float64 reference does; the command refuses to run without CUDA."""

import pytest
import torch

import kernels.bench as bench
from kernels import reference

# fp16: the interpreter cannot run bf16 (shared/DESIGN.md). d = 32 is flash2's smallest head dim.
TINY = dict(batch=1, heads=2, head_dim=32, device="cpu", dtype=torch.float16)


def run_once(fn) -> float:
    """Stands in for median_s: one call, a time of 1 ms."""
    fn()
    return 1e-3


def no_flex(causal, n):
    raise RuntimeError("flex_attention compiles for the GPU only")


GROUP_CALLS = {
    "prefill": lambda: bench.prefill_rows([64], **TINY),
    "decode": lambda: bench.decode_rows([64], 1e12, batch=1, q_heads=4, kv_heads=2, head_dim=32, device="cpu",
                                        dtype=torch.float16),
    "standard": lambda: bench.standard_rows([48], **TINY),
    "flash1": lambda: bench.flash1_rows(48, **TINY),
    "backward": lambda: bench.backward_rows(48, **TINY),
    "fp8": lambda: bench.fp8_rows(64, **TINY),
    "linear": lambda: bench.linear_rows([64], **TINY),
    "lightning": lambda: bench.lightning_rows([64], **TINY),
    "block_sparse": lambda: bench.block_sparse_rows(128, block_size=32, **TINY),
    "ring": lambda: bench.ring_rows(48, **TINY),
}


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU, python3 -m kernels.bench runs the real thing")
@pytest.mark.parametrize("group", bench.GROUPS)
def test_every_memsim_kernel_of_a_group_runs(group, monkeypatch, capsys):
    monkeypatch.setattr(bench, "median_s", run_once)
    monkeypatch.setattr(bench, "_flex", no_flex)
    rows = GROUP_CALLS[group]()
    failures = [line for line in capsys.readouterr().err.splitlines() if line.startswith("bench: memsim")]
    assert not failures, failures  # peers that need CUDA (SDPA flash, cuDNN) may fail; our kernels may not
    assert rows
    for row in rows:
        ran = row["time_us"] if group == "prefill" else row["kernels"]
        assert any(name.startswith("memsim") for name in ran), row
    bench.print_rows(group, rows)
    print(capsys.readouterr().out)


@pytest.mark.parametrize("causal,decay", [(False, False), (True, False), (True, True)], ids=["full", "causal", "decay"])
def test_torch_linear_peer_matches_the_reference(causal, decay):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 64, 16, generator=g) for _ in range(3))
    rates = torch.tensor([0.0, 0.05, 0.7]) if decay else None
    out = bench.torch_linear_attention(q, k, v, causal=causal, decay=rates, chunk=16)
    ref = reference.linear_attention(q, k, v, causal=causal, decay=rates)
    error = ((out.double() - ref).abs().max() / ref.abs().max()).item()
    print(f"relative error {error:.2e}")
    assert error < 1e-5


def test_torch_linear_peer_rejects_a_length_off_the_chunks():
    q = torch.zeros(1, 1, 40, 16)
    with pytest.raises(ValueError, match="multiple of chunk"):
        bench.torch_linear_attention(q, q, q, causal=True, chunk=16)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_main_refuses_without_cuda(capsys):
    assert bench.main([]) == 1
    assert capsys.readouterr().err.strip() == "bench: no CUDA device; run this on the GPU machine"


def test_only_names_groups(capsys):
    assert bench.parse_groups("ring, fp8") == ["ring", "fp8"]
    with pytest.raises(SystemExit):
        bench.main(["--only", "ring,flash3"])
    assert "'flash3' is not one of" in capsys.readouterr().err
