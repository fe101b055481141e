"""The FlashAttention paper's block-size rule and HBM-access counts (Dao et al. 2022, Algorithms 0
and 1, Theorem 2), and memsim's models of standard attention and FlashAttention-1 checked against them."""

from math import ceil

import pytest

from memsim import AttentionShape
from memsim.algorithms import flash1, standard
from memsim.algorithms.paper import (flash_hbm_accesses, paper_block_sizes, paper_tiles,
                                     standard_hbm_accesses)
from memsim.errors import MemsimError
from memsim.hardware import load_gpu
from memsim.workload import TileConfig

H100 = load_gpu("H100-SXM5-80GB")
FP32_BYTES = 4  # with fp32 inputs every tensor, scratch and statistic is 4 bytes: elements = bytes / 4


def l2_elements(kernels) -> float:
    """Elements moved between the SMs and L2 (the paper's "HBM accesses") by fp32 kernels."""
    return sum(k.total.l2_read + k.total.l2_write for k in kernels) / FP32_BYTES


def test_worked_example_a100_d64_n1024():
    """A100: 192 KiB of SRAM per SM holds M = 98304 fp16 elements; d = 64, N = 1024."""
    m = 192 * 1024 // 2
    b = paper_block_sizes(m, 64, 1024)
    standard_count = standard_hbm_accesses(1024, 64)
    flash_count = flash_hbm_accesses(1024, 64, m)
    print(f"\nM = {m} elements, d = 64, N = 1024: B_c = {b['block_n']}, B_r = {b['block_m']}, "
          f"T_r = {b['t_r']}, T_c = {b['t_c']}")
    print(f"standard attention {standard_count} accesses, FlashAttention {flash_count}, "
          f"ratio {standard_count / flash_count:.2f}")
    assert b == {"block_n": 384, "block_m": 64, "t_r": 16, "t_c": 3}
    assert standard_count == 4 * 1024 * 64 + 4 * 1024**2 == 4_456_448
    # 3 N d + 2 N + T_c (3 N d + 4 N) with T_c = 3
    assert flash_count == 3 * 65536 + 2048 + 3 * (3 * 65536 + 4096) == 800_768
    assert standard_count / flash_count == pytest.approx(5.565, abs=1e-3)


def test_block_rule_small_sram_caps_nothing_and_b_r_never_exceeds_d():
    assert paper_block_sizes(1000, 128, 500) == {"block_n": 2, "block_m": 2, "t_r": 250, "t_c": 250}
    b = paper_block_sizes(10**6, 32, 4096)
    assert b["block_m"] == 32 and b["block_n"] == ceil(10**6 / 128)


@pytest.mark.parametrize("bad", [0, -4, 2.5, True])
def test_block_rule_refuses_nonsense(bad):
    with pytest.raises(MemsimError, match="sram_elements"):
        paper_block_sizes(bad, 64, 1024)


@pytest.mark.parametrize("n, d, m", [(1024, 64, 16384), (1000, 64, 16384), (2048, 32, 8192), (777, 16, 4096)])
def test_flash1_model_moves_exactly_algorithm_1s_accesses(n, d, m):
    shape = AttentionShape(batch=1, q_heads=1, q_len=n, head_dim=d, dtype="fp32")
    tiles = paper_tiles(m, d, n)
    model = l2_elements(flash1.kernels(H100, shape, tiles, "fwd"))
    paper = flash_hbm_accesses(n, d, m)
    print(f"\nN={n} d={d} M={m} tiles {tiles.block_m}x{tiles.block_n}: model {model:.0f}, Algorithm 1 {paper}")
    assert model == paper


@pytest.mark.parametrize("n, d, m", [(1024, 64, 16384), (1000, 64, 16384), (2048, 32, 8192), (777, 16, 4096)])
def test_standard_model_moves_exactly_algorithm_0s_accesses(n, d, m):
    shape = AttentionShape(batch=1, q_heads=1, q_len=n, head_dim=d, dtype="fp32")
    b = paper_block_sizes(m, d, n)
    tiles = TileConfig(block_m=b["block_m"], block_n=b["block_n"], num_warps=4, num_stages=1)
    model = l2_elements(standard.kernels(H100, shape, tiles, "fwd"))
    paper = standard_hbm_accesses(n, d, b["block_m"], b["block_n"])
    print(f"\nN={n} d={d} tiles {b['block_m']}x{b['block_n']}: model {model:.0f}, Algorithm 0 {paper}, "
          f"each matrix once {standard_hbm_accesses(n, d)}")
    assert model == paper
    assert paper >= standard_hbm_accesses(n, d)


