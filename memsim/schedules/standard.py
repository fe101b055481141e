"""Standard attention as schedules: the GEMM, softmax and GEMM kernels of memsim.algorithms.standard,
each CTA loading its operand tiles through L2 in the order the kernel does.

Score GEMM (C = A B^T, S = Q K^T and dP = dO V^T): program id p = j + T_c * (i + T_r * head), column tile
fastest. The CTA holds its whole A_i and B_j panels in shared memory and reads them in chunks of
GEMM_K_CHUNK along the head dimension; the T_c CTAs of a tile row read the same A_i chunks and the
T_r CTAs of a column the same B_j chunks, so L2 serves every read after the first.

Value GEMM (C = A B, O = P V and the backward's dV, dQ, dK): p = row_tile + T_rows * instance. A is read
once (private); B's BLOCK_N-deep chunks are shared by every row tile of the instances that use the
same copy (a GQA group's K or V).

Row kernel (softmax and its backward): one CTA per row of the N x N matrix; the row is private to it.

Merging: fast mode simulates no two GEMM CTAs as one (work_class = program id). Neighbouring score-GEMM
CTAs always differ in a panel they read. Value-GEMM CTAs of one B copy with equal rows could be merged,
but a merged cohort fetches its members' private A chunks from HBM as one request, which gets one
share of HBM bandwidth where its members apart would get one each (memsim.engine.cta.load_tiles);
with A as large as B that moves the latency by several percent.
"""

from math import ceil

from memsim.algorithms.base import registers_estimate
from memsim.algorithms.standard import (
    MASK_OPS_PER_SCORE, SOFTMAX_BWD_OPS_PER_SCORE, SOFTMAX_BWD_PASSES, SOFTMAX_FWD_OPS_PER_SCORE,
    SOFTMAX_FWD_PASSES, SOFTMAX_VECTOR_BYTES, Operand, ValueGemm, softmax_threads,
)
from memsim.schedules.steps import CtaProgram, Launch, Load, Loop, Mma, Store, Vector
from memsim.workload.dtypes import tensor_core_dtype
from memsim.workload.shape import AttentionShape
from memsim.workload.tiles import TileConfig

# K depth of one shared-memory chunk: CUTLASS's sm80 default threadblock tile is 128 x 256 x 64
# (include/cutlass/gemm/device/default_gemm_configuration.h), i.e. 64 elements along K per stage.
GEMM_K_CHUNK = 64


def _rows(total: int, block: int, index: int) -> int:
    """Valid rows of tile `index` when `total` rows are cut into tiles of `block`."""
    return min(block, total - index * block)


def _copy_region(shape: AttentionShape, copy: int) -> tuple[int, int]:
    """(batch, kv head) of the copy-th K/V-sized operand: a GQA group's K or V, or its stacked dO or Q."""
    return divmod(copy, shape.kv_heads)


