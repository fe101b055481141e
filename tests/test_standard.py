"""Standard attention (Algorithm 0): three kernels forward, five backward, S and P through HBM."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memsim import AttentionShape, TileConfig
from memsim.algorithms import standard
from memsim.errors import MemsimError
from memsim.hardware import load_gpu
from memsim.roofline import kernel_time

from checks import by_name, summed

H100 = load_gpu("H100-SXM5-80GB")
TILES = TileConfig(block_m=128, block_n=128, num_warps=8, num_stages=2)


def test_forward_is_three_kernels_with_s_and_p_through_hbm():
    h, n, d = 4, 1024, 64
    shape = AttentionShape(q_heads=h, q_len=n, head_dim=d, dtype="fp16")
    ks = standard.kernels(H100, shape, TILES, "fwd")
    assert [k.name for k in ks] == ["standard_qk", "standard_softmax", "standard_pv"]
    s_bytes = h * n * n * 2
    qk, sm, pv = ks
    assert qk.traffic["S"].hbm_write == s_bytes
    assert sm.traffic["S"].hbm_read == s_bytes and sm.traffic["P"].hbm_write == s_bytes
    assert pv.traffic["P"].hbm_read == s_bytes


def test_gemm_flops_are_2mnk_each():
    h, n, d = 8, 2048, 128
    ks = by_name(standard.kernels(H100, AttentionShape(q_heads=h, q_len=n, head_dim=d), TILES, "fwd+bwd"))
    for name in ("standard_qk", "standard_pv", "standard_bwd_dv", "standard_bwd_dp", "standard_bwd_dq",
                 "standard_bwd_dk"):
        assert ks[name].tensor_flops == 2 * h * n * n * d, name
    assert ks["standard_softmax"].tensor_flops == 0


def test_gemm_panels_are_reread_from_l2_once_per_tile_row_and_column():
    h, n, d = 2, 1024, 64
    shape = AttentionShape(q_heads=h, q_len=n, head_dim=d, dtype="fp16")
    qk, _, pv = standard.kernels(H100, shape, TILES, "fwd")
    t = n // 128
    assert qk.grid_ctas == h * t * t
    assert qk.traffic["Q"].l2_read == t * h * n * d * 2  # each Q panel read by the T_c CTAs of its row
    assert qk.traffic["K"].l2_read == t * h * n * d * 2
    assert pv.traffic["P"].l2_read == h * n * n * 2  # each row block of P read once
    assert pv.traffic["V"].l2_read == t * h * n * d * 2
    # everything fits in L2: every operand comes from HBM once
    assert qk.traffic["Q"].hbm_read == qk.traffic["K"].hbm_read == h * n * d * 2


def compulsory(shape: AttentionShape, kernels, reads: tuple, writes: tuple) -> None:
    e, kv_e = shape.element_bytes, shape.kv_element_bytes
    q = shape.batch * shape.q_heads * shape.q_len * shape.head_dim
    kv = shape.batch * shape.kv_heads * shape.kv_len * shape.head_dim
    size = {"Q": q * e, "K": kv * kv_e, "V": kv * kv_e, "O": q * e, "dO": q * e, "dQ": q * e, "dK": kv * e,
            "dV": kv * e}
    for t in reads:
        assert summed(kernels, t, "hbm_read") >= size[t] * (1 - 1e-12), t
    for t in writes:
        assert summed(kernels, t, "hbm_write") >= size[t] * (1 - 1e-12), t


def l2_at_least_hbm(kernels) -> None:
    for k in kernels:
        for t, traffic in k.traffic.items():
            assert traffic.l2_read >= traffic.hbm_read * (1 - 1e-12), (k.name, t)
            assert traffic.hbm_write == traffic.l2_write, (k.name, t)


@given(n=st.integers(1, 3000), kv_extra=st.integers(0, 500), d=st.sampled_from([32, 64, 128, 256]),
       heads=st.sampled_from([(4, 4), (8, 2), (8, 1)]), batch=st.integers(1, 3), causal=st.booleans(),
       dtype=st.sampled_from(["fp16", "bf16", "fp32", "fp8"]))
def test_every_shape_moves_at_least_the_compulsory_bytes(n, kv_extra, d, heads, batch, causal, dtype):
    shape = AttentionShape(batch=batch, q_heads=heads[0], kv_heads=heads[1], q_len=n, kv_len=n + kv_extra,
                           head_dim=d, dtype=dtype, causal=causal)
    tiles = standard.default_tiles(H100, shape)
    ks = standard.kernels(H100, shape, tiles, "fwd+bwd")
    compulsory(shape, ks, reads=("Q", "K", "V", "dO"), writes=("O", "dQ", "dK", "dV"))
    l2_at_least_hbm(ks)
    for k in ks:
        kernel_time(H100, H100.ceilings(), k)  # every kernel fits and times


def test_k_of_the_heads_in_flight_stays_in_l2_across_waves():
    """32 heads at N = 32K: K of all heads (256 MiB) is far above the 50 MiB L2, but one head's tiles fill
    248 waves, and only two heads' K (8 MiB each) are in use at once: each comes from HBM once."""
    shape = AttentionShape(q_heads=32, q_len=32768)
    qk = standard.kernels(H100, shape, TILES, "fwd")[0]
    once = 32 * 32768 * 128 * 2
    k = qk.traffic["K"]
    print(f"\nK from HBM {k.hbm_read / once:.1f}x its size; from L2 {k.l2_read / once:.0f}x")
    assert k.hbm_read == once
    assert qk.traffic["K"].l2_read == 256 * once


