import pytest

from memsim import AttentionShape, TileConfig
from memsim.algorithms import flash2, lightning, linear
from memsim.errors import MemsimError
from memsim.hardware import load_gpu
from memsim.roofline import kernel_time

H100 = load_gpu("H100-SXM5-80GB")


def shape_of(n: int, **kw) -> AttentionShape:
    return AttentionShape(**{"batch": 2, "q_heads": 16, "kv_heads": 4, "q_len": n, "head_dim": 128,
                             "causal": True, **kw})


def test_bytes_are_qkv_read_once_and_o_written_once():
    shape = shape_of(8192)
    cost = lightning.forward(H100, shape, lightning.default_tiles(H100, shape))
    q = o = 2 * 16 * 8192 * 128 * 2
    kv = 2 * 2 * 4 * 8192 * 128 * 2
    decay = 16 * 4  # one fp32 rate per head
    print(f"HBM read {cost.total.hbm_read / 1e6:.3f} MB = Q+K+V {(q + kv) / 1e6:.3f} MB + {decay} B of decay rates; "
          f"write {cost.total.hbm_write / 1e6:.3f} MB = O")
    assert cost.total.hbm_read == q + kv + decay
    assert cost.total.hbm_write == o


def test_default_is_the_matched_kernel_layout():
    """BLOCK = 64 rows, value columns per CTA min(next_pow2(d), 64) as kernels/lightning.py: d = 128 -> 2 CTAs per head."""
    tiles = lightning.default_tiles(H100, shape_of(4096))
    assert (tiles.block_m, tiles.num_splits) == (64, 2)
    assert lightning.default_splits(64) == 1 and lightning.default_splits(80) == 2 and lightning.default_splits(16) == 1


def test_flops_split_into_intra_inter_and_decay_work():
    b, h, n, d, c, s = 1, 2, 2048, 128, 64, 4
    w = d // s
    shape = AttentionShape(batch=b, q_heads=h, q_len=n, head_dim=d, causal=True)
    cost = lightning.forward(H100, shape, TileConfig(block_m=c, num_splits=s))
    grid, chunks = b * h * s, n // c
    intra = grid * chunks * (2 * c * c * d + 2 * c * c * w)  # (Q K^T * M) V, Q K^T recomputed per value split
    inter = grid * chunks * (2 * c * d * w + 2 * c * d * w)  # Lambda Q KV, and the KV update
    per_block = c * c + 2 * c * w + c * d + d * w  # x M, x Lambda, intra + inter, K x lambda^(B-j), KV x lambda^B
    once = 3 * c * c + 4 * c + 2  # build M (mul, select, exp), Lambda, lambda^(B-j), lambda^B
    print(f"tensor intra {intra:.4g} + inter {inter:.4g} = {intra + inter:.4g} (model {cost.tensor_flops:.4g}); "
          f"CUDA {grid} x ({chunks} x {per_block} + {once}) = {grid * (chunks * per_block + once):.4g}; "
          f"SFU {grid} x ({c}^2 + 2*{c} + 1) = {grid * (c * c + 2 * c + 1)}")
    assert cost.tensor_flops == intra + inter
    assert cost.cuda_ops == grid * (chunks * per_block + once)
    assert cost.exp_ops == grid * (c * c + 2 * c + 1)
    # one value split: the paper's per-block cost, 4 B^2 d intra + 4 B d^2 inter and update
    one = lightning.forward(H100, shape, TileConfig(block_m=c, num_splits=1))
    assert one.tensor_flops == b * h * chunks * (4 * c * c * d + 4 * c * d * d)


def test_without_decay_only_the_mask():
    shape = AttentionShape(batch=1, q_heads=2, q_len=1024, head_dim=64, causal=True)
    tiles = TileConfig(block_m=64, num_splits=2)
    plain = lightning.forward(H100, shape, tiles, decay=False)
    assert plain.exp_ops == 0
    assert plain.cuda_ops == 2 * 2 * 16 * (64 * 64 + 64 * 32)
    assert "decay" not in plain.traffic
    assert lightning.ALGORITHM_NO_DECAY.kernels(H100, shape, tiles, "fwd")[0].cuda_ops == plain.cuda_ops


def test_hbm_bytes_linear_in_n_while_flash2_flops_quadratic():
    sizes = [4096, 8192, 16384]
    light = [lightning.forward(H100, shape_of(n), lightning.default_tiles(H100, shape_of(n))) for n in sizes]
    fa = [flash2.forward(H100, shape_of(n), flash2.default_tiles(H100, shape_of(n))) for n in sizes]
    hbm = [k.total.hbm_read + k.total.hbm_write for k in light]
    print(f"lightning HBM MB {[round(x / 1e6, 1) for x in hbm]}, "
          f"GFLOP {[round(k.tensor_flops / 1e9, 1) for k in light]}; "
          f"flash2 GFLOP {[round(k.tensor_flops / 1e9, 1) for k in fa]}")
    assert hbm[2] - hbm[1] == pytest.approx(2 * (hbm[1] - hbm[0]))
    assert light[2].tensor_flops == pytest.approx(2 * light[1].tensor_flops)
    assert fa[2].tensor_flops / fa[1].tensor_flops == pytest.approx(4, rel=0.02)
    assert light[2].tensor_flops < fa[2].tensor_flops


def test_same_scan_as_linear_without_feature_map():
    shape = shape_of(4096)
    tiles = TileConfig(block_m=64, num_splits=1)
    light = lightning.forward(H100, shape, tiles, decay=False)
    (lin,) = linear.kernels(H100, shape, tiles, "fwd")
    assert light.tensor_flops == lin.tensor_flops
    assert light.traffic["K"] == lin.traffic["K"] and light.traffic["O"] == lin.traffic["O"]
    assert light.cuda_ops < lin.cuda_ops  # no phi, no normaliser


def test_latency_and_sram():
    shape = shape_of(32768)
    cost = lightning.forward(H100, shape, lightning.default_tiles(H100, shape))
    assert cost.smem_buffers["state S"] == 128 * 64 * 4  # d x value columns, fp32
    t = kernel_time(H100, H100.ceilings(), cost)
    assert t.latency_s > 0


@pytest.mark.parametrize("shape, words", [
    (AttentionShape(q_len=4096), ["causal", "linear"]),
    (AttentionShape(q_len=8, kv_len=4096, causal=True), ["q_len = 8", "kv_len = 4096"]),
])
def test_bad_input_is_one_line_error(shape, words):
    with pytest.raises(MemsimError) as err:
        lightning.default_tiles(H100, shape)
    assert all(w in str(err.value) for w in words) and "\n" not in str(err.value)
