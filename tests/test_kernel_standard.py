"""standard_attention (kernels/standard.py) against the float64 reference: O, LSE and the intermediates
S and P it writes to HBM, with outputs poisoned with NaN; its launches against what it reports; its
tiles against memsim's model of the same schedule."""

import math

import pytest
import torch
from hypothesis import given

from kernel_checks import (DEVICE, assert_launched_as_reported, assert_recorded_as_reported, attention_problems,
                           check_close, expand_kv, kernel_settings, poisoned, record_launches)
from kernels import reference, standard
from kernels.standard import StandardWorkspace, launch_configs, standard_attention

def poisoned_workspace(q, k) -> StandardWorkspace:
    shape = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    return StandardWorkspace(poisoned(shape, q.dtype), poisoned(shape, q.dtype))


@given(attention_problems())
@kernel_settings(12)
def test_standard_attention_matches_reference(problem):
    q, k, v, causal, dtype = problem
    out, lse_out = poisoned(q.shape, dtype), poisoned(q.shape[:3], torch.float32)
    workspace = poisoned_workspace(q, k)
    o, lse = standard_attention(q, k, v, causal=causal, out=out, return_lse=True, lse_out=lse_out,
                                workspace=workspace)
    assert o is out and lse is lse_out
    o64, lse64 = reference.attention(q, k, v, causal=causal)
    peer_o, peer_lse = reference.attention(q, k, v, causal=causal, dtype=dtype)
    check_close("O", o, o64, peer_o, dtype)
    check_close("LSE", lse, lse64, peer_lse, dtype)
    # S = Q K^T, unscaled: the score GEMM's own product.
    k_full = expand_kv(k, q.shape[1])
    s64 = q.double().cpu() @ k_full.double().cpu().transpose(-1, -2)
    peer_s = (q.cpu().to(dtype) @ k_full.cpu().to(dtype).transpose(-1, -2))
    check_close("S", workspace.scores, s64, peer_s, dtype)
    # P = masked softmax of scale * S, from the S the kernel wrote: the softmax kernel alone.
    mask = reference.visible(q.shape[2], k.shape[2], causal=causal)
    scale = q.shape[-1] ** -0.5
    p64, _ = reference.masked_softmax(scale * workspace.scores.double().cpu(), mask)
    peer_p, _ = reference.masked_softmax(scale * workspace.scores.cpu(), mask)
    check_close("P", workspace.probs, p64, peer_p, dtype)


def test_long_rows_take_the_three_pass_softmax():
    """Rows longer than ROW_BLOCK_MAX keys are read in chunks (max, sum, output) and give the same P."""
    gen = torch.Generator().manual_seed(1)
    kv_len = 3 * standard.ROW_BLOCK_MAX + 5
    q = torch.randn(1, 1, 3, 16, generator=gen).to(DEVICE)
    k, v = (torch.randn(1, 1, kv_len, 16, generator=gen).to(DEVICE) for _ in range(2))
    _, softmax, _ = launch_configs(q, k, v)
    assert softmax.block_n < k.shape[2]
    o, lse = standard_attention(q, k, v, causal=True, return_lse=True, out=poisoned(q.shape, q.dtype))
    o64, lse64 = reference.attention(q, k, v, causal=True)
    peer = reference.attention(q, k, v, causal=True, dtype=torch.float32)
    check_close("O", o, o64, peer[0], torch.float32)
    check_close("LSE", lse, lse64, peer[1], torch.float32)


def test_worked_example_uniform_causal_rows():
    """q = 0 makes every score 0: causal row i averages v[0..i], P[i, j] = 1/(i+1), LSE[i] = ln(i+1)."""
    n = 5
    q = torch.zeros(1, 1, n, 16, device=DEVICE)
    k = torch.randn(1, 1, n, 16, device=DEVICE)
    v = torch.arange(n * 16, dtype=torch.float32, device=DEVICE).view(1, 1, n, 16)
    workspace = poisoned_workspace(q, k)
    o, lse = standard_attention(q, k, v, causal=True, return_lse=True, workspace=workspace)
    counts = torch.arange(1, n + 1, dtype=torch.float32)
    expected_p = torch.tril(torch.ones(n, n)) / counts.unsqueeze(1)
    torch.testing.assert_close(workspace.probs[0, 0].cpu(), expected_p)
    torch.testing.assert_close(lse[0, 0].cpu(), torch.log(counts))
    torch.testing.assert_close(o[0, 0].cpu(), torch.cumsum(v[0, 0].cpu(), 0) / counts.unsqueeze(1))


