"""FlashAttention-2's backward with dQ in its own kernel (TileConfig.dq = "separate") as schedules;
memsim.algorithms.flash2_bwd_separate_dq has the closed form and the kernels' structure.

dK/dV kernel: program id p = j + T_c * (batch * kv_heads + kv head), key block fastest. K_j and V_j are
private to the CTA (no other CTA reads them); the Q_i, dO_i, LSE_i, D_i tiles of each q head of the group
are read by every key-block CTA of the kv head that sees query block i, so L2 serves all but the first.
dQ kernel: program id p = i + T_r * (batch * q_heads + head), query block fastest, as the forward: the
q-side tiles are private, the K/V tiles of the kv head shared by its query-block CTAs.
"""

from memsim.algorithms import flash2_bwd_separate_dq as closed_form
from memsim.algorithms.flash2_bwd import MASK_OPS_PER_SCORE, key_block_registers
from memsim.algorithms.kv_blocks import kv_block_visits
from memsim.algorithms.tiling import q_block_tiles
from memsim.schedules.flash2_bwd import P_FMA_OPS, edge_pairs, visitors
from memsim.schedules.pointwise import pointwise
from memsim.schedules.steps import CtaProgram, Launch, Load, Loop, Mma, Store, Vector, spill_steps
from memsim.workload.dtypes import ACCUMULATOR_BYTES, tensor_core_dtype
from memsim.workload.shape import AttentionShape
from memsim.workload.tiles import TileConfig

DS_OPS = closed_form.PER_SCORE_OPS - P_FMA_OPS - 1  # dS = P * (dP - D): the per-score ops but P's FMA and exp2


def _q_side_loads(region, index: int, rows: int, shape: AttentionShape) -> tuple[Load, ...]:
    d, e, acc = shape.head_dim, shape.element_bytes, ACCUMULATOR_BYTES
    return (Load("Q", region, index, rows * d * e), Load("dO", region, index, rows * d * e),
            Load("LSE", region, index, rows * acc), Load("D", region, index, rows * acc))


def _pair_work(tile: int, masked: bool, matmul: Mma, dkdv: bool) -> tuple:
    """One (query block, key block) pair: S = Q K^T, P recomputed from the LSE, dP = dO V^T, dS, and the
    gradient matmuls: dV += P^T dO and dK += dS^T Q (dK/dV kernel) or dQ += dS K (dQ kernel)."""
    recompute_p = Vector(P_FMA_OPS * tile + (tile * MASK_OPS_PER_SCORE if masked else 0), tile)
    ds = Vector(DS_OPS * tile, 0.0)
    if dkdv:
        return (matmul, recompute_p, matmul, matmul, ds, matmul)
    return (matmul, recompute_p, matmul, ds, matmul)


def dkdv_kernel(shape: AttentionShape, tiles: TileConfig, name: str) -> Launch:
    bm, bn, d = tiles.block_m, tiles.block_n, shape.head_dim
    e, kv_e, g = shape.element_bytes, shape.kv_element_bytes, shape.group_size
    blocks = q_block_tiles(shape, bm, bn)
    t_c = kv_block_visits(blocks, shape.kv_len).t_c
    seen_by = visitors(blocks, t_c)
    edges = [edge_pairs(blocks, j, seen_by[j]) for j in range(t_c)]
    matmul = Mma(2.0 * bm * bn * d, tensor_core_dtype(shape.dtype))
    uneven = shape.causal or shape.window is not None or shape.q_len % bm != 0 or shape.kv_len % bn != 0
    # A spilling dK/dV kernel (TileConfig.spill_bytes_per_*: our d = 64 one, validation.mapping.OUR_SPILLS) stores
    # them once at its start and after each pair's work, as flash2's forward does.
    spill_once, spill_each = spill_steps(tiles.spill_bytes_per_cta, tiles.spill_bytes_per_iteration)

    def locate(pid: int) -> tuple[int, int, int]:
        j, bkv = pid % t_c, pid // t_c
        batch, kv_head = divmod(bkv, shape.kv_heads)
        return j, batch, kv_head

    def program(pid: int) -> CtaProgram:
        j, batch, kv_head = locate(pid)
        keys = min(bn, shape.kv_len - j * bn)
        q_blocks, edge = seen_by[j], edges[j]
        per_head = len(q_blocks)

        def step(t: int) -> tuple[int, int]:
            """Step t of the flat loop over (q head of the group, query block): (q head, position in q_blocks)."""
            member, k = divmod(t, per_head)
            return kv_head * g + member, k

        def loads(t: int) -> tuple[Load, ...]:
            head, k = step(t)
            i = int(q_blocks[k])
            return _q_side_loads((batch, head), i, int(blocks.rows[i]), shape)

        def compute(t: int):
            return _pair_work(bm * bn, bool(edge[step(t)[1]]), matmul, dkdv=True) + spill_each

        kv = (Load("K", None, 0, keys * d * kv_e), Load("V", None, 0, keys * d * kv_e))
        return CtaProgram(
            prologue=spill_once + (kv if per_head else ()),
            loop=Loop(g * per_head, loads, compute),
            epilogue=(Vector(keys * d * closed_form.SCALE_OPS_PER_ELEMENT, 0.0),
                      Store("dK", None, 0, keys * d * e), Store("dV", None, 0, keys * d * e)),
        )

    def work_class(pid: int):
        j, batch, kv_head = locate(pid)
        return (j if uneven else 0, batch, kv_head)

    return Launch(
        name=f"{name}_dkdv", grid=t_c * shape.batch * shape.kv_heads, warps_per_cta=tiles.num_warps,
        smem_buffers=closed_form.dkdv_smem_buffers(shape, tiles),
        registers_per_thread=key_block_registers(shape, tiles), num_stages=tiles.num_stages,
        program=program, work_class=work_class, loop_iterations=g * max(len(q_blocks) for q_blocks in seen_by),
        repeat_unit=t_c,  # the key-block CTAs of one (batch, kv head): the same work on other heads' data
    )


