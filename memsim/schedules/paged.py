"""PagedAttention decode as a schedule: Flash-Decoding's CTAs (memsim.schedules.flash_decoding) with the
K/V tiles gathered page by page through the block table.

Where data lives: each page of `page_size` tokens sits somewhere of its own in HBM. The engine
sees that only through names: a page is its own tile, (K or V, (batch, kv_head), page), its index
the page's slot in the sequence's block table (taken as the logical page number). Where a page is
longer than BLOCK_N, each BLOCK_N part of it is a tile (index: that part's number), so a tile never
straddles a page. The last page of a sequence is partly filled: only its valid tokens are loaded.

Block table: one int32 page id per page, one row per sequence (region = the batch index). With each
key tile a CTA loads the entries of the pages it starts (FlashAttention-2's paged kernel reads
block_table inside its key loop the same way), named by the first of them: a page cut by a split
boundary is read by both splits, and both name the same entry, so it comes from HBM once.
"""

from memsim.algorithms import paged
from memsim.schedules import flash_decoding as fd_sched
from memsim.schedules.steps import Launch, Load
from memsim.workload.shape import AttentionShape
from memsim.workload.tiles import TileConfig


def page_tiles(shape: AttentionShape, tiles: TileConfig) -> fd_sched.TileLoads:
    page, chunk = tiles.page_size, min(tiles.page_size, tiles.block_n)
    row_bytes = shape.head_dim * shape.kv_element_bytes

    def loads(batch: int, kv_head: int, lo: int, hi: int, first_of_cta: bool) -> tuple[Load, ...]:
        table = ()
        if first_of_cta or lo % page == 0:  # the tile starts a page (or the CTA starts inside one)
            first_page = lo // page
            entries = -(-hi // page) - first_page
            table = (Load("block_table", batch, first_page, entries * paged.PAGE_ID_BYTES),)
        starts = range(lo, hi, chunk)
        k = tuple(Load("K", (batch, kv_head), c // chunk, (min(c + chunk, hi) - c) * row_bytes) for c in starts)
        v = tuple(Load("V", (batch, kv_head), c // chunk, (min(c + chunk, hi) - c) * row_bytes) for c in starts)
        return table + k + v

    return loads


def forward(shape: AttentionShape, tiles: TileConfig) -> list[Launch]:
    paged.check_decode(shape)
    paged.check_pages(tiles)
    launches = [fd_sched.split_launch(shape, tiles, name="paged_split", tile_loads=page_tiles(shape, tiles))]
    if tiles.num_splits > 1:
        launches.append(fd_sched.combine_launch(shape, tiles, name="paged_combine"))
    return launches
