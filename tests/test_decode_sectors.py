"""A decode CTA's per-row LSE is a few bytes, but L2 takes stores in 32-byte sectors: memsim counts the sectors
(memsim.sectors.sector_bytes), in both engines, as ncu's SM -> L2 sectors showed on our kernels
(validation/ACCURACY.md: 224 split CTAs of one row each wrote 224 x 32 bytes of partial LSE)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memsim import AttentionShape, TileConfig, predict
from memsim.sectors import SECTOR_BYTES, sector_bytes


@given(st.integers(0, 500), st.integers(0, 70), st.integers(1, 40), st.sampled_from([1, 2, 4, 8]))
def test_sector_bytes_counts_the_distinct_sectors_byte_by_byte(first, count, stride, element_bytes):
    touched = {byte // SECTOR_BYTES for k in range(count)
               for byte in range((first + k * stride) * element_bytes, (first + k * stride + 1) * element_bytes)}
    assert sector_bytes(first, count, stride, element_bytes) == len(touched) * SECTOR_BYTES


@pytest.mark.parametrize("engine", ["analytic", "des"])
def test_each_split_ctas_lse_takes_a_sector(engine):
    """B=1, H=32 (MHA), N=4096, d=128, 7 splits: 224 split CTAs of one row each write 4 bytes of partial LSE at
    7 x 4 bytes apart (layout [B, H, Nq, S]): a sector each, 7168 bytes, as ncu counted on our kernel; the combine's
    4-row CTAs write their 16 bytes of LSE in one sector each."""
    shape = AttentionShape(q_heads=32, q_len=1, kv_len=4096)
    result = predict("flash_decoding", shape, tiles=TileConfig(block_m=16, block_n=128, num_splits=7), engine=engine)
    split, combine = result.kernels
    assert split.bytes_by_tensor["LSE_partial"]["l2_write"] == 224 * SECTOR_BYTES
    assert combine.bytes_by_tensor["LSE"]["l2_write"] == 32 // 4 * SECTOR_BYTES


@pytest.mark.parametrize("engine", ["analytic", "des"])
def test_a_gqa_groups_rows_share_sectors_as_their_layout_packs_them(engine):
    """GQA, 4 q heads per kv head: a split CTA's 4 rows lie 2 x 4 bytes apart with 2 splits (one sector) and
    4 x 4 bytes apart with 4 (16-byte steps over 64 bytes: two sectors)."""
    shape = AttentionShape(batch=2, q_heads=8, kv_heads=2, q_len=1, kv_len=4096)
    for splits, sectors_per_cta in ((2, 1), (4, 2)):
        result = predict("flash_decoding", shape, tiles=TileConfig(block_m=16, block_n=128, num_splits=splits),
                         engine=engine)
        ctas = shape.batch * shape.kv_heads * splits
        assert result.kernels[0].bytes_by_tensor["LSE_partial"]["l2_write"] == ctas * sectors_per_cta * SECTOR_BYTES


@given(st.integers(1, 5), st.sampled_from([(4, 4), (8, 2), (12, 4), (6, 3)]), st.integers(1, 3), st.integers(1, 6))
def test_the_closed_form_counts_every_split_ctas_sectors(batch, heads, q_len, splits):
    """The closed form sums one (batch, kv head) group per place in a sector for all groups: the same as summing
    split_statistic_bytes CTA by CTA."""
    from math import ceil
    from memsim.algorithms.flash_decoding import decode_rows, split_statistic_bytes
    q_heads, kv_heads = heads
    shape = AttentionShape(batch=batch, q_heads=q_heads, kv_heads=kv_heads, q_len=q_len, kv_len=2048)
    tiles = TileConfig(block_m=16, block_n=64, num_splits=splits)
    every = sum(split_statistic_bytes(shape, tiles, b, h, s, m) for b in range(batch) for h in range(kv_heads)
                for s in range(splits) for m in range(ceil(decode_rows(shape) / tiles.block_m)))
    split = predict("flash_decoding", shape, tiles=tiles, engine="analytic").kernels[0]
    assert split.bytes_by_tensor["LSE" if splits == 1 else "LSE_partial"]["l2_write"] == every
