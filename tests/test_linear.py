import pytest

from memsim import AttentionShape, TileConfig
from memsim.algorithms import flash2, linear
from memsim.errors import MemsimError
from memsim.hardware import load_gpu
from memsim.roofline import kernel_time

H100 = load_gpu("H100-SXM5-80GB")


def hbm_bytes(ks) -> float:
    return sum(k.total.hbm_read + k.total.hbm_write for k in ks)


def run(shape: AttentionShape, tiles: TileConfig | None = None):
    return linear.kernels(H100, shape, tiles or linear.default_tiles(H100, shape), "fwd")


@pytest.mark.parametrize("causal", [False, True])
def test_compulsory_minimum_bytes(causal):
    b, hq, hkv, n, d = 2, 16, 4, 4096, 128
    ks = run(AttentionShape(batch=b, q_heads=hq, kv_heads=hkv, q_len=n, head_dim=d, causal=causal))
    q = o = b * hq * n * d * 2
    kv = 2 * b * hkv * n * d * 2
    read = sum(k.total.hbm_read for k in ks)
    write = sum(k.total.hbm_write for k in ks)
    print(f"causal={causal}: HBM read {read / 1e6:.2f} MB >= Q+K+V {(q + kv) / 1e6:.2f} MB, "
          f"write {write / 1e6:.2f} MB >= O {o / 1e6:.2f} MB")
    assert read >= q + kv and write >= o
    if causal:
        assert read == q + kv and write == o  # everything fits in L2: exactly once


def test_non_causal_flops_are_2nd2_for_the_state_and_2nd2_for_the_output():
    b, hq, hkv, n, d = 1, 8, 2, 2048, 64
    shape = AttentionShape(batch=b, q_heads=hq, kv_heads=hkv, q_len=n, head_dim=d)
    zero, state, out = run(shape, TileConfig(block_m=128, block_n=64, num_warps=8, num_splits=4))
    assert zero.name == "linear_state_zero" and zero.tensor_flops == 0  # the buffer the atomics add into
    print(f"state {state.tensor_flops:.4g} = 2*{n}*{d}^2*{b * hkv}; "
          f"output {out.tensor_flops:.4g} = 2*{n}*{d}^2*{b * hq}")
    assert state.tensor_flops == 2 * n * d * d * b * hkv
    assert out.tensor_flops == 2 * n * d * d * b * hq
    # phi(K) 3 ops (1 exp) and the z column sum 1, per element of K
    assert state.exp_ops == b * hkv * n * d
    assert state.cuda_ops == b * hkv * n * d * (linear.PHI_OPS + 1)