def test_k_bigger_than_l2_is_reread_from_hbm_but_never_more_than_from_l2():
    """One head's K at N = 128K, d = 256 is 64 MiB, above the 50 MiB L2: re-read from HBM."""
    shape = AttentionShape(q_heads=2, q_len=131072, head_dim=256)
    qk = standard.kernels(H100, shape, standard.default_tiles(H100, shape), "fwd")[0]
    once = 2 * 131072 * 256 * 2
    k = qk.traffic["K"]
    print(f"\nK from HBM {k.hbm_read / once:.0f}x its size; from L2 {k.l2_read / once:.0f}x")
    assert k.hbm_read > 2 * once
    assert qk.traffic["K"].hbm_read <= qk.traffic["K"].l2_read


def test_causal_changes_only_the_softmax_masking():
    shape = AttentionShape(q_heads=8, q_len=4096)
    full = by_name(standard.kernels(H100, shape, TILES, "fwd"))
    causal = by_name(standard.kernels(H100, AttentionShape(q_heads=8, q_len=4096, causal=True), TILES, "fwd"))
    for name in full:
        assert causal[name].tensor_flops == full[name].tensor_flops
        assert causal[name].total == full[name].total
    scores = 8 * 4096 * 4096
    extra = causal["standard_softmax"].cuda_ops - full["standard_softmax"].cuda_ops
    assert extra == scores * standard.MASK_OPS_PER_SCORE


def test_gqa_cuts_hbm_kv_by_the_group_factor_but_not_l2_kv():
    mha = by_name(standard.kernels(H100, AttentionShape(q_heads=32, q_len=1024), TILES, "fwd"))
    gqa = by_name(standard.kernels(H100, AttentionShape(q_heads=32, kv_heads=4, q_len=1024), TILES, "fwd"))
    for kernel, tensor in (("standard_qk", "K"), ("standard_pv", "V")):
        assert gqa[kernel].traffic[tensor].hbm_read == mha[kernel].traffic[tensor].hbm_read / 8
        assert gqa[kernel].traffic[tensor].l2_read == mha[kernel].traffic[tensor].l2_read


def test_backward_materialises_dp_and_ds_and_writes_gqa_grads_per_kv_head():
    h, hk, n, d = 8, 2, 512, 64
    shape = AttentionShape(q_heads=h, kv_heads=hk, q_len=n, head_dim=d, dtype="fp16")
    ks = by_name(standard.kernels(H100, shape, TILES, "bwd"))
    assert list(ks) == ["standard_bwd_dv", "standard_bwd_dp", "standard_bwd_softmax", "standard_bwd_dq",
                        "standard_bwd_dk"]
    nn = h * n * n * 2
    assert ks["standard_bwd_dp"].traffic["dP"].hbm_write == nn
    assert ks["standard_bwd_softmax"].traffic["dP"].hbm_read == nn
    assert ks["standard_bwd_softmax"].traffic["dS"].hbm_write == nn
    assert ks["standard_bwd_dk"].traffic["dK"].hbm_write == hk * n * d * 2
    assert ks["standard_bwd_dv"].traffic["dV"].hbm_write == hk * n * d * 2
    # dV = P^T dO per kv head, the group's queries stacked: still 2 N^2 d per q head
    assert ks["standard_bwd_dv"].tensor_flops == 2 * h * n * n * d


def test_softmax_row_too_big_for_shared_memory_takes_three_passes_over_l2():
    n = 65536  # one fp32 row is 256 KiB, above the 227 KiB a block may have
    shape = AttentionShape(q_heads=1, q_len=64, kv_len=n, dtype="fp32")
    sm = standard.kernels(H100, shape, standard.default_tiles(H100, shape), "fwd")[1]
    assert sm.smem_bytes_per_cta == 0
    assert sm.traffic["S"].l2_read == 3 * 64 * n * 4
    assert sm.traffic["S"].hbm_read == 64 * n * 4  # 64 rows of 256 KiB stay in L2 between passes
    assert any("passes" in note for note in sm.notes)


def test_softmax_block_size_follows_pytorch():
    assert standard.softmax_threads(4096, 2) == 256  # 512 vectors of 16 B, half of them -> 256 threads
    assert standard.softmax_threads(64, 2) == 32
    assert standard.softmax_threads(1 << 20, 4) == 512  # half of the 1024-thread cap


def test_tiles_too_big_for_shared_memory_are_refused():
    shape = AttentionShape(q_len=4096, head_dim=256)
    with pytest.raises(MemsimError, match="shared memory"):
        standard.kernels(H100, shape, TileConfig(block_m=256, block_n=256, num_warps=8, num_stages=3), "fwd")


@pytest.mark.parametrize("dtype", ["fp8", "bf16", "fp32"])
@pytest.mark.parametrize("d", [32, 64, 128, 256])
def test_default_tiles_fit(d, dtype):
    shape = AttentionShape(q_len=2048, head_dim=d, dtype=dtype)
    for k in standard.kernels(H100, shape, standard.default_tiles(H100, shape), "fwd+bwd"):
        assert k.smem_bytes_per_cta <= H100.smem_per_block_optin_bytes


def test_standard_is_memory_bound_where_flash_is_not():
    """S and P round trips make standard attention HBM-bound at N = 4096, d = 128 (DESIGN.md peers run FA2
    compute-bound there)."""
    shape = AttentionShape(batch=4, q_heads=32, q_len=4096)
    times = [kernel_time(H100, H100.ceilings(), k) for k in standard.kernels(H100, shape, TILES, "fwd")]
    softmax = times[1]
    print(f"\nsoftmax {softmax.latency_s * 1e6:.0f} us, bound by {softmax.critical}")
    assert softmax.bound == "memory"
