"""FlashAttention-2's backward pass: preprocess, key-block-parallel main kernel, GQA reduction, dQ conversion."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memsim import AttentionShape, TileConfig
from memsim.algorithms import flash2
from memsim.algorithms.flash2_bwd import MATMULS, PER_SCORE_OPS, backward
from memsim.algorithms.tiling import keys_touched
from memsim.errors import MemsimError
from memsim.hardware import load_gpu
from memsim.roofline import kernel_time

from checks import by_name, summed

H100 = load_gpu("H100-SXM5-80GB")
# flash-attention's Flash_bwd_kernel_traits<128, 64, 128, 8, ...> for d = 128 on sm80: BLOCK_M 64, BLOCK_N 128, 8 warps
BWD = TileConfig(block_m=64, block_n=128, num_warps=8, num_stages=2)


def test_kernels_in_launch_order():
    assert [k.name for k in backward(H100, AttentionShape(q_len=1024), BWD)] == \
        ["flash2_bwd_preprocess", "flash2_bwd", "flash2_bwd_convert_dq"]
    gqa = backward(H100, AttentionShape(q_heads=32, kv_heads=8, q_len=1024), BWD)
    assert [k.name for k in gqa] == ["flash2_bwd_preprocess", "flash2_bwd", "flash2_bwd_dkv_reduce",
                                     "flash2_bwd_convert_dq"]


def test_flash2_kernels_include_the_backward():
    names = [k.name for k in flash2.kernels(H100, AttentionShape(q_len=1024), BWD, "fwd+bwd")]
    assert names[0] == "flash2_fwd" and "flash2_bwd" in names


def test_five_matmuls_per_tile_pair():
    h, n, d = 8, 4096, 128
    main = by_name(backward(H100, AttentionShape(q_heads=h, q_len=n, head_dim=d), BWD))["flash2_bwd"]
    assert MATMULS == 5
    assert main.tensor_flops == 10 * h * n * n * d
    assert main.grid_ctas == (n // 128) * h
    assert main.exp_ops == h * n * n  # P recomputed from the LSE
    assert main.cuda_ops == h * n * n * PER_SCORE_OPS


def test_main_kernel_streams_q_do_per_key_block_and_loads_kv_once():
    h, n, d = 4, 2048, 64
    main = by_name(backward(H100, AttentionShape(q_heads=h, q_len=n, head_dim=d, dtype="fp16"), BWD))["flash2_bwd"]
    t_c = n // 128
    assert main.traffic["Q"].l2_read == main.traffic["dO"].l2_read == t_c * h * n * d * 2
    assert main.traffic["LSE"].l2_read == main.traffic["D"].l2_read == t_c * h * n * 4
    assert main.traffic["K"].l2_read == h * n * d * 2
    assert main.traffic["dK"].hbm_write == main.traffic["dV"].hbm_write == h * n * d * 2
    # everything of this small problem fits in L2: each input from HBM once
    assert main.traffic["Q"].hbm_read == h * n * d * 2


def test_dq_is_zeroed_accumulated_with_atomics_in_l2_and_converted():
    h, n, d = 4, 2048, 64
    pre, main, conv = backward(H100, AttentionShape(q_heads=h, q_len=n, head_dim=d, dtype="fp16"), BWD)
    acc = h * n * d * 4
    assert pre.traffic["dQ accumulator"].hbm_write == acc  # zeroed
    assert main.traffic["dQ accumulator"].l2_write == (n // 128) * acc  # one fp32 atomic add per element per key block
    assert main.traffic["dQ accumulator"].l2_read == 0
    assert main.traffic["dQ accumulator"].hbm_write == acc  # written back once
    assert conv.traffic["dQ accumulator"].hbm_read == acc
    assert conv.traffic["dQ"].hbm_write == h * n * d * 2
    assert pre.traffic["D"].hbm_write == h * n * 4


def test_causal_halves_the_tile_work():
    full = by_name(backward(H100, AttentionShape(q_len=8192), BWD))["flash2_bwd"]
    causal = by_name(backward(H100, AttentionShape(q_len=8192, causal=True), BWD))["flash2_bwd"]
    ratio = causal.tensor_flops / full.tensor_flops
    loads = causal.traffic["Q"].l2_read / full.traffic["Q"].l2_read
    print(f"\ncausal / full: tile work {ratio:.3f}, Q loads {loads:.3f}, masked ops "
          f"{causal.cuda_ops / full.cuda_ops:.3f}")
    assert 0.5 < ratio < 0.53
    assert 0.5 < loads < 0.53
    assert causal.traffic["K"].l2_read == full.traffic["K"].l2_read  # every key block still loaded once


def test_gqa_cuts_hbm_kv_by_the_group_factor_and_sums_dk_dv_per_kv_head():
    mha = backward(H100, AttentionShape(q_heads=16, q_len=2048), BWD)
    gqa = backward(H100, AttentionShape(q_heads=16, kv_heads=2, q_len=2048), BWD)
    m, g = by_name(mha)["flash2_bwd"], by_name(gqa)["flash2_bwd"]
    assert g.traffic["K"].hbm_read == m.traffic["K"].hbm_read / 8
    assert g.traffic["V"].l2_read == m.traffic["V"].l2_read
    reduce = by_name(gqa)["flash2_bwd_dkv_reduce"]
    per_q_head = 16 * 2048 * 128 * 2
    assert g.traffic["dK per q head"].hbm_write == per_q_head
    assert reduce.traffic["dK per q head"].hbm_read == per_q_head
    assert reduce.traffic["dK"].hbm_write == per_q_head / 8


def test_long_sequences_reread_q_side_from_hbm_but_never_more_than_from_l2():
    """One head's Q, dO and fp32 dQ accumulator at N = 128K, d = 128 take 135 MB: more than L2."""
    main = by_name(backward(H100, AttentionShape(q_heads=4, q_len=131072), BWD))["flash2_bwd"]
    once = 4 * 131072 * 128 * 2
    print(f"\nQ from HBM {main.traffic['Q'].hbm_read / once:.1f}x its size, from L2 "
          f"{main.traffic['Q'].l2_read / once:.0f}x")
    assert main.traffic["Q"].hbm_read > 2 * once
    assert main.traffic["Q"].hbm_read <= main.traffic["Q"].l2_read