def test_causal_chunked_flops_match_the_formula():
    """Per chunk: intra 4 C^2 d, inter Q S 2 C d^2, update K^T V 2 C d^2 (one value split)."""
    b, h, n, d, c = 2, 4, 4096, 128, 64
    shape = AttentionShape(batch=b, q_heads=h, q_len=n, head_dim=d, causal=True)
    (cost,) = run(shape, TileConfig(block_m=c, num_splits=1))
    per_chunk = 4 * c * c * d + 2 * c * d * d + 2 * c * d * d
    expected = b * h * (n // c) * per_chunk
    print(f"causal linear: {b * h} heads x {n // c} chunks x (4*{c}^2*{d} + 4*{c}*{d}^2) = {expected:.4g}, "
          f"model {cost.tensor_flops:.4g}")
    assert cost.tensor_flops == expected
    (split,) = run(shape, TileConfig(block_m=c, num_splits=2))  # each split recomputes Q K^T
    w = d // 2
    assert split.tensor_flops == b * h * 2 * (n // c) * (2 * c * c * d + 2 * c * c * w + 4 * c * d * w)


def test_causal_vector_work_counts_phi_and_normaliser():
    n, d, c = 1024, 64, 64
    shape = AttentionShape(batch=1, q_heads=1, q_len=n, head_dim=d, causal=True)
    (cost,) = run(shape, TileConfig(block_m=c, num_splits=1))
    chunks = n // c
    assert cost.exp_ops == chunks * (2 * c * d + c)  # phi(Q), phi(K), one reciprocal per row
    per_chunk = 2 * c * d * 3 + 2 * c * c + 3 * c * d + 2 * c + 2 * c * d
    assert cost.cuda_ops == chunks * per_chunk


def test_hbm_bytes_linear_in_n_while_flash2_flops_quadratic():
    def shape(n, causal):
        return AttentionShape(batch=1, q_heads=16, kv_heads=4, q_len=n, head_dim=128, causal=causal)

    for causal in (False, True):
        sizes = [2048, 4096, 8192]
        lin = [hbm_bytes(run(shape(n, causal))) for n in sizes]
        fa = [flash2.forward(H100, shape(n, causal), flash2.default_tiles(H100, shape(n, causal))).tensor_flops
              for n in sizes]
        lin_flops = [sum(k.tensor_flops for k in run(shape(n, causal))) for n in sizes]
        print(f"causal={causal}: linear HBM MB {[round(x / 1e6, 2) for x in lin]}, "
              f"linear GFLOP {[round(x / 1e9, 2) for x in lin_flops]}, flash2 GFLOP {[round(x / 1e9, 1) for x in fa]}")
        assert lin[2] - lin[1] == pytest.approx(2 * (lin[1] - lin[0]))  # affine in N
        assert lin_flops[2] == pytest.approx(2 * lin_flops[1], rel=0.01)
        assert fa[2] / fa[1] == pytest.approx(4, rel=0.02)
        assert lin_flops[2] < fa[2]


def test_gqa_reads_kv_from_hbm_once_per_kv_head():
    (cost,) = run(AttentionShape(batch=1, q_heads=32, kv_heads=4, q_len=4096, causal=True))
    once = 4 * 4096 * 128 * 2
    assert cost.traffic["K"].hbm_read == once
    assert cost.traffic["K"].l2_read == cost.grid_ctas * 4096 * 128 * 2  # every q head's CTA streams its K


def test_state_fits_sram_or_is_split():
    """d = 128, C = 64: S is 64 KiB fp32, with Q and two stages of K/V 144 KiB: one CTA per head.
    d = 256: S alone is 256 KiB, more than 227 KiB; a 4-way value split fits."""
    small = linear.default_tiles(H100, AttentionShape(q_len=4096, head_dim=128, causal=True))
    big = linear.default_tiles(H100, AttentionShape(q_len=4096, head_dim=256, causal=True))
    assert small.num_splits == 1
    (cost,) = run(AttentionShape(q_len=4096, head_dim=128, causal=True))
    assert cost.smem_buffers["state S"] == 64 * 1024 and cost.smem_bytes_per_cta == 144 * 1024
    assert big.num_splits == 4
    (cost,) = run(AttentionShape(q_len=4096, head_dim=256, causal=True))
    assert cost.smem_buffers["state S"] == 256 * 64 * 4
    assert cost.smem_bytes_per_cta <= H100.smem_per_block_optin_bytes


def test_latency_is_predicted():
    for causal in (False, True):
        for k in run(AttentionShape(batch=2, q_len=8192, causal=causal)):
            assert kernel_time(H100, H100.ceilings(), k).latency_s > 0


@pytest.mark.parametrize("shape, tiles, words", [
    (AttentionShape(q_len=1024, window=256), None, ["window = 256"]),
    (AttentionShape(q_len=16, kv_len=1024, causal=True), None, ["q_len = 16", "kv_len = 1024"]),
    (AttentionShape(q_len=1024), TileConfig(block_n=64, num_splits=17), ["num_splits = 17", "16 key chunks"]),
    (AttentionShape(q_len=1024, head_dim=64, causal=True), TileConfig(num_splits=128), ["num_splits = 128"]),
    (AttentionShape(q_len=1024, head_dim=256, causal=True), TileConfig(block_m=512, num_stages=4), ["shared memory"]),
])
def test_bad_input_is_one_line_error(shape, tiles, words):
    with pytest.raises(MemsimError) as err:
        if tiles is None:
            run(shape)
        elif tiles.block_m == 512:
            linear.value_splits_to_fit(H100, shape, tiles.block_m, tiles.num_stages)
        else:
            run(shape, tiles)
    message = str(err.value)
    print(message)
    assert all(w in message for w in words) and "\n" not in message
