"""PagedAttention's discrete-event schedule: Flash-Decoding's reads plus the block table, page by page."""

import pytest
from hypothesis import given, settings, strategies as st

from memsim import AttentionShape, TileConfig
from memsim.algorithms import flash_decoding as fd
from memsim.algorithms import paged
from memsim.engine import simulate
from memsim.errors import MemsimError
from memsim.hardware import load_gpu
from memsim.schedules import flash_decoding as fd_sched
from memsim.schedules import paged as sched

from checks import (fully_associative, assert_fast_matches_faithful, assert_same_bytes_per_tensor, assert_same_kernels,
                    assert_same_total_bytes, assert_same_work)

H100 = load_gpu("H100-SXM5-80GB")
CEILINGS = fully_associative(H100).ceilings()  # the closed form's L2: nothing lost to its sets
SHAPE = AttentionShape(batch=2, q_heads=32, kv_heads=4, q_len=1, kv_len=5001)  # K+V 20.5 MB: fits in L2

# (page_size, block_n, num_splits): pages inside tiles, one split, pages across tiles with split
# boundaries inside pages (256-token pages, 128-key tiles, splits of 5 tiles), page == tile
PAGINGS = [(16, 128, 5), (16, 128, 1), (256, 128, 8), (128, 128, 3)]


def run(schedule, shape: AttentionShape, tiles: TileConfig, fast: bool = True) -> list:
    return simulate(H100, CEILINGS, schedule.forward(shape, tiles), fast=fast)


@pytest.mark.parametrize("page_size, block_n, splits", PAGINGS)
def test_paged_reads_are_flash_decodings_plus_the_block_table(page_size, block_n, splits):
    tiles = TileConfig(block_m=16, block_n=block_n, num_splits=splits, page_size=page_size)
    flat, pages = run(fd_sched, SHAPE, tiles), run(sched, SHAPE, tiles)
    costs = paged.kernels(H100, SHAPE, tiles, "fwd")
    table = costs[0].traffic["block_table"]
    for a, b in zip(flat, pages, strict=True):
        tensors = a.counters.by_tensor()
        assert {k: v for k, v in b.counters.by_tensor().items() if k != "block_table"} == tensors
        assert b.counters.tensor_flops == a.counters.tensor_flops and b.counters.cuda_ops == a.counters.cuda_ops
    got = pages[0].counters.by_tensor()["block_table"]
    entries = 2 * -(-5001 // page_size)  # the batch's pages, 4 B each
    print(f"pages of {page_size}, {splits} splits: block table {got['l2_read']:.0f} B from L2 "
          f"(closed form {table.l2_read:.0f}), {got['hbm_read']:.0f} B from HBM ({entries} entries x 4 B)")
    assert got["l2_read"] == table.l2_read
    assert got["hbm_read"] == table.hbm_read == entries * paged.PAGE_ID_BYTES


@pytest.mark.parametrize("page_size, block_n, splits", PAGINGS)
def test_work_and_bytes_equal_the_closed_form(page_size, block_n, splits):
    tiles = TileConfig(block_m=16, block_n=block_n, num_splits=splits, page_size=page_size)
    costs = paged.kernels(H100, SHAPE, tiles, "fwd")
    results = run(sched, SHAPE, tiles)
    assert_same_kernels(costs, results)
    for cost, result in zip(costs, results):
        assert_same_work(cost, result.counters, rel=1e-12)
        assert_same_bytes_per_tensor(cost, result.counters, ("l2_read", "l2_write", "hbm_read"), rel=1e-12)
        assert_same_total_bytes(cost, result.counters, ("hbm_write",), rel=1e-12)


def test_last_page_is_loaded_for_its_valid_tokens_only():
    """kv_len 1000 in pages of 16: 62 full pages and one of 8 tokens; the last tile loads 8 tokens of it."""
    shape = AttentionShape(q_heads=8, kv_heads=8, q_len=1, kv_len=1000)
    tiles = TileConfig(block_m=16, block_n=128, num_splits=1, page_size=16)
    launch = sched.forward(shape, tiles)[0]
    program = launch.program(0)
    last = program.loop.loads(program.loop.iterations - 1)
    k_pages = [load for load in last if load.tensor == "K"]
    print([(load.index, load.bytes) for load in k_pages])
    assert [load.index for load in k_pages] == list(range(56, 63))
    assert k_pages[-1].bytes == 8 * 128 * 2 and all(load.bytes == 16 * 128 * 2 for load in k_pages[:-1])
    table = [load for load in last if load.tensor == "block_table"]
    assert [(load.index, load.bytes) for load in table] == [(56, 7 * 4)]
    k = simulate(H100, CEILINGS, [launch])[0].counters.hbm_read["K"]
    assert k == 8 * 1000 * 128 * 2


def test_block_table_entry_is_refetched_only_after_eviction():
    """A page cut by a split boundary is read by both splits. When 123 MB of K/V stream through the
    50 MiB L2 between the two reads, LRU may evict the entry: HBM reads then exceed the closed form's
    once-per-entry, but never the L2 reads."""
    shape = AttentionShape(batch=3, q_heads=32, kv_heads=8, q_len=1, kv_len=10001)
    tiles = TileConfig(block_m=16, block_n=128, num_splits=9, page_size=256)
    table = run(sched, shape, tiles)[0].counters.by_tensor()["block_table"]
    cost = paged.kernels(H100, shape, tiles, "fwd")[0].traffic["block_table"]
    print(f"block table from HBM {table['hbm_read']:.0f} B (closed form {cost.hbm_read:.0f} B), "
          f"from L2 {table['l2_read']:.0f} B")
    assert cost.hbm_read <= table["hbm_read"] <= table["l2_read"] == cost.l2_read


@settings(max_examples=8, deadline=None)
@given(batch=st.integers(1, 2), kv_heads=st.sampled_from([1, 2, 4]), group=st.sampled_from([1, 8]),
       kv_len=st.integers(16, 12000), paging=st.sampled_from([(16, 64), (32, 32), (128, 32), (64, 64)]),
       splits=st.integers(1, 5), stages=st.integers(1, 3), kv_dtype=st.sampled_from(["fp16", "int8"]))
def test_fast_mode_agrees_with_faithful_mode(batch, kv_heads, group, kv_len, paging, splits, stages, kv_dtype):
    page_size, block_n = paging
    shape = AttentionShape(batch=batch, q_heads=kv_heads * group, kv_heads=kv_heads, q_len=1, kv_len=kv_len,
                           dtype="fp16", kv_dtype=kv_dtype)
    tiles = TileConfig(block_m=16, block_n=block_n, num_stages=stages, page_size=page_size,
                       num_splits=min(splits, fd.key_tiles(shape, block_n)))
    for fast, faithful in zip(run(sched, shape, tiles, True), run(sched, shape, tiles, False), strict=True):
        assert_fast_matches_faithful(fast, faithful, abs_bytes=1.0)


def test_pages_that_do_not_nest_with_tiles_are_refused():
    with pytest.raises(MemsimError) as err:
        sched.forward(AttentionShape(q_len=1, kv_len=4096), TileConfig(block_n=128, page_size=48))
    assert "page_size = 48" in str(err.value) and "\n" not in str(err.value)
