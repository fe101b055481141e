"""FlashAttention-3 (Shah et al. 2024): FlashAttention-2's schedule and bytes, run by
warp-specialised CTAs on Hopper: one producer warpgroup loads Q, K, V with TMA, BLOCK_M / 64
consumer warpgroups run the wgmma matmuls and the softmax, ping-ponged so one warpgroup's
softmax hides under the other's matmuls (softmax_overlaps_mma). FP8 inputs run the fp8 tensor
cores, transpose V in shared memory and write O in bf16.

Tile sizes, warps and register split follow the FA3 sources (flash-attention, hopper/):
tile_size.h (tile_size_fwd_sm90), flash_fwd_kernel.h (setmaxnreg), flash_bwd_launch_template.h.
"""

import dataclasses

from memsim.algorithms import flash2
from memsim.algorithms.base import Algorithm
from memsim.algorithms import flash2_bwd
from memsim.errors import MemsimError
from memsim.hardware.spec import GPUSpec
from memsim.kernel import KernelCost
from memsim.occupancy import occupancy
from memsim.workload.shape import AttentionShape
from memsim.workload.tiles import TileConfig

ASSUMPTIONS = flash2.ASSUMPTIONS + flash2_bwd.ASSUMPTIONS + (
    "FA3: warps per CTA = 4 per 64 rows of BLOCK_M (consumers) + 4 (producer); TileConfig.num_warps is not used",
    "FA3: softmax and matmuls of different warpgroups overlap (intra-CTA ping-pong)",
    "FA3 backward runs FA3's own backward tiles (flash_bwd_launch_template.h), not the forward's",
    "FA3 backward modelled with FA2's kernels (GQA dK/dV summed per q head; FA3 accumulates them with atomics)",
)

# wgmma M = 64: AtomLayoutQK = kBlockM / 64 consumer warpgroups (hopper/mainloop_fwd_sm90_tma_gmma_ws.hpp)
ROWS_PER_CONSUMER_WARPGROUP = 64
PRODUCER_WARPS = 4
# setmaxnreg in hopper/flash_fwd_kernel.h, warps per CTA -> (producer, consumer) registers per thread:
# warpgroup_reg_dealloc<kNWarps == 12 ? 24 : 32>, warpgroup_reg_alloc<8: 256, 12: 240, 16: 160, else 112>.
REGISTERS = {8: (32, 256), 12: (24, 240), 16: (32, 160)}
REGISTERS_OTHERWISE = (32, 112)

# tile_size_fwd_sm90 (hopper/tile_size.h), head_dim_v = head_dim, no paged KV, no softcap:
# head_dim bound -> BLOCK_M, BLOCK_N with no mask, causal, sliding window (is_local).
FWD_TILES_16BIT = ((64, 192, 192, 128, 160), (96, 192, 144, 144, 128), (128, 128, 176, 128, 128),
                   (192, 128, 112, 112, 96), (256, 128, 80, 80, 64))
FWD_TILES_FP8 = ((64, 192, 160, 160, 160), (96, 192, 128, 128, 128), (128, 128, 224, 224, 224),
                 (192, 128, 160, 160, 160), (256, 128, 128, 128, 64))
# run_mha_bwd_hdim* on sm90 (hopper/flash_bwd_launch_template.h): head_dim bound -> BLOCK_M non-causal,
# BLOCK_M causal, BLOCK_N, stages of dO; 2 consumer warpgroups.
BWD_TILES = ((64, 128, 128, 128, 2), (96, 64, 64, 128, 2), (128, 80, 64, 128, 2), (192, 64, 64, 96, 1),
             (256, 64, 64, 80, 1))
BWD_CONSUMER_WARPS = 8
STAGES = 2  # K/V pipeline stages, kStages = 2 in hopper/flash_fwd_launch_template.h


def require_hopper(gpu: GPUSpec) -> None:
    hopper_class = gpu.architecture.startswith(("Hopper", "Blackwell"))
    if gpu.vendor != "NVIDIA" or not hopper_class:
        raise MemsimError(f"flash3 needs an NVIDIA Hopper-class GPU (wgmma, TMA); {gpu.name} is "
                          f"{gpu.vendor} {gpu.architecture}")


def _row(table: tuple, head_dim: int) -> tuple:
    for row in table:
        if head_dim <= row[0]:
            return row
    raise MemsimError(f"head_dim = {head_dim} is above FlashAttention-3's largest, {table[-1][0]}")


def default_tiles(gpu: GPUSpec, shape: AttentionShape) -> TileConfig:
    require_hopper(gpu)
    table = FWD_TILES_FP8 if shape.dtype == "fp8" else FWD_TILES_16BIT
    _, block_m, plain, causal, local = _row(table, shape.head_dim)
    block_n = local if shape.window is not None else causal if shape.causal else plain
    consumers = 4 * block_m // ROWS_PER_CONSUMER_WARPGROUP
    # TileConfig wants a power of two; the kernel's warps come from block_m (warps_per_cta), not from here.
    return TileConfig(block_m=block_m, block_n=block_n, num_warps=consumers if consumers & (consumers - 1) == 0 else 8,
                      num_stages=STAGES)


