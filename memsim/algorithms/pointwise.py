"""Kernels that stream tensors once with no tiling worth modelling: memsets, dtype conversions,
row reductions, the backward pre- and post-processing passes. No tensor-core work; every byte
read comes from HBM and every byte written goes back (each kernel starts with a cold L2, as
under Nsight Compute's cache flush between kernels, DESIGN.md). Each CTA issues all its loads
before it uses them, so it needs one memory round trip."""

from math import ceil

from memsim.algorithms.base import registers_estimate
from memsim.kernel import KernelCost, Traffic

# PyTorch's elementwise kernels: 128 threads, 4 elements per thread
# (aten/src/ATen/native/cuda/thread_constants.h: num_threads() = 4 warps, thread_work_size() = 4).
ELEMENTWISE_WARPS = 4
ELEMENTS_PER_THREAD = 4

# Elements per CTA of PyTorch's elementwise kernels, 128 threads each, from the grids ncu recorded (torch 2.11):
# unrolled copies (direct_copy_kernel_cuda) 4 per thread; vectorized kernels (unary functors, casts, isneginf,
# triu_tril, fills of fp32 such as torch.zeros) 8; vectorized fills of bool 16; the generic
# elementwise_kernel<128, 2> (where, masked bias) 2.
UNROLLED = 512
VECTORIZED = 1024
BOOL_FILL = 2048
GENERIC = 256


def elementwise_grid(elements: float) -> int:
    """CTAs of a PyTorch elementwise kernel over `elements` outputs."""
    return max(1, ceil(elements / (ELEMENTWISE_WARPS * 32 * ELEMENTS_PER_THREAD)))


def pointwise_kernel(name: str, grid_ctas: int, reads: dict[str, float], writes: dict[str, float],
                     cuda_ops: float, tensor_dtype: str, exp_ops: float = 0.0, warps: int = ELEMENTWISE_WARPS,
                     smem_buffers: dict[str, int] | None = None, notes: tuple[str, ...] = ()) -> KernelCost:
    """A kernel that reads each tensor of `reads` and writes each of `writes` once (bytes per tensor)."""
    traffic = {t: Traffic.streamed(read=b) for t, b in reads.items()}
    for t, b in writes.items():
        traffic[t] = traffic.get(t, Traffic()) + Traffic.streamed(write=b)
    grid = max(1, grid_ctas)
    return KernelCost(
        name=name, grid_ctas=grid, warps_per_cta=warps, smem_buffers=smem_buffers or {},
        registers_per_thread=registers_estimate(ELEMENTS_PER_THREAD * warps * 32, warps * 32),
        tensor_flops=0.0, tensor_dtype=tensor_dtype, cuda_ops=cuda_ops, exp_ops=exp_ops, traffic=traffic,
        inflight_bytes_per_cta=max(1.0, sum(reads.values()) / grid), notes=notes,
    )
