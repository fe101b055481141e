"""What every algorithm file provides: its name, its default tiles and its kernels' closed-form costs."""

import dataclasses
from dataclasses import dataclass
from typing import Callable

from memsim.errors import MemsimError
from memsim.hardware.spec import GPUSpec
from memsim.kernel import KernelCost
from memsim.workload.shape import AttentionShape
from memsim.workload.tiles import TileConfig

PASSES = ("fwd", "bwd", "fwd+bwd")


@dataclass(frozen=True)
class Algorithm:
    name: str
    summary: str
    passes: tuple[str, ...]  # which of fwd, bwd, fwd+bwd it models
    default_tiles: Callable[[GPUSpec, AttentionShape], TileConfig]
    # (gpu, shape, tiles, pass) -> the kernels one call launches, in order
    kernels: Callable[[GPUSpec, AttentionShape, TileConfig, str], list[KernelCost]]
    assumptions: tuple[str, ...] = ()
    decode_only: bool = False  # needs q_len == 1 (or a few tokens)
    causal_only: bool = False  # models only causal attention
    causal_needs_square: bool = False  # causal form needs q_len == kv_len (a chunked scan over the whole sequence)
    windows: bool = True  # models sliding-window attention
    gqa: bool = True  # models kv_heads < q_heads (GQA/MQA)
    # (shape, tiles, pass) -> the launches as schedules for the discrete-event engine; None: not yet
    schedule: Callable[[AttentionShape, TileConfig, str], list] | None = None


def registers_estimate(fp32_elements_per_cta: float, threads: int, overhead: int = 32) -> int:
    """Registers per thread: the CTA's fp32 accumulators spread over its threads, plus addressing."""
    return int(fp32_elements_per_cta / threads) + overhead


def require_forward(pass_: str, algo: str) -> None:
    """For algorithms that model the forward pass only (called by their kernels() and schedule())."""
    if pass_ != "fwd":
        raise MemsimError(f"pass {pass_!r} is not modelled for {algo}, which models the forward pass only; use 'fwd'")


def fit_shared_memory(gpu: GPUSpec, tiles: TileConfig, buffers: Callable[[TileConfig], dict]) -> TileConfig:
    """A default tile config made to fit one block's shared memory on a smaller GPU (L40S and RTX 4090 have
    99 KiB, MI300X's LDS 64 KiB, the H100 227 KiB): fewer stages first, then a smaller BLOCK_N, then BLOCK_M,
    never below 16 (the tensor-core tile). What still does not fit is refused by the launch, with its bytes."""
    while sum(buffers(tiles).values()) > gpu.smem_per_block_optin_bytes:
        if tiles.num_stages > 1:
            tiles = dataclasses.replace(tiles, num_stages=tiles.num_stages - 1)
        elif tiles.block_n > 16:
            tiles = dataclasses.replace(tiles, block_n=tiles.block_n // 2)
        elif tiles.block_m > 16:
            tiles = dataclasses.replace(tiles, block_m=tiles.block_m // 2)
        else:
            break
    return tiles
