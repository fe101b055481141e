import pytest

from memsim import AttentionShape, TileConfig
from memsim.algorithms import flash_decoding as fd
from memsim.algorithms import paged
from memsim.errors import MemsimError
from memsim.hardware import load_gpu
from memsim.roofline import kernel_time

H100 = load_gpu("H100-SXM5-80GB")


def block_table_entries_read(shape: AttentionShape, tiles: TileConfig) -> int:
    """Counted key by key: the page ids each split's CTA needs, summed over the grid."""
    total_tiles = -(-shape.kv_len // tiles.block_n)
    per = -(-total_tiles // tiles.num_splits)
    entries = 0
    for split in range(tiles.num_splits):
        keys = range(split * per * tiles.block_n, min((split + 1) * per * tiles.block_n, shape.kv_len))
        entries += len({k // tiles.page_size for k in keys})
    return entries * shape.batch * shape.kv_heads


@pytest.mark.parametrize("page_size, block_n, splits",
                         [(16, 128, 5), (16, 128, 1), (256, 128, 7), (256, 128, 9), (128, 128, 3)])
def test_paged_is_flash_decoding_plus_the_block_table(page_size, block_n, splits):
    shape = AttentionShape(batch=3, q_heads=32, kv_heads=8, q_len=1, kv_len=10001)
    tiles = TileConfig(block_m=16, block_n=block_n, num_splits=splits, page_size=page_size)
    flat = fd.kernels(H100, shape, tiles, "fwd")
    pg = paged.kernels(H100, shape, tiles, "fwd")
    assert len(flat) == len(pg)
    for a, b in zip(flat, pg):
        assert {k: v for k, v in b.traffic.items() if k != "block_table"} == dict(a.traffic)
        for field in ("tensor_flops", "cuda_ops", "exp_ops", "grid_ctas"):
            assert getattr(a, field) == getattr(b, field)
    table = pg[0].traffic["block_table"]
    entries = block_table_entries_read(shape, tiles)
    pages = -(-10001 // page_size)
    print(f"page {page_size}, {splits} splits: block table {table.l2_read:.0f} B from L2 "
          f"({entries} entries x 4 B), {table.hbm_read:.0f} B from HBM ({shape.batch} x {pages} pages x 4 B)")
    assert table.l2_read == entries * 4
    assert table.hbm_read == shape.batch * pages * 4


def test_page_waste_is_the_empty_slots_of_the_last_page():
    shape = AttentionShape(batch=2, q_heads=8, kv_heads=8, q_len=1, kv_len=1000, head_dim=128)
    empty, waste_bytes = paged.page_waste(shape, 16)
    expected = 2 * 2 * 8 * 8 * 128 * 2  # K and V, batch, kv heads, 8 empty slots, d, bf16
    print(f"kv_len 1000 in pages of 16: {empty} empty slots per sequence, {waste_bytes:.0f} B wasted")
    assert (empty, waste_bytes) == (1008 - 1000, expected)
    cost = paged.kernels(H100, shape, TileConfig(block_m=16, block_n=128, num_splits=2, page_size=16), "fwd")[0]
    assert any("page waste: 8 of 16 slots" in note for note in cost.notes)
    assert paged.page_waste(AttentionShape(q_len=1, kv_len=1024), 16)[0] == 0


def test_last_partial_page_is_not_loaded():
    shape = AttentionShape(batch=1, q_heads=8, q_len=1, kv_len=1000)
    cost = paged.kernels(H100, shape, TileConfig(block_m=16, block_n=16, num_splits=1, page_size=16), "fwd")[0]
    assert cost.traffic["K"].hbm_read == 8 * 1000 * 128 * 2  # valid tokens, not 63 full pages


def test_compulsory_minimum_bytes():
    shape = AttentionShape(batch=4, q_heads=32, kv_heads=8, q_len=1, kv_len=32768)
    ks = paged.kernels(H100, shape, paged.default_tiles(H100, shape), "fwd")
    assert sum(k.total.hbm_read for k in ks) >= 4 * 32 * 128 * 2 + 2 * 4 * 8 * 32768 * 128 * 2
    assert sum(k.total.hbm_write for k in ks) >= 4 * 32 * 128 * 2
    assert all(kernel_time(H100, H100.ceilings(), k).latency_s > 0 for k in ks)


def test_tiles_and_pages_must_nest():
    with pytest.raises(MemsimError) as err:
        paged.kernels(H100, AttentionShape(q_len=1, kv_len=4096), TileConfig(block_n=128, page_size=48), "fwd")
    assert "page_size = 48" in str(err.value) and "\n" not in str(err.value)


def test_prefill_is_refused():
    with pytest.raises(MemsimError) as err:
        paged.default_tiles(H100, AttentionShape(q_len=512))
    assert "q_len = 512" in str(err.value) and "paged" in str(err.value)
