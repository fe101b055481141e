"""Block-sparse attention (memsim.algorithms.block_sparse) as schedules: MoBA's and NSA's launches.

The attention launches (moba_attn, nsa_cmp, nsa_slc, nsa_swa) are FlashAttention-2's CTA over
the key tiles its plan names: the Q tile (and the block indices a gate chose) loaded once and
kept on chip, the chosen K/V tiles streamed through num_stages buffers in the plan's order,
O and LSE stored once. The same plan drives the closed form, so the counts cannot drift;
which tiles are named (the stand-in for the gate's choice) only decides what L2 can share.
"""

from math import ceil

from memsim.algorithms import block_sparse as bs
from memsim.algorithms.base import registers_estimate
from memsim.algorithms.pointwise import ELEMENTS_PER_THREAD, ELEMENTWISE_WARPS, elementwise_grid
from memsim.algorithms.softmax import online_softmax
from memsim.schedules.linear import vector
from memsim.schedules.steps import CtaProgram, Launch, Load, Loop, Mma, Store, Vector
from memsim.workload.dtypes import ACCUMULATOR_BYTES, tensor_core_dtype
from memsim.workload.shape import AttentionShape
from memsim.workload.tiles import TileConfig


def attention(shape: AttentionShape, tiles: TileConfig, plan: bs.AttentionPlan) -> Launch:
    d, e, kv_e = shape.head_dim, shape.element_bytes, shape.kv_element_bytes
    scores = plan.tile_rows * plan.block_n
    matmul = Mma(2.0 * scores * d, tensor_core_dtype(shape.dtype))  # S = Q K^T, then O += P V
    k_name, v_name = plan.kv
    o_name, lse_name = plan.out

    def locate(pid: int) -> tuple[int, int, int]:
        cta, bh = pid % plan.ctas, pid // plan.ctas
        batch, head = divmod(bh, plan.heads)
        return batch, head, cta

    def program(pid: int) -> CtaProgram:
        batch, head, cta = locate(pid)
        rows, index_bytes = int(plan.rows[cta]), int(plan.index_bytes[cta])
        region = (batch, head // plan.heads_per_kv)
        order = plan.order(batch, head, cta)
        edge_from = len(order) - int(plan.edge_tiles[cta])

        def loads(i: int) -> tuple[Load, ...]:
            tile = order[i]
            nbytes = min(plan.block_n, plan.key_len - tile * plan.block_n) * d * kv_e
            return (Load(k_name, region, tile, nbytes), Load(v_name, region, tile, nbytes))

        def compute(i: int):
            return (matmul, vector(online_softmax(scores, scores if i >= edge_from else 0, rows, 0, d)), matmul)

        index = (Load("block_index", None, 0, index_bytes),) if index_bytes else ()
        return CtaProgram(
            prologue=(Load("Q", None, 0, rows * d * e),) + index,
            loop=Loop(len(order), loads, compute),
            epilogue=(vector(online_softmax(0, 0, 0, rows, d)), Store(o_name, None, 0, rows * d * e),
                      Store(lse_name, None, 0, rows * ACCUMULATOR_BYTES)),
        )

    return Launch(
        name=plan.name, grid=plan.ctas * shape.batch * plan.heads, warps_per_cta=tiles.num_warps,
        smem_buffers=bs.attention_smem(shape, tiles, plan),
        registers_per_thread=bs.attention_registers(shape, tiles, plan), num_stages=tiles.num_stages,
        program=program, work_class=lambda pid: plan.work_class(*locate(pid)),
    )


# ---- MoBA ---------------------------------------------------------------------------------

def moba_pool(shape: AttentionShape, tiles: TileConfig, p: bs.MobaParams) -> Launch:
    """Program id = block + (blocks - 1) * (batch * kv_heads + kv_head): a CTA sums its block's key tiles."""
    bn, d = tiles.block_n, shape.head_dim
    pooled = bs.moba_blocks(shape, p) - 1
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
        smem_buffers=bs.pool_smem(shape, tiles), registers_per_thread=registers_estimate(bn * d, tiles.threads),
        num_stages=tiles.num_stages, program=program, work_class=lambda pid: pid,  # each reads its own block
    )