def test_standard_count_with_one_block_is_each_matrix_once():
    assert standard_hbm_accesses(512, 64, 512, 512) == standard_hbm_accesses(512, 64) == 4 * 512 * 64 + 4 * 512**2


def test_doubling_sram_halves_flash_accesses_when_n_much_larger_than_d():
    """Theorem 2: Theta(N^2 d^2 / M)."""
    n, d = 65536, 64
    for m in (16384, 32768, 65536):
        ratio = flash_hbm_accesses(n, d, 2 * m) / flash_hbm_accesses(n, d, m)
        print(f"\nN={n} d={d}: M {m} -> {2 * m} scales FlashAttention's accesses by {ratio:.4f}")
        assert ratio == pytest.approx(0.5, abs=0.01)
    # T_c (3 N d + 4 N) with T_c = 4 N d / M: 12 N^2 d^2 / M + 16 N^2 d / M, plus the 3 N d + 2 N outside the loop
    m = 16384
    assert flash_hbm_accesses(n, d, m) == pytest.approx(12 * n**2 * d**2 / m + 16 * n**2 * d / m, rel=1e-3)


def test_doubling_sram_halves_the_flash1_models_traffic():
    n, d = 8192, 32
    shape = AttentionShape(batch=1, q_heads=1, q_len=n, head_dim=d, dtype="fp32")
    small = l2_elements(flash1.kernels(H100, shape, paper_tiles(4096, d, n), "fwd"))
    large = l2_elements(flash1.kernels(H100, shape, paper_tiles(8192, d, n), "fwd"))
    print(f"\nflash1 model, N={n} d={d}: M=4096 {small:.0f}, M=8192 {large:.0f} elements, ratio {large / small:.4f}")
    assert large / small == pytest.approx(0.5, abs=0.01)


def test_standard_accesses_grow_as_n_squared():
    for n in (4096, 16384):
        ratio = standard_hbm_accesses(2 * n, 64) / standard_hbm_accesses(n, 64)
        assert ratio == pytest.approx(4.0, abs=0.1)


@pytest.mark.parametrize("n", [2048, 4096, 16384])
def test_flash_moves_fewer_bytes_than_standard_once_n_much_larger_than_d(n):
    d = 64
    assert flash_hbm_accesses(n, d, 192 * 1024 // 2) < standard_hbm_accesses(n, d)
    shape = AttentionShape(batch=1, q_heads=8, q_len=n, head_dim=d, dtype="fp16")
    plain = standard.kernels(H100, shape, standard.default_tiles(H100, shape), "fwd")
    std = sum(k.total.l2_read + k.total.l2_write for k in plain)
    std_hbm = sum(k.total.hbm_read + k.total.hbm_write for k in plain)
    # The paper's rule with all of SRAM (M = 98304) leaves no room for the model's P tile and split-K
    # buffers; M = 32768 elements (B_c = 128, B_r = 64) fits, and so do FA1's own tiles.
    for tiles in (paper_tiles(32768, d, n), flash1.default_tiles(H100, shape)):
        fa1 = flash1.kernels(H100, shape, tiles, "fwd")
        flash = sum(k.total.l2_read + k.total.l2_write for k in fa1)
        flash_hbm = sum(k.total.hbm_read + k.total.hbm_write for k in fa1)
        print(f"\nN={n}, flash1 tiles {tiles.block_m}x{tiles.block_n}: flash1 {flash / 1e6:.1f} MB L2<->SM, "
              f"{flash_hbm / 1e6:.1f} MB HBM; standard {std / 1e6:.1f} MB L2<->SM, {std_hbm / 1e6:.1f} MB HBM")
        assert flash < std
        assert flash_hbm < std_hbm


def test_paper_rule_with_all_of_sram_overflows_the_models_buffers():
    """A100's M = 98304 fp16 elements, d = 64: B_c = 384, B_r = 64; K, V, Q, O fit, P and split-K partials do not."""
    shape = AttentionShape(batch=1, q_heads=1, q_len=4096, head_dim=64, dtype="fp16")
    with pytest.raises(MemsimError, match="shared memory"):
        flash1.kernels(H100, shape, paper_tiles(192 * 1024 // 2, 64, 4096), "fwd")
