"""flash1_attention (kernels/flash1.py) against the float64 reference, with outputs poisoned with NaN;
the (key block, query block) pairs its program visits against memsim's FlashAttention-1 schedule; its
launches against what it reports."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from kernel_checks import (DEVICE, assert_launched_as_reported, assert_recorded_as_reported, attention_problems,
                           check_close, kernel_settings, poisoned, record_launches)
from kernels import flash1, reference
from kernels.flash1 import flash1_attention, launch_configs

TILES = ((16, 16), (16, 32), (32, 16), (16, 64))  # (block_m, block_n): several tilings of the same problem


@given(attention_problems(), st.sampled_from(TILES))
@kernel_settings(25)
def test_flash1_matches_reference(problem, tiles):
    q, k, v, causal, dtype = problem
    block_m, block_n = tiles
    out, lse_out = poisoned(q.shape, dtype), poisoned(q.shape[:3], torch.float32)
    o, lse = flash1_attention(q, k, v, causal=causal, out=out, return_lse=True, lse_out=lse_out,
                              block_m=block_m, block_n=block_n)
    assert o is out and lse is lse_out
    o64, lse64 = reference.attention(q, k, v, causal=causal)
    peer_o, peer_lse = reference.attention(q, k, v, causal=causal, dtype=dtype)
    check_close("O", o, o64, peer_o, dtype)
    check_close("LSE", lse, lse64, peer_lse, dtype)


def record_visits(monkeypatch) -> list:
    """(key block j, query block i, last key block of i?) for every inner step, in the order they run.
    Works under the interpreter, where the kernel calls _inner_step as a Python function."""
    visits, inner = [], flash1._inner_step

    def step(*args):
        i, j, is_last = (a.handle.data.item() if hasattr(a, "handle") else a for a in (args[8], args[9], args[19]))
        visits.append((int(j), int(i), bool(is_last)))
        return inner(*args)
    monkeypatch.setattr(flash1, "_inner_step", step)
    return visits


@pytest.mark.skipif(DEVICE != "cpu", reason="counts inner steps through the interpreter")
@pytest.mark.parametrize("q_len, kv_len, block_m, block_n, causal", [
    (40, 50, 16, 16, True), (40, 40, 16, 32, True), (20, 70, 16, 16, True), (33, 47, 32, 16, False),
    (37, 80, 32, 16, True), (5, 64, 16, 16, True),
])  # memsim takes causal shapes with q_len <= kv_len only
def test_loop_order_is_memsims_schedule(monkeypatch, q_len, kv_len, block_m, block_n, causal):
    """Key blocks outer, query blocks inner, only the pairs some row of which sees a key, O written at each
    query block's last key block: exactly memsim.schedules.flash1's pairs."""
    pytest.importorskip("memsim")  # the GPU machine has no simpy, so no memsim
    from memsim import AttentionShape, TileConfig
    from memsim.schedules import flash1 as schedule
    visits = record_visits(monkeypatch)
    q, k = torch.randn(1, 1, q_len, 16), torch.randn(1, 1, kv_len, 16)
    out = poisoned(q.shape, q.dtype)
    flash1_attention(q, k, k, causal=causal, block_m=block_m, block_n=block_n, out=out)
    shape = AttentionShape(batch=1, q_heads=1, q_len=q_len, kv_len=kv_len, head_dim=16, dtype="fp32", causal=causal)
    tiles = TileConfig(block_m=block_m, block_n=block_n, num_warps=4, num_stages=1, loop_order="kv_outer")
    _, pairs = schedule._pairs(shape, tiles)
    assert visits == [(j, i, last) for j, i, _, last, _ in pairs]
    assert not torch.isnan(out).any()


def test_query_blocks_that_see_no_key_are_written():
    """Causal with 40 queries over 3 keys: blocks 0 and 1 (rows 0-31) see nothing and get O 0, LSE -inf
    without a visit; rows 32-36 of block 2 see nothing either and come out of the inner step as 0, -inf."""
    q, k = torch.randn(1, 1, 40, 16, device=DEVICE), torch.randn(1, 1, 3, 16, device=DEVICE)
    o, lse = flash1_attention(q, k, k, causal=True, return_lse=True, out=poisoned(q.shape, q.dtype),
                              lse_out=poisoned((1, 1, 40), torch.float32), block_m=16, block_n=16)
    assert torch.all(o[:, :, :37] == 0) and torch.all(torch.isneginf(lse[:, :, :37]))
    assert torch.isfinite(lse[:, :, 37:]).all()


@pytest.mark.parametrize("block_m, block_n", [(None, None), (32, 16)])
def test_launches_are_the_reported_configs(monkeypatch, block_m, block_n):
    launches = record_launches(monkeypatch, flash1, "flash1_init", "flash1_fwd")
    launched = []
    q, k = torch.randn(2, 2, 19, 24, device=DEVICE), torch.randn(2, 1, 29, 24, device=DEVICE)
    flash1_attention(q, k, k, causal=True, block_m=block_m, block_n=block_n, launched=launched)
    configs = launch_configs(q, k, k, block_m=block_m, block_n=block_n)
    assert_launched_as_reported(launches, configs, {"flash1_init": ("BLOCK_M", "BLOCK")})
    assert_recorded_as_reported(launched, configs)
    # the init kernel covers O (2*2*19 rows x 24) and l, m (2*2*19 each) at 512 elements per program
    assert configs[0].grid == (-(-(2 * 2 * 19 * 26) // 512),) and configs[1].grid == (4,)


@pytest.mark.parametrize("head_dim", [32, 64, 128])
def test_gpu_tiles_match_memsim(monkeypatch, head_dim):
    """On the GPU (fp16) the tiles, warps and stages are memsim's FlashAttention-1 defaults."""
    pytest.importorskip("memsim")  # the GPU machine has no simpy, so no memsim
    from memsim import AttentionShape
    from memsim.algorithms import flash1 as model
    from memsim.hardware import load_gpu
    monkeypatch.setattr(flash1, "INTERPRETING", False)
    tiles = model.default_tiles(load_gpu("h100-sxm5-80gb"), AttentionShape(q_len=4096, head_dim=head_dim,
                                                                            dtype="fp16"))
    q = torch.empty(1, 1, 4096, head_dim, dtype=torch.float16)
    fwd = launch_configs(q, q, q)[1]
    assert (fwd.block_m, fwd.block_n, fwd.num_warps, fwd.num_stages) == (tiles.block_m, tiles.block_n,
                                                                         tiles.num_warps, tiles.num_stages)


def test_bad_inputs_are_refused_on_one_line():
    q, k = torch.randn(1, 3, 4, 16, device=DEVICE), torch.randn(1, 2, 4, 16, device=DEVICE)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        flash1_attention(q, k, k)
    with pytest.raises(ValueError, match="lse_out is"):
        flash1_attention(k, k, k, lse_out=k.new_empty(1, 2, 4, dtype=torch.float16))
    with pytest.raises(ValueError, match="block_n = 8"):
        flash1_attention(k, k, k, block_n=8)