def moba_gate(shape: AttentionShape, tiles: TileConfig, p: bs.MobaParams) -> Launch:
    """Program id = j + G * (batch * q_heads + head) over the G gated q tiles of a head: the Q tile
    against the pooled keys of the earlier blocks, tile by tile, then the top k - 1."""
    layout = bs.moba_layout(shape, tiles, p)
    gated = layout.gated_tiles
    bn, d, e = tiles.block_n, shape.head_dim, shape.element_bytes
    pooled = bs.moba_blocks(shape, p) - 1
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
                      lambda i: (matmul, Vector(bs.gate_tile_ops(tiles, i == count - 1)))),
            epilogue=(Vector(bs.gate_select_ops(p, current)),
                      Store("block_index", None, 0, (p.top_k - 1) * bs.INDEX_BYTES)),
        )

    return Launch(
        name="moba_gate", grid=len(gated) * shape.batch * shape.q_heads, warps_per_cta=tiles.num_warps,
        smem_buffers=bs.gate_smem(shape, tiles),
        registers_per_thread=registers_estimate(tiles.block_m * bn, tiles.threads),
        num_stages=tiles.num_stages, program=program, work_class=locate,
    )


def moba(shape: AttentionShape, tiles: TileConfig, p: bs.MobaParams) -> list[Launch]:
    attend = attention(shape, tiles, bs.moba_attention_plan(shape, tiles, p))
    if not bs.moba_layout(shape, tiles, p).gated.any():
        return [attend]
    return [moba_pool(shape, tiles, p), moba_gate(shape, tiles, p), attend]


# ---- NSA ----------------------------------------------------------------------------------

def nsa_compress(shape: AttentionShape, tiles: TileConfig, p: bs.NsaParams) -> Launch:
    """Program id = c + C * (batch * kv_heads + kv_head): CTA c pools its 32 compressed tokens from the
    key tiles under their blocks; neighbours share the tile where their blocks overlap."""
    n, bn, d = shape.kv_len, tiles.block_n, shape.head_dim
    n_cmp = bs.compressed_tokens(n, p)
    ctas = ceil(n_cmp / bs.COMPRESS_TOKENS_PER_CTA)

    def program(pid: int) -> CtaProgram:
        c, kvh = pid % ctas, pid // ctas
        region = divmod(kvh, shape.kv_heads)
        key_tiles = bs.compress_key_tiles(c, n_cmp, p, bn)
        _, count, _ = bs.compress_span(c, n_cmp, p)

        def loads(i: int) -> tuple[Load, ...]:
            nbytes = min(bn, n - key_tiles[i] * bn) * d * shape.kv_element_bytes
            return (Load("K", region, key_tiles[i], nbytes), Load("V", region, key_tiles[i], nbytes))

        out = count * d * shape.element_bytes
        return CtaProgram(
            loop=Loop(len(key_tiles), loads,
                      lambda i: (Vector(2 * d * bs.compress_overlap(c, n_cmp, p, bn, key_tiles[i])),)),
            epilogue=(Vector(2 * count * d), Store("K_cmp", None, c, out), Store("V_cmp", None, c, out)),
        )

    return Launch(
        name="nsa_compress", grid=shape.batch * shape.kv_heads * ctas, warps_per_cta=tiles.num_warps,
        smem_buffers=bs.compress_smem(shape, tiles),
        registers_per_thread=registers_estimate(2 * bs.COMPRESS_TOKENS_PER_CTA * d, tiles.threads),
        num_stages=tiles.num_stages, program=program, work_class=lambda pid: pid,  # each pools its own tokens
    )


