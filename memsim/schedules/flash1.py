"""FlashAttention-1's forward (Dao et al. 2022, Algorithm 1) as schedules: the init kernel, then one
CTA per (batch, q head) whose outer loop runs over key blocks j and inner loop over the query
blocks i that see block j (memsim.algorithms.flash1 has the closed form).

The engine's loop is one level, so the (j, i) pairs run as one loop in kv-outer order. A pair loads
K_j and V_j when it is the first to visit block j (they then stay in shared memory), and Q_i, O_i
(the fp32 scratch), l_i and m_i every time; it stores O_i, l_i, m_i back, O in the input dtype at
the last key block block i sees. Q, O, l, m are private to the CTA (region None): the engine keys
a private tile by its CTA, so the re-reads one outer step later hit L2 while they fit. K and V
are private too without GQA; with it they are named by (batch, kv head) and shared by the group.

Merging: without GQA every CTA does the same work on tiles of its own, so fast mode simulates the
CTAs started together as one. With GQA it simulates each CTA: a merged group's private misses go
to HBM as one request beside the shared K/V (memsim.engine.cta.load_tiles), which moves the
latency by about 1% from running the group's CTAs apart.

Split-K (FlashAttention-2 paper, Dao 2023, section 3.3): FA1 splits each K_j, V_j across the CTA's
warps while every warp sees all of Q_i; each warp ends a step with a partial row max, row sum and
P V_j for all BLOCK_M rows, which the warps must write to shared memory, synchronise on and add
up. FA2's split-Q partition needs no such exchange. Modelled as one SmemRoundTrip per step:
every warp writes its fp32 partials (BLOCK_M x (head_dim + 2): P V_j, max, sum) and they are read
back once for the reduction.
"""

from memsim.algorithms import flash1 as closed_form
from memsim.algorithms.base import registers_estimate
from memsim.algorithms.kv_blocks import kv_block_visits
from memsim.algorithms.softmax import online_softmax
from memsim.algorithms.tiling import q_block_tiles
from memsim.schedules.flash2_bwd import edge_pairs, visitors
from memsim.schedules.pointwise import pointwise
from memsim.schedules.steps import CtaProgram, Launch, Load, Loop, Mma, SmemRoundTrip, Store, Vector
from memsim.workload.dtypes import ACCUMULATOR_BYTES, tensor_core_dtype
from memsim.workload.shape import AttentionShape
from memsim.workload.tiles import TileConfig

SPLIT_K_PARTIALS_PER_ROW = 2  # row max and row sum, beside the head_dim partial outputs
WRITE_AND_READ = 2


def split_k_exchange_bytes(shape: AttentionShape, tiles: TileConfig) -> float:
    """Shared-memory bytes one inner step moves to combine the warps' split-K partials."""
    per_warp = tiles.block_m * (shape.head_dim + SPLIT_K_PARTIALS_PER_ROW) * ACCUMULATOR_BYTES
    return WRITE_AND_READ * tiles.num_warps * per_warp


def _pairs(shape: AttentionShape, tiles: TileConfig):
    """The visited (j, i) pairs in kv-outer order, with: first visitor of j?, last key block of i?, edge?"""
    blocks = q_block_tiles(shape, tiles.block_m, tiles.block_n)
    t_c = kv_block_visits(blocks, shape.kv_len).t_c
    last_tile = blocks.first_tile + blocks.tiles - 1
    pairs = []
    for j, q_blocks in enumerate(visitors(blocks, t_c)):
        for t, (i, edge) in enumerate(zip(q_blocks, edge_pairs(blocks, j, q_blocks))):
            pairs.append((j, int(i), t == 0, bool(j == last_tile[i]), bool(edge)))
    return blocks, pairs


def forward(shape: AttentionShape, tiles: TileConfig) -> Launch:
    closed_form._check_tiles(tiles)
    bm, bn, d = tiles.block_m, tiles.block_n, shape.head_dim
    e, kv_e, acc = shape.element_bytes, shape.kv_element_bytes, ACCUMULATOR_BYTES
    blocks, pairs = _pairs(shape, tiles)
    matmul = Mma(2.0 * bm * bn * d, tensor_core_dtype(shape.dtype))
    exchange = SmemRoundTrip(split_k_exchange_bytes(shape, tiles))

    def kv_group(pid: int) -> tuple[int, int]:
        batch, head = divmod(pid, shape.q_heads)
        return batch, head // shape.group_size

    gqa = shape.group_size > 1
    def program(pid: int) -> CtaProgram:
        kv = kv_group(pid) if gqa else None  # K/V shared by a GQA group, else private

        def loads(t: int) -> tuple[Load, ...]:
            j, i, first, _, _ = pairs[t]
            rows = int(blocks.rows[i])
            kv_tiles = ()
            if first:  # K_j, V_j stay in shared memory for the whole outer step
                keys = min(bn, shape.kv_len - j * bn)
                kv_tiles = (Load("K", kv, j, keys * d * kv_e), Load("V", kv, j, keys * d * kv_e))
            return kv_tiles + (Load("Q", None, i, rows * d * e), Load("O scratch", None, i, rows * d * acc),
                               Load("l", None, i, rows * acc), Load("m", None, i, rows * acc))

        def compute(t: int):
            _, i, _, last, edge = pairs[t]
            rows = int(blocks.rows[i])
            soft = online_softmax(bm * bn, bm * bn if edge else 0, rows, 0, d, rescale_per_tile=False)
            update_sfu = rows * closed_form.PER_ROW_STEP_EXTRA_SFU  # Algorithm 1, lines 11-12
            update_ops = rows * (closed_form.PER_ROW_STEP_OPS_PER_DIM * d + closed_form.PER_ROW_STEP_EXTRA_SFU)
            out = Store("O", None, i, rows * d * e) if last else Store("O scratch", None, i, rows * d * acc)
            return (matmul, Vector(soft.cuda_ops - soft.exp_ops, soft.exp_ops), exchange, matmul,
                    Vector(update_ops - update_sfu, update_sfu), out,
                    Store("l", None, i, rows * acc), Store("m", None, i, rows * acc))

        return CtaProgram(loop=Loop(len(pairs), loads, compute))

    return Launch(
        name="flash1_fwd", grid=shape.batch * shape.q_heads, warps_per_cta=tiles.num_warps,
        smem_buffers=closed_form.smem_buffers(shape, tiles),
        registers_per_thread=registers_estimate(bm * bn + tiles.num_warps * bm * d, tiles.threads),
        num_stages=tiles.num_stages, program=program,
        work_class=(lambda pid: pid) if gqa else (lambda pid: 0),  # see Merging above
    )


def launches(shape: AttentionShape, tiles: TileConfig) -> list[Launch]:
    """Algorithm 1, line 2 (O = 0, l = 0, m = -inf in HBM), then the forward kernel."""
    return [pointwise(closed_form.init_kernel(shape)), forward(shape, tiles)]
