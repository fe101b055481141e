"""FlashAttention-1 (Algorithm 1): key blocks outer, query blocks inner, O/l/m round trips per key block."""

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memsim import AttentionShape, TileConfig
from memsim.algorithms import flash1
from memsim.errors import MemsimError
from memsim.hardware import load_gpu
from memsim.roofline import kernel_time

H100 = load_gpu("H100-SXM5-80GB")
FA1_D64 = TileConfig(block_m=16, block_n=256, num_warps=4, num_stages=1, loop_order="kv_outer")


def test_default_tiles_are_fa1s_kernel_traits():
    assert flash1.default_tiles(H100, AttentionShape(head_dim=64)) == FA1_D64
    d128 = flash1.default_tiles(H100, AttentionShape(head_dim=128))
    assert (d128.block_m, d128.block_n, d128.num_warps, d128.loop_order) == (16, 128, 4, "kv_outer")


def test_every_inner_step_reloads_q_o_l_m():
    h, n, d = 4, 2048, 64
    shape = AttentionShape(q_heads=h, q_len=n, head_dim=d, dtype="fp16")
    init, fwd = flash1.kernels(H100, shape, FA1_D64, "fwd")
    t_c = n // 256
    assert fwd.grid_ctas == h  # one CTA per (batch, head)
    assert fwd.traffic["Q"].l2_read == t_c * h * n * d * 2
    assert fwd.traffic["O scratch"].l2_read == t_c * h * n * d * 4
    assert fwd.traffic["O scratch"].l2_write == (t_c - 1) * h * n * d * 4  # the last key block writes O in fp16
    assert fwd.traffic["O"].l2_write == h * n * d * 2
    assert fwd.traffic["l"].l2_read == fwd.traffic["m"].l2_write == t_c * h * n * 4
    assert fwd.traffic["K"].l2_read == fwd.traffic["V"].l2_read == h * n * d * 2  # K_j, V_j loaded once
    assert init.traffic["O scratch"].hbm_write == h * n * d * 4  # Algorithm 1, line 2
    assert init.traffic["m"].hbm_write == h * n * 4


def test_tensor_flops_are_4_n2_d_per_head():
    h, n, d = 8, 4096, 128
    shape = AttentionShape(q_heads=h, q_len=n, head_dim=d)
    fwd = flash1.forward(H100, shape, flash1.default_tiles(H100, shape))
    assert fwd.tensor_flops == 4 * h * n * n * d


def test_o_l_m_rereads_hit_l2_when_the_running_ctas_fit_else_hbm():
    fits = AttentionShape(q_heads=8, q_len=4096, head_dim=64, dtype="fp16")  # 8 x 1.6 MB of Q, O, l, m
    spills = AttentionShape(q_heads=64, q_len=16384, head_dim=64, dtype="fp16")  # 64 x 6.4 MB
    small = flash1.forward(H100, fits, FA1_D64)
    big = flash1.forward(H100, spills, FA1_D64)
    assert small.traffic["Q"].hbm_read == 8 * 4096 * 64 * 2
    assert small.traffic["O scratch"].hbm_read == 8 * 4096 * 64 * 4
    assert big.traffic["Q"].hbm_read == big.traffic["Q"].l2_read
    assert big.traffic["O scratch"].hbm_write == big.traffic["O scratch"].l2_write
    assert any("exceed L2" in note for note in big.notes)


def test_split_k_warp_partition_is_noted():
    fwd = flash1.forward(H100, AttentionShape(q_len=1024, head_dim=64), FA1_D64)
    assert any("split" in note and "shared memory" in note for note in fwd.notes)
    assert "split-K partial O (fp32)" in fwd.smem_buffers


def test_causal_halves_the_tile_work():
    tiles = dataclasses.replace(FA1_D64, block_m=64, block_n=128)
    full = flash1.forward(H100, AttentionShape(q_len=8192, head_dim=64), tiles)
    causal = flash1.forward(H100, AttentionShape(q_len=8192, head_dim=64, causal=True), tiles)
    ratio = causal.tensor_flops / full.tensor_flops
    loads = causal.traffic["Q"].l2_read / full.traffic["Q"].l2_read
    print(f"\ncausal / full tile work {ratio:.3f}; Q loads {loads:.3f}")
    assert 0.5 < ratio < 0.52
    assert 0.5 < loads < 0.52


def test_gqa_cuts_hbm_kv_by_the_group_factor_but_not_l2_kv():
    mha = flash1.forward(H100, AttentionShape(q_heads=32, q_len=2048, head_dim=64), FA1_D64)
    gqa = flash1.forward(H100, AttentionShape(q_heads=32, kv_heads=4, q_len=2048, head_dim=64), FA1_D64)
    assert gqa.traffic["K"].hbm_read == mha.traffic["K"].hbm_read / 8
    assert gqa.traffic["V"].l2_read == mha.traffic["V"].l2_read


def test_q_outer_loop_order_is_refused():
    with pytest.raises(MemsimError, match="kv_outer"):
        flash1.kernels(H100, AttentionShape(), TileConfig(), "fwd")


def test_tiles_too_big_for_shared_memory_are_refused():
    with pytest.raises(MemsimError, match="shared memory"):
        flash1.forward(H100, AttentionShape(head_dim=128), dataclasses.replace(FA1_D64, block_m=128, block_n=512))


def test_backward_is_not_modelled():
    with pytest.raises(MemsimError, match="fwd"):
        flash1.kernels(H100, AttentionShape(), FA1_D64, "bwd")


@given(n=st.integers(1, 5000), kv_extra=st.integers(0, 700), d=st.sampled_from([32, 64, 128]),
       heads=st.sampled_from([(4, 4), (8, 2), (16, 1)]), batch=st.integers(1, 4), causal=st.booleans(),
       window=st.one_of(st.none(), st.integers(1, 2000)), dtype=st.sampled_from(["fp16", "bf16", "fp32"]))
def test_every_shape_moves_at_least_the_compulsory_bytes(n, kv_extra, d, heads, batch, causal, window, dtype):
    shape = AttentionShape(batch=batch, q_heads=heads[0], kv_heads=heads[1], q_len=n, kv_len=n + kv_extra,
                           head_dim=d, dtype=dtype, causal=causal, window=window)
    init, fwd = flash1.kernels(H100, shape, flash1.default_tiles(H100, shape), "fwd")
    e, kv_e = shape.element_bytes, shape.kv_element_bytes
    q = batch * heads[0] * n * d
    assert fwd.traffic["Q"].hbm_read >= q * e
    assert fwd.traffic["O"].hbm_write == q * e
    assert fwd.traffic["K"].hbm_read >= batch * heads[1] * flash1.keys_touched(shape) * d * kv_e
    for k in (init, fwd):
        for t, traffic in k.traffic.items():
            assert traffic.l2_read >= traffic.hbm_read, (k.name, t)
        kernel_time(H100, H100.ceilings(), k)
