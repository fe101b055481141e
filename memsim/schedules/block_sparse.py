"""Block-sparse attention (memsim.algorithms.block_sparse) as a schedule: the attention launch MoBA
(memsim.schedules.moba) and NSA (memsim.schedules.nsa) share.

The attention launches (moba_attn, nsa_cmp, nsa_slc, nsa_swa) are FlashAttention-2's CTA over
the key tiles its plan names: the Q tile (and the block indices a gate chose) loaded once and
kept on chip, the chosen K/V tiles streamed through num_stages buffers in the plan's order,
O and LSE stored once. The same plan drives the closed form, so the counts cannot drift;
which tiles are named (the stand-in for the gate's choice) only decides what L2 can share.
"""

from memsim.algorithms import block_sparse as bs
from memsim.algorithms.softmax import online_softmax
from memsim.schedules.linear import vector
from memsim.schedules.steps import CtaProgram, Launch, Load, Loop, Mma, Store
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
