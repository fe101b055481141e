"""FlashAttention-2 forward as a schedule: what each CTA loads, computes and stores, in order.

Program id p = q_block + T_r * (batch * q_heads + head), q-block fastest (Triton tutorial
06 and PyTorch's FA2 grid). The Q tile is loaded once and stays on chip (with tiles.q_reload,
once per key block: CUTLASS memory-efficient attention); K and V tiles
of the CTA's (batch, kv head) stream through num_stages buffers, first to last or (tiles.key_order
"descending", FlashAttention-2's CUDA forward) last to first; O and LSE are stored once.
A kernel that spills registers (tiles.spill_bytes_per_cta, _per_iteration) stores them to its CTA's
local-memory slots once at the start and again after each key block's matmuls.
"""

from functools import cache, lru_cache

from memsim.algorithms.softmax import online_softmax
from memsim.algorithms.tiling import q_block_tiles
from memsim.schedules.steps import CtaProgram, Launch, Load, Mma, Store, Stream, Vector, spill_steps, streamed_loop
from memsim.workload.dtypes import ACCUMULATOR_BYTES, tensor_core_dtype
from memsim.workload.shape import AttentionShape
from memsim.workload.tiles import TileConfig
from memsim.algorithms.flash2 import smem_buffers
from memsim.algorithms.base import registers_estimate


PROGRAMS_KEPT = 4096  # programs a launch keeps made at once (memory stays bounded on the longest grids)


def forward(shape: AttentionShape, tiles: TileConfig, name: str = "flash2_fwd", overlap: bool = False) -> Launch:
    bm, bn, d = tiles.block_m, tiles.block_n, shape.head_dim
    blocks = q_block_tiles(shape, bm, bn)
    t_r = blocks.t_r
    dtype = tensor_core_dtype(shape.dtype)
    e, kv_e = shape.element_bytes, shape.kv_element_bytes
    uneven = shape.causal or shape.window is not None or shape.q_len % bm != 0
    matmul = Mma(2.0 * bm * bn * d, dtype)
    spill_once, spill_each = spill_steps(tiles.spill_bytes_per_cta, tiles.spill_bytes_per_iteration)
    descending = tiles.key_order == "descending"

    def locate(pid: int) -> tuple[int, int, int]:
        q_block, bh = pid % t_r, pid // t_r
        batch, head = divmod(bh, shape.q_heads)
        return q_block, batch, head // shape.group_size

    def program(pid: int) -> CtaProgram:
        return same_work(*locate(pid))

    # The q heads of one kv head run the same program (their Q and O are each CTA's own): made once while its
    # CTAs are dispatched, t_r apart.
    @lru_cache(maxsize=PROGRAMS_KEPT)
    def same_work(q_block: int, batch: int, kv_head: int) -> CtaProgram:
        rows = int(blocks.rows[q_block])
        first, count = int(blocks.first_tile[q_block]), int(blocks.tiles[q_block])
        edge_from = count - int(blocks.edge_tiles[q_block])
        region = (batch, kv_head)

        q_tile = Load("Q", None, 0, rows * d * e)
        # The key blocks first to last (or last to first), K and V of each; only the kv sequence's last block may
        # be partial.
        last = first + count - 1
        keys_in_last = min(bn, shape.kv_len - last * bn)
        walk = (last, -1) if descending else (first, 1)
        kv = tuple(Stream(t, region, *walk, bn * d * kv_e, last, keys_in_last * d * kv_e) for t in ("K", "V"))
        streams = ((Stream("Q", None, 0, 0, q_tile.bytes),) if tiles.q_reload else ()) + kv

        # Key blocks from edge_from on (in the query block's own order) are masked: walked first to last, the last
        # ones; last to first, the first ones.
        if descending:
            runs = _runs(count - edge_from, count, body(rows, True), body(rows, False))
        else:
            runs = _runs(edge_from, count, body(rows, False), body(rows, True))

        return CtaProgram(
            prologue=spill_once + (() if tiles.q_reload else (q_tile,)),
            loop=streamed_loop(count, streams, runs, overlap_vector=overlap),
            epilogue=epilogue(rows),
        )

    # What depends on a query block's rows alone, made once per row count (a launch has one or two).
    @cache
    def body(rows: int, masked: bool) -> tuple:
        ops = online_softmax(bm * bn, bm * bn if masked else 0, rows, 0, d)
        return (matmul, Vector(ops.cuda_ops - ops.exp_ops, ops.exp_ops), matmul, *spill_each)

    @cache
    def epilogue(rows: int) -> tuple:
        final = online_softmax(0, 0, 0, rows, d)
        return (Vector(final.cuda_ops - final.exp_ops, final.exp_ops),
                Store("O", None, 0, rows * d * shape.out_element_bytes),
                *((Store("LSE", None, 0, rows * ACCUMULATOR_BYTES),) if tiles.lse_output else ()))

    def work_class(pid: int):
        q_block, batch, kv_head = locate(pid)
        return (q_block if uneven else 0, batch, kv_head)

    return Launch(
        name=name, grid=t_r * shape.batch * shape.q_heads, warps_per_cta=tiles.num_warps,
        smem_buffers=smem_buffers(shape, tiles), registers_per_thread=registers_estimate(bm * d + bm * bn, tiles.threads),
        num_stages=tiles.num_stages, program=program, work_class=work_class,
        loop_iterations=int(blocks.tiles.max()),
        repeat_unit=t_r * shape.group_size,  # the CTAs of one (batch, kv head): the same work on their own K/V
    )


def _runs(split: int, count: int, before: tuple, after: tuple) -> tuple:
    """Runs of a loop of `count` iterations that computes `before` up to iteration `split` and `after` from there."""
    if split <= 0:
        return ((0, after),)
    if split >= count:
        return ((0, before),)
    return ((0, before), (split, after))
