import numpy as np

from memsim.l2_reuse import shared_hbm_reads, waves_spanned


def test_waves_spanned_counts_group_boundaries():
    # 3 groups of 4 CTAs over 5 slots: ids 0-3 | 4-7 | 8-11 -> waves {0}, {0,1}, {1,2}
    assert waves_spanned(3, 4, 5).tolist() == [1, 2, 2]


def test_everything_fits_in_l2_means_read_once():
    assert shared_hbm_reads(groups=16, ctas_per_group=32, slots=264, bytes_per_group=2**21, l2_bytes=50 * 2**20) \
        == 16 * 2**21


def test_too_big_for_l2_means_once_per_wave_spanned():
    groups, per_group, slots = 64, 1024, 264
    expected = waves_spanned(groups, per_group, slots).sum() * 64e6
    assert shared_hbm_reads(groups, per_group, slots, 64e6, 50 * 2**20) == expected
    assert expected > groups * 64e6  # long sequences re-read K/V from HBM


def test_never_more_than_every_cta_reading_from_hbm():
    for groups, per, slots in [(7, 3, 2), (100, 1, 132), (5, 1000, 264)]:
        assert np.all(waves_spanned(groups, per, slots) <= per)
