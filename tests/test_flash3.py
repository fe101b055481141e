"""FlashAttention-3: FA2's bytes on Hopper with warp specialisation, GEMM/softmax overlap and FP8."""

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memsim import AttentionShape, TileConfig
from memsim.algorithms import flash2, flash3
from memsim.algorithms.tiling import keys_touched
from memsim.errors import MemsimError
from memsim.hardware import load_gpu
from memsim.roofline import kernel_time

H100 = load_gpu("H100-SXM5-80GB")
TILES = TileConfig(block_m=128, block_n=128, num_warps=8, num_stages=2)


@pytest.mark.parametrize("vendor, architecture", [("NVIDIA", "Ampere (sm_80)"), ("NVIDIA", "Ada Lovelace (sm_89)"),
                                                  ("AMD", "CDNA 3 (gfx942)")])
def test_refuses_gpus_without_wgmma_and_tma(vendor, architecture):
    other = dataclasses.replace(H100, name="other", vendor=vendor, architecture=architecture)
    for call in (lambda: flash3.default_tiles(other, AttentionShape()),
                 lambda: flash3.kernels(other, AttentionShape(), TILES, "fwd")):
        with pytest.raises(MemsimError, match="Hopper") as err:
            call()
        assert "\n" not in str(err.value)


def test_accepts_blackwell():
    blackwell = dataclasses.replace(H100, name="B200", architecture="Blackwell (sm_100)")
    assert flash3.kernels(blackwell, AttentionShape(q_len=1024), TILES, "fwd")


@pytest.mark.parametrize("d, causal, dtype, expected", [
    (128, False, "bf16", (128, 176)), (128, True, "bf16", (128, 128)), (64, False, "bf16", (192, 192)),
    (64, True, "fp16", (192, 128)), (256, False, "bf16", (128, 80)), (128, False, "fp8", (128, 224))])
def test_default_tiles_follow_fa3s_tile_size_table(d, causal, dtype, expected):
    tiles = flash3.default_tiles(H100, AttentionShape(head_dim=d, causal=causal, dtype=dtype))
    assert (tiles.block_m, tiles.block_n) == expected


def test_same_bytes_as_flash2_with_12_warps_and_overlap():
    shape = AttentionShape(q_heads=16, q_len=4096)
    fa3 = flash3.forward(H100, shape, TILES)
    fa2 = flash2.forward(H100, shape, TILES)
    assert fa3.name == "flash3_fwd"
    assert dict(fa3.traffic) == dict(fa2.traffic)
    assert fa3.tensor_flops == fa2.tensor_flops == 4 * 16 * 4096**2 * 128
    assert fa3.softmax_overlaps_mma and not fa2.softmax_overlaps_mma
    assert fa3.warps_per_cta == 12  # 2 consumer warpgroups for 128 rows + 1 producer warpgroup
    assert fa3.registers_per_thread == (4 * 24 + 8 * 240) // 12
    assert flash3.warps_per_cta(192) == 16


def test_overlap_makes_fa3_no_slower_than_fa2_on_the_same_bytes():
    shape = AttentionShape(batch=4, q_heads=32, q_len=8192)
    ceilings = H100.ceilings()
    fa3 = kernel_time(H100, ceilings, flash3.forward(H100, shape, TILES))
    fa2 = kernel_time(H100, ceilings, flash2.forward(H100, shape, TILES))
    print(f"\nFA3 {fa3.latency_s * 1e3:.2f} ms ({fa3.critical}), FA2 {fa2.latency_s * 1e3:.2f} ms ({fa2.critical})")
    assert fa3.latency_s < fa2.latency_s


def test_fp8_runs_fp8_tensor_cores_transposes_v_and_writes_bf16_output():
    h, n, d = 8, 2048, 128
    fp8 = flash3.forward(H100, AttentionShape(q_heads=h, q_len=n, head_dim=d, dtype="fp8"), TILES)
    bf16 = flash3.forward(H100, AttentionShape(q_heads=h, q_len=n, head_dim=d), TILES)
    assert fp8.tensor_dtype == "fp8"
    assert fp8.traffic["K"].hbm_read == bf16.traffic["K"].hbm_read / 2
    assert fp8.traffic["O"].hbm_write == h * n * d * 2  # bf16 out
    assert fp8.smem_buffers["V tiles transposed"] == fp8.smem_buffers["V tiles"]


