"""Lightning Attention-2 (Qin et al. 2024): causal linear attention, optionally with an
exponential decay lambda per head, computed block by block with the state kept on chip.

Per block t of B = BLOCK_M rows (Algorithm 1 of the paper):
    intra   O_intra = [(Q_t K_t^T) * M] V_t        left product, M_ij = lambda^(i-j) for i >= j, else 0
    inter   O_inter = Lambda Q_t KV                 right product, Lambda = diag(lambda^1 .. lambda^B)
    update  KV = lambda^B KV + (lambda^(B-j) K_t)^T V_t
No feature map and no normaliser. Q, K, V are read once and O written once: no N^2 term.

Grid batch x q_heads x num_splits, the value dimension split across CTAs as the paper's Triton
kernel does (BLOCK_MODEL value columns per CTA, BLOCK = 64 rows; kernels/lightning.py takes 64 columns
where the paper takes min(next_pow2(d), 32), and memsim models the matched kernel): each
CTA holds KV as d x d/s fp32 on chip. The decay mask M, Lambda and lambda^(B-j) depend only on
positions inside a block, so the kernel computes them once per CTA (exp of each element of M
on the SFU) and applies them to every block with multiplies on CUDA cores.
"""

import dataclasses

from memsim.algorithms import linear
from memsim.algorithms.base import Algorithm, require_forward
from memsim.algorithms.softmax import VectorOps
from memsim.errors import MemsimError
from memsim.hardware.spec import GPUSpec
from memsim.kernel import KernelCost, Traffic
from memsim.workload.dtypes import ACCUMULATOR_BYTES
from memsim.workload.shape import AttentionShape
from memsim.workload.tiles import TileConfig

BLOCK = 64  # rows per block in the paper's Triton kernel (lightning_attn2, BLOCK = 64)
VALUE_COLUMNS = 64  # value columns per CTA, as kernels/lightning.py (the paper's kernel: 32)

ASSUMPTIONS = (
    "causal only; decay lambda per head (a scalar per head read by every CTA)",
    "one CTA per (batch, q head, value split) walks the blocks in order, KV kept in shared memory",
    "decay mask, Lambda and lambda^(B-j) computed once per CTA (exp per element of the B x B mask on the SFU)",
    "Q, K, V read from HBM once (K/V shared by a GQA group through L2), O written once",
    "matmuls at the input dtype's tensor-core rate (the paper's Triton kernel upcasts to fp32, i.e. TF32)",
)


def check_shape(shape: AttentionShape) -> None:
    if not shape.causal:
        raise MemsimError("lightning models causal linear attention; set causal (--causal), or use linear "
                          "for the non-causal form")
    linear.check_shape(shape, "lightning")


def default_splits(head_dim: int) -> int:
    """The value split: d / min(next_pow2(d), VALUE_COLUMNS), rounded up."""
    width = min(1 << (head_dim - 1).bit_length(), VALUE_COLUMNS)
    return -(-head_dim // width)


def default_tiles(gpu: GPUSpec, shape: AttentionShape) -> TileConfig:
    check_shape(shape)
    return TileConfig(block_m=BLOCK, block_n=BLOCK, num_warps=4, num_stages=2,
                      num_splits=default_splits(shape.head_dim))


def block_ops(block: int, head_dim: int, width: int, decay: bool) -> VectorOps:
    """Per block per CTA. With decay: scores x M (B^2 multiplies), O_inter x Lambda (B w),
    O_intra + O_inter (B w), K x lambda^(B-j) (B d), KV x lambda^B (d w). Without: the causal
    mask select (B^2) and the sum O_intra + O_inter (B w)."""
    b, d, w = block, head_dim, width
    if decay:
        return VectorOps(b * b + 2 * b * w + b * d + d * w, 0.0)
    return VectorOps(b * b + b * w, 0.0)


def setup_ops(block: int, decay: bool) -> VectorOps:
    """Once per CTA, with decay: M = exp(-s (i - j)) masked: multiply, select and exp per element
    (B^2 each); Lambda: multiply and exp per row (B each); lambda^(B-j): the same (B each);
    lambda^B: one multiply and one exp."""
    if not decay:
        return VectorOps(0.0, 0.0)
    b = block
    return VectorOps(3 * b * b + 4 * b + 2, b * b + 2 * b + 1)


def forward(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig, decay: bool = True) -> KernelCost:
    check_shape(shape)
    width = linear.value_width(shape, tiles.num_splits)
    grid = shape.batch * shape.q_heads * tiles.num_splits
    extra = {"decay": Traffic.streamed(read=grid * ACCUMULATOR_BYTES, hbm_read=shape.q_heads * ACCUMULATOR_BYTES)} \
        if decay else {}
    note = "exponential decay applied" if decay else "no decay (lambda = 1): plain causal mask"
    return linear.chunked_causal(gpu, shape, tiles, "lightning_fwd",
                                 block_ops(tiles.block_m, shape.head_dim, width, decay),
                                 setup_ops(tiles.block_m, decay), extra, (note,))


def kernels(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig, pass_: str) -> list[KernelCost]:
    require_forward(pass_, "lightning")
    return [forward(gpu, shape, tiles)]


def kernels_without_decay(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig, pass_: str) -> list[KernelCost]:
    require_forward(pass_, "lightning")
    return [forward(gpu, shape, tiles, decay=False)]


def schedule(shape: AttentionShape, tiles: TileConfig, pass_: str) -> list:
    from memsim.schedules import lightning as sched
    require_forward(pass_, "lightning")
    return [sched.forward(shape, tiles)]


def schedule_without_decay(shape: AttentionShape, tiles: TileConfig, pass_: str) -> list:
    from memsim.schedules import lightning as sched
    require_forward(pass_, "lightning")
    return [sched.forward(shape, tiles, decay=False)]


ALGORITHM = Algorithm(
    name="lightning",
    summary="Lightning Attention-2: causal linear attention with decay, intra-block left / inter-block right product",
    passes=("fwd",),
    default_tiles=default_tiles,
    kernels=kernels,
    assumptions=ASSUMPTIONS,
    causal_only=True,
    causal_needs_square=True,
    windows=False,
    schedule=schedule,
)

ALGORITHM_NO_DECAY = dataclasses.replace(
    ALGORITHM, name="lightning_nodecay", summary="Lightning Attention-2 without decay (lambda = 1)",
    kernels=kernels_without_decay, schedule=schedule_without_decay,
    assumptions=tuple(a for a in ASSUMPTIONS if "decay" not in a) + ("no decay: lambda = 1",))