def test_rows_that_see_no_key_give_zero_and_minus_infinity():
    """Causal with more queries than keys: the first Nq - Nk rows see nothing."""
    q, k, v = torch.randn(1, 2, 7, 16, device=DEVICE), torch.randn(1, 1, 3, 16, device=DEVICE), \
        torch.randn(1, 1, 3, 16, device=DEVICE)
    workspace = poisoned_workspace(q, k)
    o, lse = standard_attention(q, k, v, causal=True, return_lse=True, workspace=workspace,
                                out=poisoned(q.shape, q.dtype))
    assert torch.all(o[:, :, :4] == 0) and torch.all(torch.isneginf(lse[:, :, :4]))
    assert torch.all(workspace.probs[:, :, :4] == 0) and torch.isfinite(lse[:, :, 4:]).all()


@pytest.mark.parametrize("block_m, block_n", [(None, None), (32, 16)])
def test_launches_are_the_reported_configs(monkeypatch, block_m, block_n):
    launches = record_launches(monkeypatch, standard, "standard_qk", "standard_softmax", "standard_pv")
    launched = []
    q, k = torch.randn(1, 4, 19, 24, device=DEVICE), torch.randn(1, 2, 29, 24, device=DEVICE)
    standard_attention(q, k, k, causal=True, block_m=block_m, block_n=block_n, launched=launched)
    configs = launch_configs(q, k, k, block_m=block_m, block_n=block_n)
    assert_launched_as_reported(launches, configs)
    assert_recorded_as_reported(launched, configs)
    if block_m == 32:  # 19 queries in 1 row tile, 29 keys in 2 column tiles, 4 heads
        assert configs[0].grid == (1 * 2 * 4,) and configs[1].grid == (4 * 19,) and configs[2].grid == (1 * 4,)


@pytest.mark.parametrize("head_dim", [32, 64, 128, 256])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_gpu_tiles_match_memsim(monkeypatch, head_dim, dtype):
    """On the GPU the GEMM tiles and softmax warps are those memsim models for an H100."""
    pytest.importorskip("memsim")  # the GPU machine has no simpy, so no memsim
    from memsim import AttentionShape
    from memsim.algorithms import standard as model
    from memsim.hardware import load_gpu
    monkeypatch.setattr(standard, "INTERPRETING", False)
    name = {torch.float16: "fp16", torch.float32: "fp32"}[dtype]
    shape = AttentionShape(batch=1, q_heads=1, q_len=4096, head_dim=head_dim, dtype=name)
    tiles = model.default_tiles(load_gpu("h100-sxm5-80gb"), shape)
    assert standard.gemm_tiles(head_dim, dtype) == (tiles.block_m, tiles.block_n)
    assert (standard.GEMM_WARPS, standard.GEMM_STAGES) == (tiles.num_warps, tiles.num_stages)
    assert standard.softmax_warps(4096, dtype) * 32 == model.softmax_threads(4096, shape.element_bytes)


def test_worked_example_h100_tiles(monkeypatch):
    """d = 128: fp16 takes 128 x 128 tiles (value chunks 2 x (128*128 + 128*128) x 2 B = 128 KiB fit in
    227 KiB); fp32 needs 256 KiB there, so it drops to 128 x 64 (128 KiB)."""
    monkeypatch.setattr(standard, "INTERPRETING", False)
    print("fp16", standard.gemm_tiles(128, torch.float16), "fp32", standard.gemm_tiles(128, torch.float32))
    assert standard.gemm_tiles(128, torch.float16) == (128, 128)
    assert standard.gemm_tiles(128, torch.float32) == (128, 64)


def test_bad_inputs_are_refused_on_one_line():
    q, k = torch.randn(1, 3, 4, 16, device=DEVICE), torch.randn(1, 2, 4, 16, device=DEVICE)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        standard_attention(q, k, k)
    with pytest.raises(ValueError, match="4 dims"):
        standard_attention(q[0], k, k)
    with pytest.raises(ValueError, match="dtypes"):
        standard_attention(k, k.half(), k)
    with pytest.raises(ValueError, match="out is"):
        standard_attention(k, k, k, out=torch.empty(1, 2, 4, 8, device=DEVICE))
    with pytest.raises(ValueError, match="block_m = 24"):
        standard_attention(k, k, k, block_m=24)
    with pytest.raises(ValueError, match="workspace.scores"):
        standard_attention(k, k, k, workspace=StandardWorkspace(k.new_empty(1, 2, 4, 5), k.new_empty(1, 2, 4, 4)))
    assert math.isfinite(standard_attention(k, k, k).sum().item())
