"""FlashAttention-3 (Shah et al. 2024) as schedules: FlashAttention-2's forward and backward with the
softmax of one tile running under the matmuls of the next (Loop.overlap_vector), on FA3's tiles,
warps and registers (memsim.algorithms.flash3 has the closed form).

FP8: the matmuls run on the fp8 tensor cores, O is written in bf16 (hopper/flash_api.cpp), and V
tiles are transposed in shared memory with LDSM.T / STSM. The transpose is done by the producer
warpgroup while the consumers run their matmuls (copy_Vt_to_V in the producer's load loop,
hopper/mainloop_fwd_sm90_tma_gmma_ws.hpp), so it is not a step on the consumers' path; the engine
has no producer-side step to charge its shared-memory bytes to, and they are left out.
"""

import dataclasses

from memsim.algorithms import flash3 as closed_form
from memsim.errors import MemsimError
from memsim.schedules import flash2, flash2_bwd
from memsim.schedules.steps import Launch
from memsim.workload.shape import AttentionShape
from memsim.workload.tiles import TileConfig


def forward(shape: AttentionShape, tiles: TileConfig) -> Launch:
    """FA2's forward schedule with the softmax under the next tile's matmuls, on FA3's warps (a consumer
    warpgroup per 64 rows and a producer warpgroup) and register split."""
    launch = flash2.forward(shape, tiles, name="flash3_fwd", overlap=True)
    warps = closed_form.warps_per_cta(tiles.block_m)
    smem = dict(launch.smem_buffers)
    if shape.dtype == "fp8":  # O in bf16 comes with FA2's schedule (AttentionShape.out_element_bytes)
        smem["V tiles transposed"] = smem["V tiles"]
    return dataclasses.replace(launch, warps_per_cta=warps, smem_buffers=smem,
                               registers_per_thread=closed_form.registers_per_thread(warps))


def backward(shape: AttentionShape) -> list[Launch]:
    """FA2's backward launches on FA3's backward tiles, the main kernel with overlap and FA3's warps."""
    if shape.dtype == "fp8":
        raise MemsimError("flash3 backward with dtype = 'fp8' is not available; FA3's backward runs fp16 or bf16")
    warps = closed_form.BWD_CONSUMER_WARPS + closed_form.PRODUCER_WARPS
    out = []
    for launch in flash2_bwd.backward(shape, closed_form.backward_tiles(shape), overlap=True, name="flash3_bwd"):
        if launch.name == "flash3_bwd":
            launch = dataclasses.replace(launch, warps_per_cta=warps,
                                         registers_per_thread=closed_form.registers_per_thread(warps))
        out.append(launch)
    return out