def nsa_topk(shape: AttentionShape, tiles: TileConfig, p: bs.NsaParams) -> Launch:
    """Program id = j + P * (batch * kv_heads + kv_head) over the P positions that rank blocks: the
    group's query rows against the compressed keys they see, then the top n block indices."""
    bn, d, e, g = tiles.block_n, shape.head_dim, shape.element_bytes, shape.group_size
    positions = bs.topk_positions(shape, p)
    n_cmp = bs.compressed_tokens(shape.kv_len, p)
    visible = bs.compressed_visible(positions, p, shape.kv_len)
    matmul = Mma(2.0 * bs.mma_rows(g) * bn * d, tensor_core_dtype(shape.dtype))
    middle, last = bs.topk_tile_ops(shape, tiles, p, False), bs.topk_tile_ops(shape, tiles, p, True)

    def locate(pid: int) -> tuple[int, int, int]:
        j, kvh = pid % len(positions), pid // len(positions)
        return (*divmod(kvh, shape.kv_heads), int(visible[j]))

    def program(pid: int) -> CtaProgram:
        batch, kv_head, seen = locate(pid)
        count = ceil(seen / bn)
        return CtaProgram(
            prologue=(Load("Q", None, 0, g * d * e), Load("LSE_cmp", None, 0, g * ACCUMULATOR_BYTES)),
            loop=Loop(count, lambda i: (Load("K_cmp", (batch, kv_head), i, min(bn, n_cmp - i * bn) * d * e),),
                      lambda i: (matmul, vector(last if i == count - 1 else middle))),
            epilogue=(Store("block_index", None, 0, p.slc_count * bs.INDEX_BYTES),),
        )

    return Launch(
        name="nsa_topk", grid=len(positions) * shape.batch * shape.kv_heads, warps_per_cta=tiles.num_warps,
        smem_buffers=bs.topk_smem(shape, tiles),
        registers_per_thread=registers_estimate(bs.mma_rows(g) * bn, tiles.threads),
        num_stages=tiles.num_stages, program=program, work_class=locate,  # positions seeing the same tokens
    )


def nsa_combine(shape: AttentionShape, tiles: TileConfig, p: bs.NsaParams) -> Launch:
    """A PyTorch-style elementwise kernel: each CTA reads 512 elements of every branch output and
    their gates, in one batch of loads, and writes 512 elements of O."""
    e, d = shape.element_bytes, shape.head_dim
    elements = shape.batch * shape.q_heads * shape.q_len * d
    per_cta = ELEMENTWISE_WARPS * 32 * ELEMENTS_PER_THREAD
    branches = bs.nsa_branches(shape, p)

    def program(pid: int) -> CtaProgram:
        mine = min(per_cta, elements - pid * per_cta)
        reads = tuple(Load(name, None, 0, mine * e) for name in branches) + \
            (Load("gates", None, 0, mine / d * len(branches) * e),)
        return CtaProgram(loop=Loop(1, lambda i: reads, lambda i: (vector(bs.combine_ops(shape, p, mine)),
                                                                   Store("O", None, 0, mine * e))))

    return Launch(
        name="nsa_combine", grid=elementwise_grid(elements), warps_per_cta=ELEMENTWISE_WARPS, smem_buffers={},
        registers_per_thread=registers_estimate(per_cta, ELEMENTWISE_WARPS * 32), num_stages=1, program=program,
        work_class=lambda pid: min(per_cta, elements - pid * per_cta),
    )


def nsa(shape: AttentionShape, tiles: TileConfig, p: bs.NsaParams) -> list[Launch]:
    bs.check_causal_square(shape, "nsa")
    out = []
    if bs.compressed_tokens(shape.kv_len, p):
        out += [nsa_compress(shape, tiles, p), attention(shape, tiles, bs.nsa_cmp_plan(shape, tiles, p))]
    if len(bs.topk_positions(shape, p)):
        out.append(nsa_topk(shape, tiles, p))
    return out + [attention(shape, tiles, bs.nsa_slc_plan(shape, tiles, p)),
                  attention(shape, tiles, bs.nsa_swa_plan(shape, tiles, p)), nsa_combine(shape, tiles, p)]