def backward_tiles(shape: AttentionShape) -> TileConfig:
    _, block_m, block_m_causal, block_n, stages = _row(BWD_TILES, shape.head_dim)
    masked = shape.causal or shape.window is not None
    return TileConfig(block_m=block_m_causal if masked else block_m, block_n=block_n,
                      num_warps=BWD_CONSUMER_WARPS, num_stages=stages)


def warps_per_cta(block_m: int) -> int:
    if block_m % ROWS_PER_CONSUMER_WARPGROUP:
        raise MemsimError(f"flash3 block_m = {block_m} must be a multiple of {ROWS_PER_CONSUMER_WARPGROUP} "
                          f"(one consumer warpgroup per 64 rows)")
    return 4 * block_m // ROWS_PER_CONSUMER_WARPGROUP + PRODUCER_WARPS


def block_m_for_warps(warps: int) -> int:
    """Query rows per tile of a warp-specialised CTA of `warps` warps: the inverse of warps_per_cta."""
    consumers = (warps - PRODUCER_WARPS) // 4
    if consumers < 1 or warps_per_cta(consumers * ROWS_PER_CONSUMER_WARPGROUP) != warps:
        raise MemsimError(f"{warps} warps is not a producer warpgroup and whole consumer warpgroups")
    return consumers * ROWS_PER_CONSUMER_WARPGROUP


def registers_per_thread(warps: int) -> int:
    """Average over the CTA's threads: what the register file gives the whole CTA, per thread."""
    producer, consumer = REGISTERS.get(warps, REGISTERS_OTHERWISE)
    return (PRODUCER_WARPS * producer + (warps - PRODUCER_WARPS) * consumer) // warps


def forward(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig) -> KernelCost:
    cost = flash2.forward(gpu, shape, tiles, name="flash3_fwd", overlap=True)
    warps = warps_per_cta(tiles.block_m)
    smem = dict(cost.smem_buffers)
    traffic = dict(cost.traffic)
    notes = [f"{warps - PRODUCER_WARPS} consumer warps + {PRODUCER_WARPS} producer warps; "
             f"TileConfig.num_warps = {tiles.num_warps} not used"]
    if shape.dtype == "fp8":
        # FA3 section 3.3: fp8 wgmma needs V k-major, so V tiles are transposed in shared memory (LDSM/STSM).
        smem["V tiles transposed"] = smem["V tiles"]
        # O is written in bf16 (AttentionShape.out_element_bytes, in FlashAttention-2's traffic already).
        notes.append("fp8: V transposed in shared memory, O written in bf16")
    cost = dataclasses.replace(cost, warps_per_cta=warps, registers_per_thread=registers_per_thread(warps),
                               smem_buffers=smem, traffic=traffic, notes=tuple(notes))
    occupancy(gpu, cost.smem_bytes_per_cta, warps, cost.registers_per_thread, cost.grid_ctas, cost.name)
    return cost


def backward(gpu: GPUSpec, shape: AttentionShape) -> list[KernelCost]:
    if shape.dtype == "fp8":
        raise MemsimError("flash3 backward with dtype = 'fp8' is not available; FA3's backward runs fp16 or bf16")
    tiles = backward_tiles(shape)
    warps = BWD_CONSUMER_WARPS + PRODUCER_WARPS
    out = []
    for cost in flash2_bwd.backward(gpu, shape, tiles, overlap=True, name="flash3_bwd"):
        if cost.name == "flash3_bwd":
            cost = dataclasses.replace(cost, warps_per_cta=warps, registers_per_thread=registers_per_thread(warps))
        out.append(cost)
    return out


def kernels(gpu: GPUSpec, shape: AttentionShape, tiles: TileConfig, pass_: str) -> list[KernelCost]:
    require_hopper(gpu)
    out = []
    if "fwd" in pass_:
        out.append(forward(gpu, shape, tiles))
    if "bwd" in pass_:
        out.extend(backward(gpu, shape))
    return out


def schedule(shape: AttentionShape, tiles: TileConfig, pass_: str) -> list:
    from memsim.schedules import flash3 as sched
    out = []
    if "fwd" in pass_:
        out.append(sched.forward(shape, tiles))
    if "bwd" in pass_:
        out.extend(sched.backward(shape))
    return out


ALGORITHM = Algorithm(
    name="flash3",
    summary="FlashAttention-3: FA2's bytes, warp-specialised TMA producer, GEMM/softmax overlap, FP8 (Hopper)",
    passes=("fwd", "bwd", "fwd+bwd"),
    default_tiles=default_tiles,
    kernels=kernels,
    assumptions=ASSUMPTIONS,
    schedule=schedule,
)
