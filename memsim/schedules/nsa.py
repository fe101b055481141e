"""NSA (memsim.algorithms.nsa) as a schedule: nsa_compress and nsa_cmp (where a compression block
fits), nsa_topk (where some query sees more than n selection blocks), nsa_slc, nsa_swa and
nsa_combine. nsa_cmp, nsa_slc and nsa_swa are the attention launch of memsim.schedules.block_sparse.
"""

from math import ceil

from memsim.algorithms import nsa
from memsim.algorithms.base import registers_estimate
from memsim.algorithms.block_sparse import INDEX_BYTES, check_causal_square
from memsim.algorithms.pointwise import ELEMENTS_PER_THREAD, ELEMENTWISE_WARPS, elementwise_grid
from memsim.schedules.block_sparse import attention
from memsim.schedules.linear import vector
from memsim.schedules.steps import CtaProgram, Launch, Load, Loop, Mma, Store, Vector
from memsim.workload.dtypes import ACCUMULATOR_BYTES, tensor_core_dtype
from memsim.workload.shape import AttentionShape
from memsim.workload.tiles import TileConfig


def nsa_compress(shape: AttentionShape, tiles: TileConfig, p: nsa.NsaParams) -> Launch:
    """Program id = c + C * (batch * kv_heads + kv_head): CTA c pools its 32 compressed tokens from the
    key tiles under their blocks; neighbours share the tile where their blocks overlap."""
    n, bn, d = shape.kv_len, tiles.block_n, shape.head_dim
    n_cmp = nsa.compressed_tokens(n, p)
    ctas = ceil(n_cmp / nsa.COMPRESS_TOKENS_PER_CTA)

    def program(pid: int) -> CtaProgram:
        c, kvh = pid % ctas, pid // ctas
        region = divmod(kvh, shape.kv_heads)
        key_tiles = nsa.compress_key_tiles(c, n_cmp, p, bn)
        _, count, _ = nsa.compress_span(c, n_cmp, p)

        def loads(i: int) -> tuple[Load, ...]:
            nbytes = min(bn, n - key_tiles[i] * bn) * d * shape.kv_element_bytes
            return (Load("K", region, key_tiles[i], nbytes), Load("V", region, key_tiles[i], nbytes))

        out = count * d * shape.element_bytes
        return CtaProgram(
            loop=Loop(len(key_tiles), loads,
                      lambda i: (Vector(2 * d * nsa.compress_overlap(c, n_cmp, p, bn, key_tiles[i])),)),
            epilogue=(Vector(2 * count * d), Store("K_cmp", None, c, out), Store("V_cmp", None, c, out)),
        )

    return Launch(
        name="nsa_compress", grid=shape.batch * shape.kv_heads * ctas, warps_per_cta=tiles.num_warps,
        smem_buffers=nsa.compress_smem(shape, tiles),
        registers_per_thread=registers_estimate(2 * nsa.COMPRESS_TOKENS_PER_CTA * d, tiles.threads),
        num_stages=tiles.num_stages, program=program, work_class=lambda pid: pid,  # each pools its own tokens
    )


def nsa_topk(shape: AttentionShape, tiles: TileConfig, p: nsa.NsaParams) -> Launch:
    """Program id = j + P * (batch * kv_heads + kv_head) over the P positions that rank blocks: the
    group's query rows against the compressed keys they see, then the top n block indices."""
    bn, d, e, g = tiles.block_n, shape.head_dim, shape.element_bytes, shape.group_size
    positions = nsa.topk_positions(shape, p)
    n_cmp = nsa.compressed_tokens(shape.kv_len, p)
    visible = nsa.compressed_visible(positions, p, shape.kv_len)
    matmul = Mma(2.0 * nsa.mma_rows(g) * bn * d, tensor_core_dtype(shape.dtype))
    middle, last = nsa.topk_tile_ops(shape, tiles, p, False), nsa.topk_tile_ops(shape, tiles, p, True)

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
            epilogue=(Store("block_index", None, 0, p.slc_count * INDEX_BYTES),),
        )

    return Launch(
        name="nsa_topk", grid=len(positions) * shape.batch * shape.kv_heads, warps_per_cta=tiles.num_warps,
        smem_buffers=nsa.topk_smem(shape, tiles),
        registers_per_thread=registers_estimate(nsa.mma_rows(g) * bn, tiles.threads),
        num_stages=tiles.num_stages, program=program, work_class=locate,  # positions seeing the same tokens
    )


def nsa_combine(shape: AttentionShape, tiles: TileConfig, p: nsa.NsaParams) -> Launch:
    """A PyTorch-style elementwise kernel: each CTA reads 512 elements of every branch output and
    their gates, in one batch of loads, and writes 512 elements of O."""
    e, d = shape.element_bytes, shape.head_dim
    elements = shape.batch * shape.q_heads * shape.q_len * d
    per_cta = ELEMENTWISE_WARPS * 32 * ELEMENTS_PER_THREAD
    branches = nsa.nsa_branches(shape, p)

    def program(pid: int) -> CtaProgram:
        mine = min(per_cta, elements - pid * per_cta)
        reads = tuple(Load(name, None, 0, mine * e) for name in branches) + \
            (Load("gates", None, 0, mine / d * len(branches) * e),)
        return CtaProgram(loop=Loop(1, lambda i: reads, lambda i: (vector(nsa.combine_ops(shape, p, mine)),
                                                                   Store("O", None, 0, mine * e))))

    return Launch(
        name="nsa_combine", grid=elementwise_grid(elements), warps_per_cta=ELEMENTWISE_WARPS, smem_buffers={},
        registers_per_thread=registers_estimate(per_cta, ELEMENTWISE_WARPS * 32), num_stages=1, program=program,
        work_class=lambda pid: min(per_cta, elements - pid * per_cta),
    )


def forward(shape: AttentionShape, tiles: TileConfig, p: nsa.NsaParams) -> list[Launch]:
    check_causal_square(shape, "nsa")
    out = []
    if nsa.compressed_tokens(shape.kv_len, p):
        out += [nsa_compress(shape, tiles, p), attention(shape, tiles, nsa.nsa_cmp_plan(shape, tiles, p))]
    if len(nsa.topk_positions(shape, p)):
        out.append(nsa_topk(shape, tiles, p))
    return out + [attention(shape, tiles, nsa.nsa_slc_plan(shape, tiles, p)),
                  attention(shape, tiles, nsa.nsa_swa_plan(shape, tiles, p)), nsa_combine(shape, tiles, p)]