def test_tiles_too_big_for_shared_memory_are_refused():
    with pytest.raises(MemsimError, match="shared memory"):
        backward(H100, AttentionShape(head_dim=256), TileConfig(block_m=128, block_n=128, num_warps=8, num_stages=2))


def test_overlap_flag_reaches_the_main_kernel():
    main = by_name(backward(H100, AttentionShape(q_len=1024), BWD, overlap=True))["flash2_bwd"]
    assert main.softmax_overlaps_mma


@given(n=st.integers(1, 4000), kv_extra=st.integers(0, 600), d=st.sampled_from([32, 64, 128]),
       heads=st.sampled_from([(4, 4), (8, 2), (8, 1)]), batch=st.integers(1, 3), causal=st.booleans(),
       window=st.one_of(st.none(), st.integers(1, 3000)), dtype=st.sampled_from(["fp16", "bf16", "fp32"]))
def test_every_shape_moves_at_least_the_compulsory_bytes(n, kv_extra, d, heads, batch, causal, window, dtype):
    shape = AttentionShape(batch=batch, q_heads=heads[0], kv_heads=heads[1], q_len=n, kv_len=n + kv_extra,
                           head_dim=d, dtype=dtype, causal=causal, window=window)
    tiles = TileConfig(block_m=64, block_n=64, num_warps=4, num_stages=2)
    ks = backward(H100, shape, tiles)
    e, kv_e = shape.element_bytes, shape.kv_element_bytes
    q = batch * heads[0] * n * d
    kv = batch * heads[1] * shape.kv_len * d
    for tensor, least in (("Q", q * e), ("dO", q * e), ("O", q * e)):
        assert summed(ks, tensor, "hbm_read") >= least, tensor
    assert summed(ks, "K", "hbm_read") >= batch * heads[1] * keys_touched(shape) * d * kv_e
    for tensor, least in (("dQ", q * e), ("dK", kv * e), ("dV", kv * e)):
        assert summed(ks, tensor, "hbm_write") == least, tensor
    for k in ks:
        for t, traffic in k.traffic.items():
            assert traffic.l2_read >= traffic.hbm_read or t == "dQ accumulator", (k.name, t)
        kernel_time(H100, H100.ceilings(), k)
    main = by_name(ks)["flash2_bwd"]
    acc = main.traffic["dQ accumulator"]
    assert acc.hbm_read <= acc.l2_write  # never more lines fetched than atomics sent
