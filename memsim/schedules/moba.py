"""MoBA (memsim.algorithms.moba) as a schedule: moba_pool, moba_gate, then moba_attn, the attention
launch of memsim.schedules.block_sparse over the blocks the gate chose; moba_attn alone where
every tile takes every earlier block.
"""

from math import ceil

from memsim.algorithms import moba
from memsim.algorithms.base import registers_estimate
from memsim.algorithms.block_sparse import INDEX_BYTES
from memsim.schedules.block_sparse import attention
from memsim.schedules.steps import CtaProgram, Launch, Load, Loop, Mma, Store, Vector
from memsim.workload.dtypes import tensor_core_dtype
from memsim.workload.shape import AttentionShape
from memsim.workload.tiles import TileConfig


def moba_pool(shape: AttentionShape, tiles: TileConfig, p: moba.MobaParams) -> Launch:
    """Program id = block + (blocks - 1) * (batch * kv_heads + kv_head): a CTA sums its block's key tiles."""
    bn, d = tiles.block_n, shape.head_dim
    pooled = moba.moba_blocks(shape, p) - 1
    per_block = p.block_size // bn

    def program(pid: int) -> CtaProgram:
        block, kvh = pid % pooled, pid // pooled
        region = divmod(kvh, shape.kv_heads)
        return CtaProgram(
            loop=Loop(per_block, lambda i: (Load("K", region, block * per_block + i, bn * d * shape.kv_element_bytes),),
                      lambda i: (Vector(bn * d),)),
            epilogue=(Vector(d), Store("K_mean", None, block, d * shape.element_bytes)),
        )

    return Launch(
        name="moba_pool", grid=shape.batch * shape.kv_heads * pooled, warps_per_cta=tiles.num_warps,
        smem_buffers=moba.pool_smem(shape, tiles), registers_per_thread=registers_estimate(bn * d, tiles.threads),
        num_stages=tiles.num_stages, program=program, work_class=lambda pid: pid,  # each reads its own block
    )


def moba_gate(shape: AttentionShape, tiles: TileConfig, p: moba.MobaParams) -> Launch:
    """Program id = j + G * (batch * q_heads + head) over the G gated q tiles of a head: the Q tile
    against the pooled keys of the earlier blocks, tile by tile, then the top k - 1."""
    layout = moba.moba_layout(shape, tiles, p)
    gated = layout.gated_tiles
    bn, d, e = tiles.block_n, shape.head_dim, shape.element_bytes
    pooled = moba.moba_blocks(shape, p) - 1
    matmul = Mma(2.0 * tiles.block_m * bn * d, tensor_core_dtype(shape.dtype))

    def locate(pid: int) -> tuple[int, int, int]:
        j, bh = pid % len(gated), pid // len(gated)
        batch, head = divmod(bh, shape.q_heads)
        return int(gated[j]), batch, head // shape.group_size

    def program(pid: int) -> CtaProgram:
        q_tile, batch, kv_head = locate(pid)
        current = int(layout.current[q_tile])
        count = ceil(current / bn)
        return CtaProgram(
            prologue=(Load("Q", None, 0, int(layout.blocks.rows[q_tile]) * d * e),),
            loop=Loop(count, lambda i: (Load("K_mean", (batch, kv_head), i, min(bn, pooled - i * bn) * d * e),),
                      lambda i: (matmul, Vector(moba.gate_tile_ops(tiles, i == count - 1)))),
            epilogue=(Vector(moba.gate_select_ops(p, current)),
                      Store("block_index", None, 0, (p.top_k - 1) * INDEX_BYTES)),
        )

    return Launch(
        name="moba_gate", grid=len(gated) * shape.batch * shape.q_heads, warps_per_cta=tiles.num_warps,
        smem_buffers=moba.gate_smem(shape, tiles),
        registers_per_thread=registers_estimate(tiles.block_m * bn, tiles.threads),
        num_stages=tiles.num_stages, program=program, work_class=locate,
    )


def forward(shape: AttentionShape, tiles: TileConfig, p: moba.MobaParams) -> list[Launch]:
    attend = attention(shape, tiles, moba.moba_attention_plan(shape, tiles, p))
    if not moba.moba_layout(shape, tiles, p).gated.any():
        return [attend]
    return [moba_pool(shape, tiles, p), moba_gate(shape, tiles, p), attend]
