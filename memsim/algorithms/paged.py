"""PagedAttention decode (Kwon et al. 2023, vLLM): the KV cache lives in pages of
`page_size` tokens scattered through HBM; each sequence's block table (int32 page ids,
one row per sequence) says where its pages are.

The schedule is Flash-Decoding's (memsim.algorithms.flash_decoding): the GQA group of q heads
shares one CTA's Q tile; `num_splits` cuts the keys as vLLM's v2 kernel cuts them into
partitions, combined through their LSEs. On top of it each CTA reads the block-table
entries of the pages its keys lie in, and gathers K/V tiles page by page. A BLOCK_N tile
and a page must nest (one a multiple of the other), so tiles never straddle a page edge.

Bytes of K/V: the valid tokens of every page touched. The last page of a sequence is
partly empty; the kernel masks its unused slots and never loads them, so K/V bytes equal
Flash-Decoding's over a contiguous cache. The empty slots are memory allocated but
unused (vLLM's only waste, section 4.2 of the paper): reported in the kernel notes.
"""

import dataclasses
from math import ceil

import numpy as np

from memsim.algorithms import flash_decoding as fd
from memsim.algorithms.base import Algorithm, require_forward
from memsim.errors import MemsimError
from memsim.hardware.spec import GPUSpec
from memsim.kernel import KernelCost, Traffic
from memsim.l2_reuse import shared_hbm_reads
from memsim.occupancy import occupancy
from memsim.workload.shape import AttentionShape
from memsim.workload.tiles import TileConfig

PAGE_ID_BYTES = 4  # int32 page ids (vLLM block_tables tensor, torch.int32)
DEFAULT_PAGE_SIZE = 16  # vLLM's default KV-cache block size, in tokens

ASSUMPTIONS = fd.ASSUMPTIONS + (
    "K/V bytes: only the valid tokens of each page touched; the last page's empty slots are never loaded",
    "each CTA reads the block-table entries of its pages from L2; each entry comes from HBM once",
    "block-table bytes counted per entry (4 B), not rounded up to 32-byte sectors",
)


def check_pages(tiles: TileConfig) -> None:
    bn, page = tiles.block_n, tiles.page_size
    if bn % page and page % bn:
        raise MemsimError(
            f"page_size = {page} and block_n = {bn} do not nest: a key tile would straddle a page edge; "
            f"use a page_size that divides block_n or a multiple of it")


def default_tiles(gpu: GPUSpec, shape: AttentionShape) -> TileConfig:
    """Flash-Decoding's tiles and split count, with vLLM's default page of 16 tokens."""
    check_decode(shape)
    return dataclasses.replace(fd.default_tiles(gpu, shape), page_size=DEFAULT_PAGE_SIZE)


def check_decode(shape: AttentionShape) -> None:
    fd.check_decode(shape, "paged")


def pages_per_split(plan: fd.SplitPlan, page_size: int) -> np.ndarray:
    """Pages each split's key range [start, end) lies in (0 for an empty split)."""
    first = plan.key_start // page_size
    last = -(-plan.key_end // page_size)
    return np.where(plan.key_end > plan.key_start, last - first, 0)


def pages_touched(plan: fd.SplitPlan, page_size: int) -> int:
    """Distinct pages of one sequence that some split reads: those under [first key, last key)."""
    start, end = int(plan.key_start[0]), int(plan.key_end.max())
    return -(-end // page_size) - start // page_size if end > start else 0


def page_waste(shape: AttentionShape, page_size: int) -> tuple[int, float]:
    """(empty token slots in each sequence's last page, K+V bytes they hold over the batch)."""
    empty = ceil(shape.kv_len / page_size) * page_size - shape.kv_len
    return empty, 2.0 * shape.batch * shape.kv_heads * empty * shape.head_dim * shape.kv_element_bytes


def block_table_traffic(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig, base: KernelCost,
                        plan: fd.SplitPlan) -> Traffic:
    m_blocks = ceil(fd.decode_rows(shape) / tiles.block_m)
    per_sequence = float(pages_per_split(plan, tiles.page_size).sum()) * shape.kv_heads * m_blocks
    slots = occupancy(gpu, base.smem_bytes_per_cta, base.warps_per_cta, base.registers_per_thread,
                      base.grid_ctas, base.name).slots
    hbm = shared_hbm_reads(shape.batch, shape.kv_heads * m_blocks * tiles.num_splits, slots,
                           pages_touched(plan, tiles.page_size) * PAGE_ID_BYTES, gpu.l2_bytes)
    return Traffic.streamed(read=shape.batch * per_sequence * PAGE_ID_BYTES, hbm_read=float(hbm))


def _page_notes(shape: AttentionShape, tiles: TileConfig, plan: fd.SplitPlan) -> tuple[str, ...]:
    page = tiles.page_size
    empty, waste_bytes = page_waste(shape, page)
    allocated = 2.0 * shape.batch * shape.kv_heads * ceil(shape.kv_len / page) * page * shape.head_dim \
        * shape.kv_element_bytes
    return (
        f"{pages_touched(plan, page)} pages of {page} tokens read per sequence; K/V loaded for valid tokens only",
        f"page waste: {empty} of {page} slots empty in each sequence's last page, {waste_bytes / 1e6:.3f} MB of "
        f"K/V allocated but unused ({waste_bytes / allocated:.2%} of the cache)",
    )


def split_kernel(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig) -> KernelCost:
    check_decode(shape)
    check_pages(tiles)
    base = fd.split_kernel(gpu, shape, tiles, name="paged_split")
    plan = fd.split_plan(shape, tiles)
    traffic = {"block_table": block_table_traffic(gpu, shape, tiles, base, plan), **base.traffic}
    return dataclasses.replace(base, traffic=traffic, notes=base.notes + _page_notes(shape, tiles, plan))


def kernels(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig, pass_: str) -> list[KernelCost]:
    require_forward(pass_, "paged")
    out = [split_kernel(gpu, shape, tiles)]
    if tiles.num_splits > 1:
        out.append(fd.combine_kernel(gpu, shape, tiles, name="paged_combine"))
    return out


def schedule(shape: AttentionShape, tiles: TileConfig, pass_: str) -> list:
    from memsim.schedules import paged as sched
    require_forward(pass_, "paged")
    return sched.forward(shape, tiles)


ALGORITHM = Algorithm(
    name="paged",
    summary="PagedAttention decode: K/V in pages found through a block table, optional split partitions",
    passes=("fwd",),
    default_tiles=default_tiles,
    kernels=kernels,
    assumptions=ASSUMPTIONS,
    decode_only=True,
    schedule=schedule,
)
