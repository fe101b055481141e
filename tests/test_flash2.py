import pytest

from memsim import AttentionShape, TileConfig, predict
from memsim.algorithms.flash2 import forward
from memsim.errors import MemsimError
from memsim.hardware import load_gpu

from checks import fully_associative

H100 = load_gpu("H100-SXM5-80GB")


def test_design_md_h100_measurement():
    """DESIGN.md: PyTorch FA2, bf16, B=1 H=16 N=4096 d=128, tiles 128x64: HBM read 52 MB measured (Q+K+V once)."""
    shape = AttentionShape(batch=1, q_heads=16, q_len=4096, head_dim=128)
    cost = forward(H100, shape, TileConfig(block_m=128, block_n=64, num_stages=1))
    qkv_bytes = 3 * 16 * 4096 * 128 * 2
    print(f"predicted HBM read {cost.total.hbm_read / 1e6:.1f} MB, measured 52 MB; "
          f"L2->SM {cost.total.l2_read / 1e6:.0f} MB, measured 877 MB")
    assert cost.total.hbm_read == qkv_bytes
    assert abs(cost.total.hbm_read - 52e6) / 52e6 < 0.05
    assert cost.smem_bytes_per_cta == 64 * 1024  # DESIGN.md: 64 KiB of shared memory per CTA
    assert cost.grid_ctas == 32 * 16


def test_l2_reads_are_q_once_plus_kv_per_q_block():
    n, d, h = 1024, 64, 4
    shape = AttentionShape(q_heads=h, q_len=n, head_dim=d, dtype="fp16")
    cost = forward(H100, shape, TileConfig(block_m=128, block_n=128))
    t_r = n // 128
    assert cost.traffic["Q"].l2_read == h * n * d * 2
    assert cost.traffic["K"].l2_read == h * t_r * n * d * 2
    assert cost.tensor_flops == 4 * h * n * n * d


def test_causal_loads_about_half_the_tiles():
    full = forward(H100, AttentionShape(q_len=8192), TileConfig(block_m=128, block_n=64))
    causal = forward(H100, AttentionShape(q_len=8192, causal=True), TileConfig(block_m=128, block_n=64))
    ratio = causal.tensor_flops / full.tensor_flops
    assert 0.5 < ratio < 0.52


def test_gqa_cuts_hbm_kv_but_not_l2_kv():
    mha = forward(H100, AttentionShape(q_heads=32, q_len=2048), TileConfig())
    gqa = forward(H100, AttentionShape(q_heads=32, kv_heads=4, q_len=2048), TileConfig())
    assert gqa.traffic["K"].hbm_read == mha.traffic["K"].hbm_read / 8
    assert gqa.traffic["K"].l2_read == mha.traffic["K"].l2_read


def test_long_sequence_rereads_kv_from_hbm():
    """K/V of one head at N=128K is 64 MiB, more than the 50 MiB L2: each wave re-reads it."""
    shape = AttentionShape(q_heads=8, q_len=131072)
    cost = forward(H100, shape, TileConfig())
    kv_once = 8 * 131072 * 128 * 2
    assert cost.traffic["K"].hbm_read > 2 * kv_once
    assert cost.traffic["K"].hbm_read <= cost.traffic["K"].l2_read


def test_predict_is_compute_bound_for_long_prefill_and_memory_or_latency_bound_for_decode():
    assert predict("flash2", AttentionShape(batch=4, q_len=8192), H100).bound == "compute"
    decode = predict("flash2", AttentionShape(batch=64, q_len=1, kv_len=8192), H100)
    assert decode.bound in ("memory", "latency")


def test_fp32_runs_on_tf32_tensor_cores():
    assert forward(H100, AttentionShape(dtype="fp32", head_dim=64), TileConfig(block_m=64, block_n=32)).tensor_dtype == "tf32"


@pytest.mark.parametrize("d", [32, 64, 80, 128, 256])
def test_default_tiles_fit_every_head_dim(d):
    p = predict("flash2", AttentionShape(head_dim=d, q_len=1024), H100)
    assert p.as_dict()["sram"]["fits"]


def test_q_reload_reads_a_q_tile_per_key_block_from_l2_not_from_hbm():
    """CUTLASS memory-efficient attention re-reads Q for every key block (TileConfig.q_reload): measured on the
    H100 as K/V plus one Q tile per key block of L2 -> SM bytes, Q still read from HBM once."""
    shape = AttentionShape(batch=1, q_heads=16, q_len=4096, head_dim=128)
    tiles = TileConfig(block_m=64, block_n=128, num_warps=8, num_stages=1, q_reload=True)
    kept = forward(H100, shape, TileConfig(block_m=64, block_n=128, num_warps=8, num_stages=1))
    reloaded = forward(H100, shape, tiles)
    q_bytes = 16 * 4096 * 128 * 2
    assert kept.traffic["Q"].l2_read == q_bytes
    assert reloaded.traffic["Q"].l2_read == q_bytes * 4096 // 128  # one Q tile per key block of 128
    assert reloaded.traffic["Q"].hbm_read == q_bytes
    assert reloaded.total.l2_read == 2.5 * 2**30  # recorded: l1tex__m_xbar2l1tex_read_bytes 2,684,354,560
    des = predict("flash2", shape, fully_associative(H100), tiles=tiles, engine="des")  # Q re-read from L2 alone
    assert des.bytes["l2_read"] == pytest.approx(reloaded.total.l2_read)
    assert des.bytes["hbm_read"] == pytest.approx(reloaded.total.hbm_read, rel=0.01)


def test_q_reload_is_refused_where_the_schedule_keeps_q_on_chip():
    with pytest.raises(MemsimError, match="q_reload applies to flash2.*flash3 keeps Q on chip"):
        predict("flash3", AttentionShape(), tiles=TileConfig(q_reload=True))
    with pytest.raises(MemsimError, match="q_reload = 1 must be true or false"):
        TileConfig(q_reload=1)