def test_causal_halves_the_tile_work():
    full = flash3.forward(H100, AttentionShape(q_len=8192), TILES)
    causal = flash3.forward(H100, AttentionShape(q_len=8192, causal=True), TILES)
    assert 0.5 < causal.tensor_flops / full.tensor_flops < 0.52


def test_gqa_cuts_hbm_kv_by_the_group_factor_but_not_l2_kv():
    mha = flash3.forward(H100, AttentionShape(q_heads=32, q_len=2048), TILES)
    gqa = flash3.forward(H100, AttentionShape(q_heads=32, kv_heads=4, q_len=2048), TILES)
    assert gqa.traffic["K"].hbm_read == mha.traffic["K"].hbm_read / 8
    assert gqa.traffic["K"].l2_read == mha.traffic["K"].l2_read


def test_backward_uses_fa3s_backward_tiles_with_overlap():
    causal = flash3.kernels(H100, AttentionShape(q_len=4096, causal=True), TILES, "bwd")
    main = next(k for k in causal if k.name == "flash3_bwd")
    assert main.softmax_overlaps_mma and main.warps_per_cta == 12
    assert main.grid_ctas == 32 * (4096 // 128)  # BLOCK_N = 128 keys per CTA
    assert flash3.backward_tiles(AttentionShape(causal=True)).block_m == 64
    assert flash3.backward_tiles(AttentionShape()).block_m == 80
    # 5 matmuls over the causal pairs of 64 x 128 tiles: query block i sees key blocks 0 .. ceil(64 (i + 1) / 128) - 1
    pairs = sum(-(-64 * (i + 1) // 128) for i in range(4096 // 64))
    assert main.tensor_flops == 10 * 32 * 64 * 128 * 128 * pairs


def test_fp8_backward_is_refused():
    with pytest.raises(MemsimError, match="fp8"):
        flash3.kernels(H100, AttentionShape(dtype="fp8"), TILES, "fwd+bwd")


def test_tiles_too_big_for_shared_memory_are_refused():
    with pytest.raises(MemsimError, match="shared memory"):
        flash3.forward(H100, AttentionShape(head_dim=256), TileConfig(block_m=256, block_n=256, num_stages=2))


def test_block_m_not_a_multiple_of_a_warpgroup_is_refused():
    with pytest.raises(MemsimError, match="block_m = 96"):
        flash3.forward(H100, AttentionShape(q_len=1024), TileConfig(block_m=96, block_n=64))


@given(n=st.integers(1, 5000), kv_extra=st.integers(0, 700), d=st.sampled_from([64, 96, 128, 192, 256]),
       heads=st.sampled_from([(4, 4), (8, 2), (16, 1)]), batch=st.integers(1, 4), causal=st.booleans(),
       dtype=st.sampled_from(["fp16", "bf16", "fp8"]))
def test_every_shape_moves_at_least_the_compulsory_bytes(n, kv_extra, d, heads, batch, causal, dtype):
    shape = AttentionShape(batch=batch, q_heads=heads[0], kv_heads=heads[1], q_len=n, kv_len=n + kv_extra,
                           head_dim=d, dtype=dtype, causal=causal)
    ks = flash3.kernels(H100, shape, flash3.default_tiles(H100, shape), "fwd" if dtype == "fp8" else "fwd+bwd")
    fwd = ks[0]
    q = batch * heads[0] * n * d
    assert fwd.traffic["Q"].hbm_read == q * shape.element_bytes
    assert fwd.traffic["O"].hbm_write == q * (2 if dtype == "fp8" else shape.element_bytes)
    assert fwd.traffic["K"].hbm_read >= batch * heads[1] * keys_touched(shape) * d * shape.kv_element_bytes
    for k in ks:
        for t, traffic in k.traffic.items():
            assert traffic.l2_read >= traffic.hbm_read or t == "dQ accumulator", (k.name, t)
        kernel_time(H100, H100.ceilings(), k)


def test_block_m_for_warps_inverts_warps_per_cta_and_refuses_partial_warpgroups():
    for block_m in (64, 128, 192, 256):
        assert flash3.block_m_for_warps(flash3.warps_per_cta(block_m)) == block_m
    for warps in (4, 6, 10):
        with pytest.raises(MemsimError, match=f"{warps} warps"):
            flash3.block_m_for_warps(warps)
