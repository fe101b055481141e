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


def test_groups_in_flight_decide_not_the_whole_tensor():
    # 128 heads of 2 MiB K+V (256 MiB in all, 5x the L2), 32 CTAs each on 264 slots:
    # ceil(264 / 32) + 1 = 10 heads in flight = 20 MiB, which fits: each head's data comes once.
    assert shared_hbm_reads(128, 32, 264, 2**20, 50 * 2**20, working_set_per_group=2**21) == 128 * 2**20
    # The working set decides: at 8 MiB per head, 10 heads (80 MiB) do not fit.
    assert shared_hbm_reads(128, 32, 264, 2**20, 50 * 2**20, working_set_per_group=2**23) > 128 * 2**20


def test_capped_by_what_the_ctas_read():
    assert shared_hbm_reads(64, 1024, 264, 64e6, 50 * 2**20, l2_read_bytes=1e6) == 1e6


def test_never_more_than_every_cta_reading_from_hbm():
    for groups, per, slots in [(7, 3, 2), (100, 1, 132), (5, 1000, 264)]:
        assert np.all(waves_spanned(groups, per, slots) <= per)