def dq_kernel(shape: AttentionShape, tiles: TileConfig, name: str) -> Launch:
    rows_per_cta, keys_per_step = closed_form.dq_tiles(tiles)
    d, e, kv_e = shape.head_dim, shape.element_bytes, shape.kv_element_bytes
    blocks = closed_form.dq_blocks(shape, tiles)
    t_r = blocks.t_r
    tile = rows_per_cta * keys_per_step
    matmul = Mma(2.0 * tile * d, tensor_core_dtype(shape.dtype))
    uneven = shape.causal or shape.window is not None or shape.q_len % rows_per_cta != 0

    def locate(pid: int) -> tuple[int, int, int]:
        q_block, bh = pid % t_r, pid // t_r
        batch, head = divmod(bh, shape.q_heads)
        return q_block, batch, head // shape.group_size

    def program(pid: int) -> CtaProgram:
        q_block, batch, kv_head = locate(pid)
        rows = int(blocks.rows[q_block])
        first, count = int(blocks.first_tile[q_block]), int(blocks.tiles[q_block])
        edge_from = count - int(blocks.edge_tiles[q_block])
        region = (batch, kv_head)

        def loads(i: int) -> tuple[Load, ...]:
            block = first + i
            keys = min(keys_per_step, shape.kv_len - block * keys_per_step)
            return (Load("K", region, block, keys * d * kv_e), Load("V", region, block, keys * d * kv_e))

        return CtaProgram(
            prologue=_q_side_loads(None, 0, rows, shape),
            loop=Loop(count, loads, lambda i: _pair_work(tile, i >= edge_from, matmul, dkdv=False)),
            epilogue=(Vector(rows * d * closed_form.SCALE_OPS_PER_ELEMENT, 0.0), Store("dQ", None, 0, rows * d * e)),
        )

    def work_class(pid: int):
        q_block, batch, kv_head = locate(pid)
        return (q_block if uneven else 0, batch, kv_head)

    return Launch(
        name=f"{name}_dq", grid=t_r * shape.batch * shape.q_heads, warps_per_cta=tiles.num_warps,
        smem_buffers=closed_form.dq_smem_buffers(shape, tiles),
        registers_per_thread=closed_form.dq_registers(shape, tiles), num_stages=tiles.num_stages,
        program=program, work_class=work_class, loop_iterations=int(blocks.tiles.max()),
        repeat_unit=t_r * shape.group_size,  # the query-block CTAs of one (batch, kv head)
    )


def backward(shape: AttentionShape, tiles: TileConfig, name: str = "flash2_bwd") -> list[Launch]:
    """The launches of one backward call, in the closed form's order: delta, dK/dV, dQ."""
    return [pointwise(closed_form.delta(shape, name)), dkdv_kernel(shape, tiles, name), dq_kernel(shape, tiles, name)]