def score_gemm(shape: AttentionShape, tiles: TileConfig, name: str, a: Operand, b: Operand,
               out: Operand) -> Launch:
    """C = A B^T per (batch, q head): A [q_len, d] (region (batch, q head)), B [kv_len, d] shared by the
    b.share q heads of a group (region (batch, kv head)); C [q_len, kv_len] written once."""
    bm, bn, d = tiles.block_m, tiles.block_n, shape.head_dim
    t_r, t_c = ceil(shape.q_len / bm), ceil(shape.kv_len / bn)
    chunk = min(d, GEMM_K_CHUNK)
    chunks = ceil(d / chunk)
    dtype = tensor_core_dtype(shape.dtype)

    def program(pid: int) -> CtaProgram:
        j, rest = pid % t_c, pid // t_c
        i, head = rest % t_r, rest // t_r
        rows, keys = _rows(shape.q_len, bm, i), _rows(shape.kv_len, bn, j)
        a_region = divmod(head, shape.q_heads)
        b_region = _copy_region(shape, head // b.share)

        def loads(c: int) -> tuple[Load, ...]:
            width = _rows(d, chunk, c)
            return (Load(a.name, a_region, i * chunks + c, rows * width * a.bytes_per_element),
                    Load(b.name, b_region, j * chunks + c, keys * width * b.bytes_per_element))

        def compute(c: int):
            return (Mma(2.0 * bm * bn * _rows(d, chunk, c), dtype),)

        return CtaProgram(loop=Loop(chunks, loads, compute),
                          epilogue=(Store(out.name, None, 0, rows * keys * out.bytes_per_element),))

    smem = {f"{a.name} panel": int(bm * d * a.bytes_per_element), f"{b.name} panel": int(bn * d * b.bytes_per_element)}
    return Launch(
        name=name, grid=t_r * t_c * shape.batch * shape.q_heads, warps_per_cta=tiles.num_warps, smem_buffers=smem,
        registers_per_thread=registers_estimate(bm * bn, tiles.threads), num_stages=chunks,  # whole panels fit
        program=program, work_class=lambda pid: pid,  # see Merging above
    )


def value_gemm(shape: AttentionShape, tiles: TileConfig, g: ValueGemm) -> Launch:
    """C = A B per instance: A [rows, depth] private to its row tile, B [depth, d] in BLOCK_N-deep chunks
    shared by every row tile of the g.b.share instances that read the same copy."""
    bm, bn, d = tiles.block_m, tiles.block_n, shape.head_dim
    t_rows, t_depth = ceil(g.rows / bm), ceil(g.depth / bn)
    matmul = Mma(2.0 * bm * bn * d, tensor_core_dtype(shape.dtype))

    def program(pid: int) -> CtaProgram:
        r, copy = pid % t_rows, pid // t_rows // g.b.share  # row tile, copy of B
        rows = _rows(g.rows, bm, r)
        region = _copy_region(shape, copy)

        def loads(c: int) -> tuple[Load, ...]:
            depth = _rows(g.depth, bn, c)
            return (Load(g.a.name, None, c, rows * depth * g.a.bytes_per_element),
                    Load(g.b.name, region, c, depth * d * g.b.bytes_per_element))

        return CtaProgram(loop=Loop(t_depth, loads, lambda c: (matmul,)),
                          epilogue=(Store(g.out.name, None, 0, rows * d * g.out.bytes_per_element),))

    smem = {f"{g.a.name} chunks": int(tiles.num_stages * bm * bn * g.a.bytes_per_element),
            f"{g.b.name} chunks": int(tiles.num_stages * bn * d * g.b.bytes_per_element)}
    return Launch(
        name=g.name, grid=t_rows * g.instances, warps_per_cta=tiles.num_warps, smem_buffers=smem,
        registers_per_thread=registers_estimate(bm * d, tiles.threads), num_stages=tiles.num_stages,
        program=program, work_class=lambda pid: pid,  # see Merging above
    )


def row_kernel(shape: AttentionShape, smem_limit_bytes: int, name: str, reads: list[str], writes: list[str],
               ops_per_score: float, exp_per_row: float, exp_per_score: float, passes: int) -> Launch:
    """One CTA per row: reads its rows of `reads` once if they fit in shared memory (`smem_limit_bytes`),
    else once per pass over L2; writes its rows of `writes`."""
    e = shape.element_bytes
    row_bytes = shape.kv_len * e
    threads = softmax_threads(shape.kv_len, e)
    cached = len(reads) * row_bytes <= smem_limit_bytes
    l2_passes = 1 if cached else passes
    masked = shape.causal or shape.window is not None
    ops = shape.kv_len * (ops_per_score + (MASK_OPS_PER_SCORE if masked else 0)) + exp_per_row
    exp = shape.kv_len * exp_per_score + exp_per_row
    pass_work = Vector((ops - exp) / l2_passes, exp / l2_passes)
    row_loads = tuple(Load(t, None, 0, row_bytes) for t in reads)  # the same row every pass: L2 keeps it
    program = CtaProgram(loop=Loop(l2_passes, lambda p: row_loads, lambda p: (pass_work,)),
                         epilogue=tuple(Store(t, None, 0, row_bytes) for t in writes))
    return Launch(
        name=name, grid=shape.batch * shape.q_heads * shape.q_len, warps_per_cta=threads // 32,
        smem_buffers={f"{t} row": int(row_bytes) for t in reads} if cached else {},
        registers_per_thread=registers_estimate(threads * SOFTMAX_VECTOR_BYTES / 4, threads), num_stages=1,
        program=lambda pid: program,
    )


def forward(shape: AttentionShape, tiles: TileConfig, smem_limit_bytes: int) -> list[Launch]:
    e, kv_e = shape.element_bytes, shape.kv_element_bytes
    g = shape.group_size
    heads = shape.batch * shape.q_heads
    return [
        score_gemm(shape, tiles, "standard_qk", Operand("Q", e), Operand("K", kv_e, g), Operand("S", e)),
        row_kernel(shape, smem_limit_bytes, "standard_softmax", ["S"], ["P"], SOFTMAX_FWD_OPS_PER_SCORE,
                   exp_per_row=1, exp_per_score=1, passes=SOFTMAX_FWD_PASSES),
        value_gemm(shape, tiles, ValueGemm("standard_pv", heads, shape.q_len, shape.kv_len,
                                           Operand("P", e), Operand("V", kv_e, g), Operand("O", e))),
    ]


def backward(shape: AttentionShape, tiles: TileConfig, smem_limit_bytes: int) -> list[Launch]:
    """dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(P * dP)), dQ = dS K, dK = dS^T Q; dK and dV of a
    GQA group stack the group's queries along the reduction."""
    e, kv_e = shape.element_bytes, shape.kv_element_bytes
    g = shape.group_size
    heads, kv_heads = shape.batch * shape.q_heads, shape.batch * shape.kv_heads
    stacked = g * shape.q_len
    return [
        value_gemm(shape, tiles, ValueGemm("standard_bwd_dv", kv_heads, shape.kv_len, stacked,
                                           Operand("P", e), Operand("dO", e), Operand("dV", e))),
        score_gemm(shape, tiles, "standard_bwd_dp", Operand("dO", e), Operand("V", kv_e, g), Operand("dP", e)),
        row_kernel(shape, smem_limit_bytes, "standard_bwd_softmax", ["P", "dP"], ["dS"],
                   SOFTMAX_BWD_OPS_PER_SCORE, exp_per_row=0, exp_per_score=0, passes=SOFTMAX_BWD_PASSES),
        value_gemm(shape, tiles, ValueGemm("standard_bwd_dq", heads, shape.q_len, shape.kv_len,
                                           Operand("dS", e), Operand("K", kv_e, g), Operand("dQ", e))),
        value_gemm(shape, tiles, ValueGemm("standard_bwd_dk", kv_heads, shape.kv_len, stacked,
                                           Operand("dS", e), Operand("Q", e), Operand("dK", e))),
    ]
