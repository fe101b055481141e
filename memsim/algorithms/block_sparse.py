"""Block-sparse attention: what MoBA (memsim.algorithms.moba) and NSA (memsim.algorithms.nsa) share.

Both attend to a few blocks of keys that a gate picks, through FlashAttention-2's CTA over the
key tiles its plan names (moba_attn, nsa_cmp, nsa_slc, nsa_swa): an AttentionPlan says, per
CTA, how many rows and which key tiles, and attention_cost prices it. The same plan drives the
schedule (memsim.schedules.block_sparse.attention), so the counts cannot drift.

Which blocks a gate picks depends on the data. memsim picks deterministically (seeded_choice),
so that the counts are exact and only the names of the tiles depend on the choice.
"""

from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

import numpy as np

from memsim.algorithms.base import registers_estimate
from memsim.algorithms.softmax import online_softmax
from memsim.errors import MemsimError
from memsim.hardware.spec import GPUSpec
from memsim.kernel import KernelCost, Traffic
from memsim.l2_reuse import shared_hbm_reads
from memsim.occupancy import occupancy
from memsim.workload.dtypes import ACCUMULATOR_BYTES, tensor_core_dtype
from memsim.workload.shape import AttentionShape
from memsim.workload.tiles import TileConfig

INDEX_BYTES = 4  # a chosen block's index, int32


def check_whole(name: str, value: object, least: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise MemsimError(f"{name} = {value!r} must be a whole number >= {least}")


def check_causal_square(shape: AttentionShape, algo: str) -> None:
    if not shape.causal:
        raise MemsimError(f"{algo} models causal attention only; set causal (--causal)")
    if shape.q_len != shape.kv_len:
        raise MemsimError(f"{algo} needs q_len == kv_len (blocks are cut over the whole sequence), "
                          f"got q_len = {shape.q_len}, kv_len = {shape.kv_len}")
    if shape.window is not None:
        raise MemsimError(f"window = {shape.window} is not modelled for {algo}; drop the window")


def seeded_choice(count: int, candidates: Sequence[int], *key: int) -> list[int]:
    """`count` of `candidates`, chosen at random but the same on every run for the same key."""
    rng = np.random.default_rng(list(key))
    return sorted(int(c) for c in rng.choice(np.asarray(candidates), size=count, replace=False))


# ---- FlashAttention-2 over chosen key tiles: shared by moba_attn, nsa_cmp, nsa_slc, nsa_swa ----

@dataclass(frozen=True)
class AttentionPlan:
    """What the CTAs of one (batch, head) of an attention launch do; arrays are per CTA.

    Program id p = cta + ctas * (batch * heads + head), cta fastest. `heads` is q_heads for a
    CTA per q head, kv_heads for a group-centric CTA holding all q heads of a group as rows.
    """

    name: str
    heads: int
    heads_per_kv: int  # heads that share one kv head's tiles
    rows: np.ndarray  # valid query rows
    tiles: np.ndarray  # key tiles loaded
    keys: np.ndarray  # valid keys in them
    edge_tiles: np.ndarray  # tiles with masked pairs (the last ones of a CTA's loop)
    index_bytes: np.ndarray  # block indices read first
    tile_rows: int  # rows of the tensor-core tile (whole tiles are computed)
    block_n: int  # keys per tile
    key_len: int  # keys of the key tensor per kv head
    keys_shared: int  # distinct keys the CTAs of one kv head read
    order: Callable[[int, int, int], Sequence[int]]  # (batch, head, cta) -> key tiles in loop order
    work_class: Callable[[int, int, int], Hashable]  # (batch, head, cta) -> equal for equal work on equal tiles
    kv: tuple[str, str] = ("K", "V")
    out: tuple[str, str] = ("O", "LSE")

    @property
    def ctas(self) -> int:
        return len(self.rows)


def attention_smem(shape: AttentionShape, tiles: TileConfig, plan: AttentionPlan) -> dict[str, int]:
    """flash2's buffers with the plan's tile: the Q tile, num_stages K and V tiles."""
    kv_tile = int(plan.block_n * shape.head_dim * shape.kv_element_bytes)
    return {"Q tile": int(plan.tile_rows * shape.head_dim * shape.element_bytes),
            "K tiles": tiles.num_stages * kv_tile, "V tiles": tiles.num_stages * kv_tile}


def attention_registers(shape: AttentionShape, tiles: TileConfig, plan: AttentionPlan) -> int:
    return registers_estimate(plan.tile_rows * shape.head_dim + plan.tile_rows * plan.block_n, tiles.threads)


def attention_cost(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig, plan: AttentionPlan) -> KernelCost:
    d, e, kv_e = shape.head_dim, shape.element_bytes, shape.kv_element_bytes
    heads = shape.batch * plan.heads
    grid = plan.ctas * heads
    smem = attention_smem(shape, tiles, plan)
    regs = attention_registers(shape, tiles, plan)
    slots = occupancy(gpu, sum(smem.values()), tiles.num_warps, regs, grid, plan.name).slots
    scores_per_tile = plan.tile_rows * plan.block_n
    tile_pairs = float(plan.tiles.sum())
    vector = online_softmax(scores_per_tile * tile_pairs, scores_per_tile * float(plan.edge_tiles.sum()),
                            float((plan.rows * plan.tiles).sum()), float(plan.rows.sum()), d)
    kv_l2 = heads * float(plan.keys.sum()) * d * kv_e
    shared = plan.keys_shared * d * kv_e
    kv_hbm = shared_hbm_reads(shape.batch * shape.kv_heads, plan.heads_per_kv * plan.ctas, slots, shared,
                              gpu.l2_bytes, kv_l2, working_set_per_group=2 * shared)  # K and V together
    rows = heads * float(plan.rows.sum())
    k, v = plan.kv
    o, lse = plan.out
    traffic = {"Q": Traffic.streamed(read=rows * d * e),
               k: Traffic.streamed(read=kv_l2, hbm_read=kv_hbm), v: Traffic.streamed(read=kv_l2, hbm_read=kv_hbm),
               o: Traffic.streamed(write=rows * d * e), lse: Traffic.streamed(write=rows * ACCUMULATOR_BYTES)}
    if plan.index_bytes.any():
        traffic["block_index"] = Traffic.streamed(read=heads * float(plan.index_bytes.sum()))
    return KernelCost(
        name=plan.name, grid_ctas=grid, warps_per_cta=tiles.num_warps, smem_buffers=smem, registers_per_thread=regs,
        tensor_flops=4.0 * heads * scores_per_tile * d * tile_pairs, tensor_dtype=tensor_core_dtype(shape.dtype),
        cuda_ops=heads * vector.cuda_ops, exp_ops=heads * vector.exp_ops, traffic=traffic,
        inflight_bytes_per_cta=tiles.num_stages * 2 * plan.block_n * d * kv_e,
    )
