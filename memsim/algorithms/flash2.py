"""FlashAttention-2 (Dao 2023): one CTA per block of BLOCK_M query rows, looping over all
key/value tiles; softmax rescaling deferred to the end; LSE written for the backward pass.

Grid (T_r, batch * q_heads), q-block fastest, as in the Triton tutorial and PyTorch's
FA2. Where data lives: the Q tile and the fp32 accumulator stay on chip for the whole
loop; K and V tiles stream through `num_stages` shared-memory buffers.
"""


from memsim.algorithms.base import Algorithm, fit_shared_memory, registers_estimate
from memsim.algorithms.softmax import online_softmax
from memsim.algorithms.tiling import keys_touched, q_block_tiles
from memsim.hardware.spec import GPUSpec
from memsim.kernel import KernelCost, Traffic
from memsim.l2_reuse import shared_hbm_reads
from memsim.occupancy import occupancy
from memsim.workload.dtypes import ACCUMULATOR_BYTES, tensor_core_dtype
from memsim.workload.shape import AttentionShape
from memsim.workload.tiles import TileConfig
from memsim.writes import age_per_byte

ASSUMPTIONS = (
    "Q is read once, O and LSE written once; every byte written reaches HBM",
    "K/V of a head come from HBM once if all of them fit in L2, else once per wave of CTAs that reads them",
    "tensor cores run whole tiles, masked parts included",
)


def default_tiles(gpu: GPUSpec, shape: AttentionShape) -> TileConfig:
    """PyTorch's FA2 on Hopper and Ampere: 128 x 128 for d <= 64, 128 x 64 for d <= 128, 64 x 64 above;
    made to fit smaller shared memories (base.fit_shared_memory)."""
    if shape.head_dim <= 64:
        tiles = TileConfig(block_m=128, block_n=128, num_warps=4, num_stages=2)
    elif shape.head_dim <= 128:
        tiles = TileConfig(block_m=128, block_n=64, num_warps=4, num_stages=2)
    else:
        tiles = TileConfig(block_m=64, block_n=64, num_warps=4, num_stages=2)
    return fit_shared_memory(gpu, tiles, lambda t: smem_buffers(shape, t))


def smem_buffers(shape: AttentionShape, tiles: TileConfig) -> dict[str, int]:
    d = shape.head_dim
    kv_tile = int(tiles.block_n * d * shape.kv_element_bytes)
    return {
        "Q tile": int(tiles.block_m * d * shape.element_bytes),
        "K tiles": tiles.num_stages * kv_tile,
        "V tiles": tiles.num_stages * kv_tile,
    }


def spill_traffic(gpu: GPUSpec, ctas: int, slots: int, iterations: float, tiles: TileConfig,
                  other_hbm_bytes: float) -> Traffic:
    """Register spills (memsim.schedules.steps.Spill): every store reaches L2 (local stores are write-through),
    reloads hit L1. Local memory is backed per resident warp, so each CTA slot's lines are rewritten in place
    by the CTAs that run in it: the lines spilled every key block never age; those spilled once per CTA reach
    HBM each time a CTA's run brings more than the GPU's dirty lifetime into L2 (`other_hbm_bytes`, the
    kernel's other HBM traffic, shared K/V weighted as memsim.writes.age_per_byte says, spread over its
    waves); the last CTAs' lines are still dirty at the end."""
    waves = max(1.0, ctas / slots)
    lifetime = gpu.calibration.l2_dirty_lifetime_bytes if gpu.calibration else None
    aged = lifetime is not None and other_hbm_bytes / waves > lifetime
    resident = min(ctas, slots) * (tiles.spill_bytes_per_iteration + tiles.spill_bytes_per_cta)
    rewritten = max(0, ctas - slots) * tiles.spill_bytes_per_cta if aged else 0.0
    return Traffic(l2_write=iterations * tiles.spill_bytes_per_iteration + ctas * tiles.spill_bytes_per_cta,
                   hbm_write=resident + rewritten)


