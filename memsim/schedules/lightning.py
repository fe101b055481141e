"""Lightning Attention-2 (memsim.algorithms.lightning) as a schedule: linear attention's chunked scan
(memsim.schedules.linear.chunked_causal) with the paper's vector work.

One CTA per (batch, q head, value split), split fastest; the KV state (d x d/s, fp32) stays on
chip across the block loop. With decay, the CTA first reads its head's rate lambda (4 bytes,
shared by that head's CTAs in every batch) and builds the decay mask M, Lambda and
lambda^(B-j) once (exp on the SFU); per block, after the intra (left) and inter (right)
products, it applies them with multiplies: scores x M, O_inter x Lambda, the sum
O_intra + O_inter, K x lambda^(B-j) and KV x lambda^B. Without decay only the causal mask
select and the sum remain.
"""

from memsim.algorithms import lightning, linear
from memsim.algorithms.softmax import VectorOps
from memsim.schedules.linear import chunked_causal
from memsim.schedules.steps import Launch
from memsim.workload.shape import AttentionShape
from memsim.workload.tiles import TileConfig


def forward(shape: AttentionShape, tiles: TileConfig, decay: bool = True) -> Launch:
    lightning.check_shape(shape)
    width = linear.value_width(shape, tiles.num_splits)
    per_block = lightning.block_ops(tiles.block_m, shape.head_dim, width, decay)
    return chunked_causal(shape, tiles, "lightning_fwd", VectorOps(0.0, 0.0), per_block,
                          setup=lightning.setup_ops(tiles.block_m, decay), decay=decay)
