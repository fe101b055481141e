"""FlashAttention-2's backward pass as schedules (memsim.algorithms.flash2_bwd has the closed form).

Main kernel: program id p = j + T_c * (batch * q_heads + head), key block fastest. K_j and V_j are
loaded once and stay in shared memory; the CTA then walks the query blocks i that see block j
(memsim.algorithms.kv_blocks), loading Q_i, dO_i, LSE_i, D_i of its (batch, q head), running the
five matmuls and adding dS K into the fp32 dQ accumulator with atomics in L2. Every key-block CTA
of a head names the same Q_i ... D_i and dQ_i tiles, so L2 serves all but the first reader.
The pre- and post-processing kernels stream their tensors once (memsim.schedules.pointwise).

Merging: fast mode simulates no two main-kernel CTAs as one (work_class = program id). Key-block
CTAs of one head with equal keys and equal query blocks do equal work on the same q-side tiles,
but in a merged cohort an atomic that misses L2 stalls every member for the fill, and the fill is
counted once per member as an L2 -> SM read, where run apart only the first CTA waits and counts
it; fast and faithful mode then differ by a few percent (memsim.engine.cta.store_tile).
"""

import numpy as np

from memsim.algorithms import flash2_bwd as closed_form
from memsim.algorithms.kv_blocks import kv_block_visits
from memsim.algorithms.tiling import QBlockTiles, q_block_tiles
from memsim.schedules.pointwise import pointwise
from memsim.schedules.steps import Atomic, CtaProgram, Launch, Load, Loop, Mma, Store, Vector
from memsim.workload.dtypes import ACCUMULATOR_BYTES, tensor_core_dtype
from memsim.workload.shape import AttentionShape
from memsim.workload.tiles import TileConfig

# Of the closed form's PER_SCORE_OPS: P = exp2(S * scale_log2 - LSE) is one FMA (2 ops) and one exp2;
# the rest, dS = P * (dP - D) and its scaling, follow the dP matmul.
P_FMA_OPS = 2


def visitors(blocks: QBlockTiles, t_c: int) -> list[np.ndarray]:
    """For each key block j, the query blocks that see it, in order (a contiguous run)."""
    end = blocks.first_tile + blocks.tiles
    return [np.flatnonzero((blocks.first_tile <= j) & (j < end)) for j in range(t_c)]


def edge_pairs(blocks: QBlockTiles, j: int, q_blocks: np.ndarray) -> np.ndarray:
    """Which (i, j) pairs hold a masked score: each query block's last edge_tiles key blocks, as the
    forward schedule counts them (memsim.schedules.flash2), so the totals equal the closed form's."""
    end = blocks.first_tile[q_blocks] + blocks.tiles[q_blocks]
    return j >= end - blocks.edge_tiles[q_blocks]


def main_kernel(shape: AttentionShape, tiles: TileConfig, overlap: bool, name: str) -> Launch:
    bm, bn, d = tiles.block_m, tiles.block_n, shape.head_dim
    e, kv_e, acc = shape.element_bytes, shape.kv_element_bytes, ACCUMULATOR_BYTES
    blocks = q_block_tiles(shape, bm, bn)
    t_c = kv_block_visits(blocks, shape.kv_len).t_c
    seen_by = visitors(blocks, t_c)
    edges = [edge_pairs(blocks, j, seen_by[j]) for j in range(t_c)]
    dtype = tensor_core_dtype(shape.dtype)
    matmul = Mma(2.0 * bm * bn * d, dtype)
    tile = bm * bn
    dk_name, dv_name = closed_form._dkv_names(shape)

    def locate(pid: int) -> tuple[int, int, int]:
        j, bh = pid % t_c, pid // t_c
        batch, head = divmod(bh, shape.q_heads)
        return j, batch, head

    def program(pid: int) -> CtaProgram:
        j, batch, head = locate(pid)
        keys = min(bn, shape.kv_len - j * bn)
        q_side, kv_side = (batch, head), (batch, head // shape.group_size)
        q_blocks, edge = seen_by[j], edges[j]

        def loads(t: int) -> tuple[Load, ...]:
            i = int(q_blocks[t])
            rows = int(blocks.rows[i])
            return (Load("Q", q_side, i, rows * d * e), Load("dO", q_side, i, rows * d * e),
                    Load("LSE", q_side, i, rows * acc), Load("D", q_side, i, rows * acc))

        def compute(t: int):
            i = int(q_blocks[t])
            masked = tile * closed_form.MASK_OPS_PER_SCORE if edge[t] else 0
            recompute_p = Vector(P_FMA_OPS * tile + masked, tile)
            ds = Vector((closed_form.PER_SCORE_OPS - P_FMA_OPS - 1) * tile, 0.0)
            # S = Q K^T, P, dV += P^T dO, dP = dO V^T, dS, dK += dS^T Q, dQ_i += dS K (atomics into L2)
            return (matmul, recompute_p, matmul, matmul, ds, matmul, matmul,
                    Atomic("dQ accumulator", q_side, i, int(blocks.rows[i]) * d * acc))

        kv = (Load("K", kv_side, j, keys * d * kv_e), Load("V", kv_side, j, keys * d * kv_e))
        return CtaProgram(
            prologue=kv if len(q_blocks) else (),
            loop=Loop(len(q_blocks), loads, compute, overlap_vector=overlap),
            epilogue=(Store(dk_name, None, 0, keys * d * e), Store(dv_name, None, 0, keys * d * e)),
        )

    return Launch(
        name=name, grid=t_c * shape.batch * shape.q_heads, warps_per_cta=tiles.num_warps,
        smem_buffers=closed_form.smem_buffers(shape, tiles),
        registers_per_thread=closed_form.key_block_registers(shape, tiles),
        num_stages=tiles.num_stages, program=program, work_class=lambda pid: pid,  # see Merging above
        loop_iterations=max(len(q_blocks) for q_blocks in seen_by),
    )


def backward(shape: AttentionShape, tiles: TileConfig, overlap: bool = False, name: str = "flash2_bwd") -> list[Launch]:
    """The launches of one backward call, in the closed form's order: preprocess, main, (GQA) dK/dV
    reduce, dQ convert; with tiles.dq == "separate", memsim.schedules.flash2_bwd_separate_dq's."""
    if tiles.dq == "separate":
        from memsim.schedules import flash2_bwd_separate_dq
        return flash2_bwd_separate_dq.backward(shape, tiles, name)
    out = [pointwise(closed_form.preprocess(shape, tiles, name)), main_kernel(shape, tiles, overlap, name)]
    if shape.group_size > 1:
        out.append(pointwise(closed_form.reduce_dkv(shape, name)))
    out.append(pointwise(closed_form.convert_dq(shape, tiles, name)))
    return out