def spill_tensor(gpu: GPUSpec, traffic: dict, ctas: int, slots: int, iterations: float, tiles: TileConfig) -> dict:
    """`traffic` with the kernel's register spills as a tensor of their own, aged by the kernel's other HBM traffic
    (shared K/V weighted as memsim.writes.age_per_byte says); unchanged where the tiles spill nothing."""
    if not tiles.spills:
        return traffic
    weight = (gpu.calibration.l2_shared_tile_age_weight or 1.0) if gpu.calibration else 1.0
    other_hbm = sum(t.hbm_read * age_per_byte(t, weight) + t.hbm_write for t in traffic.values())
    return {**traffic, "spill": spill_traffic(gpu, ctas, slots, iterations, tiles, other_hbm)}


def forward(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig, name: str = "flash2_fwd",
            overlap: bool = False) -> KernelCost:
    bm, bn, d = tiles.block_m, tiles.block_n, shape.head_dim
    blocks = q_block_tiles(shape, bm, bn)
    heads = shape.batch * shape.q_heads
    grid = blocks.t_r * heads
    smem = smem_buffers(shape, tiles)
    regs = registers_estimate(bm * d + bm * bn, tiles.threads)
    slots = occupancy(gpu, sum(smem.values()), tiles.num_warps, regs, grid).slots

    row_tiles = float((blocks.rows * blocks.tiles).sum())
    scores = float(bm * bn * blocks.tile_pairs)
    vector = online_softmax(scores, bm * bn * float(blocks.edge_tiles.sum()), row_tiles,
                            float(blocks.rows.sum()), d)
    e, kv_e = shape.element_bytes, shape.kv_element_bytes
    kv_streamed = heads * blocks.keys_loaded * d * kv_e
    kv_shared = keys_touched(shape) * d * kv_e
    kv_hbm = shared_hbm_reads(shape.batch * shape.kv_heads, shape.group_size * blocks.t_r, slots, kv_shared,
                              gpu.l2_bytes, kv_streamed, working_set_per_group=2 * kv_shared)  # K and V together
    q_bytes = heads * shape.q_len * d * e
    q_reads = heads * row_tiles * d * e if tiles.q_reload else q_bytes  # tiles.q_reload: a Q tile per key block
    traffic = {
        "Q": Traffic.streamed(read=q_reads, hbm_read=q_bytes),
        "K": Traffic.streamed(read=kv_streamed, hbm_read=kv_hbm),
        "V": Traffic.streamed(read=kv_streamed, hbm_read=kv_hbm),
        "O": Traffic.streamed(write=heads * shape.q_len * d * shape.out_element_bytes),
    }
    if tiles.lse_output:
        traffic["LSE"] = Traffic.streamed(write=heads * shape.q_len * ACCUMULATOR_BYTES)
    traffic = spill_tensor(gpu, traffic, grid, slots, heads * float(blocks.tiles.sum()), tiles)
    return KernelCost(
        name=name, grid_ctas=grid, warps_per_cta=tiles.num_warps, smem_buffers=smem,
        registers_per_thread=regs, tensor_flops=4.0 * heads * bm * bn * d * blocks.tile_pairs,
        tensor_dtype=tensor_core_dtype(shape.dtype), cuda_ops=heads * vector.cuda_ops,
        exp_ops=heads * vector.exp_ops, traffic=traffic,
        inflight_bytes_per_cta=tiles.num_stages * 2 * bn * d * kv_e, softmax_overlaps_mma=overlap,
    )


def kernels(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig, pass_: str) -> list[KernelCost]:
    out = []
    if "fwd" in pass_:
        out.append(forward(gpu, shape, tiles))
    if "bwd" in pass_:
        from memsim.algorithms.flash2_bwd import backward
        out.extend(backward(gpu, shape, tiles))
    return out


def schedule(shape: AttentionShape, tiles: TileConfig, pass_: str) -> list:
    from memsim.schedules import flash2 as forward_schedule
    from memsim.schedules import flash2_bwd as backward_schedule
    out = []
    if "fwd" in pass_:
        out.append(forward_schedule.forward(shape, tiles))
    if "bwd" in pass_:
        out.extend(backward_schedule.backward(shape, tiles))
    return out


ALGORITHM = Algorithm(
    name="flash2",
    summary="FlashAttention-2: Q-block outer loop, deferred rescale, LSE saved",
    passes=("fwd", "bwd", "fwd+bwd"),
    default_tiles=default_tiles,
    kernels=kernels,
    assumptions=ASSUMPTIONS,
    schedule=schedule,
)
