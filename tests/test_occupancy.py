import pytest

from memsim.errors import MemsimError
from memsim.hardware import load_gpu
from memsim.occupancy import occupancy

H100 = load_gpu("H100-SXM5-80GB")


def test_flash2_tile_on_h100_two_ctas_per_sm():
    # Q 128x128 bf16 (32 KiB) + 2 stages of K and V 64x128 (64 KiB) = 96 KiB per CTA.
    # 233472 B per SM / (98304 + 1024 reserved) = 2 CTAs; 255 registers x 128 threads also allow 2.
    occ = occupancy(H100, 98304, warps=4, registers_per_thread=255, grid_ctas=32 * 16)
    print(f"FA2 128x64 d=128 on H100: {occ.ctas_per_sm} CTAs/SM limited by {occ.limiter}, {occ.waves} waves")
    assert occ.ctas_per_sm == 2
    assert occ.slots == 264
    assert occ.waves == 2  # 512 CTAs over 264 slots


def test_register_limit():
    # 128 registers x 256 threads = 32768 per CTA -> 2 CTAs in 65536 registers.
    occ = occupancy(H100, 1024, warps=8, registers_per_thread=128, grid_ctas=1)
    assert (occ.ctas_per_sm, occ.limiter) == (2, "registers")


def test_warp_and_cta_limits():
    assert occupancy(H100, 0, warps=16, registers_per_thread=16, grid_ctas=1).limiter == "warps"
    occ = occupancy(H100, 0, warps=1, registers_per_thread=16, grid_ctas=1)
    assert (occ.ctas_per_sm, occ.limiter) == (32, "ctas")


def test_tile_that_does_not_fit_names_sizes():
    with pytest.raises(MemsimError, match="needs 300000 B of shared memory per CTA, more than the 232448 B"):
        occupancy(H100, 300000, warps=4, registers_per_thread=64, grid_ctas=1)


def test_wave_tail_counts_ctas_per_sm_not_slots():
    from memsim.roofline import wave_tail
    assert wave_tail(112, 132) == pytest.approx(132 / 112)  # one CTA per SM, 20 SMs idle
    assert wave_tail(528, 132) == 1.0
    assert wave_tail(529, 132) == pytest.approx(5 * 132 / 529)
