"""How each case's kernel is called on the GPU: inputs made once, a call that runs the kernel once.

Inputs are drawn on the CPU and copied in (no GPU kernel runs outside a case's NVTX range but the
case's own), in several sets when one set is smaller than twice the L2, so that back-to-back timed
runs read inputs the previous run did not leave in L2 ("rotated").
"""

import math
from typing import Callable

import torch

from validation.cases import Case

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MAX_SETS = 8


def input_sets(case: Case, device: str = "cuda", count: int | None = None) -> list[tuple[torch.Tensor, ...]]:
    """(q, k, v) sets, [B, H, N, D] each: `count` of them, by default enough to cover twice the L2 (at most
    MAX_SETS)."""
    dtype = DTYPES[case.dtype]
    q_shape = (case.batch, case.q_heads, case.q_len, case.head_dim)
    kv_shape = (case.batch, case.kv_heads, case.kv_len, case.head_dim)
    set_bytes = (math.prod(q_shape) + 2 * math.prod(kv_shape)) * torch.empty((), dtype=dtype).element_size()
    l2_bytes = torch.cuda.get_device_properties(device).L2_cache_size if device == "cuda" else 0
    if count is None:
        count = max(1, min(MAX_SETS, math.ceil(2 * l2_bytes / set_bytes)))
    generator = torch.Generator().manual_seed(0)
    sets = []
    for _ in range(count):
        q, k, v = (torch.randn(s, generator=generator, dtype=torch.float32).to(dtype) for s in (q_shape, kv_shape,
                                                                                               kv_shape))
        sets.append(tuple(t.to(device) for t in (q, k, v)))
    return sets


def rotating(sets: list, call: Callable) -> Callable[[], object]:
    """A no-argument function that calls `call(*set)` on the next set each time."""
    turn = [0]

    def run():
        inputs = sets[turn[0] % len(sets)]
        turn[0] += 1
        return call(*inputs)

    return run


def _sdpa(backend_name: str, case: Case) -> Callable:
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, backend_name)
    gqa = case.q_heads != case.kv_heads

    def call(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=case.causal, enable_gqa=gqa)

    return call


def _flex(case: Case) -> Callable:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    compiled = torch.compile(flex_attention, dynamic=False)
    mask = None
    if case.causal:
        offset = case.kv_len - case.q_len

        def causal(b, h, q_idx, kv_idx):
            return kv_idx <= q_idx + offset

        mask = create_block_mask(causal, B=None, H=None, Q_LEN=case.q_len, KV_LEN=case.kv_len)

    def call(q, k, v):
        return compiled(q, k, v, block_mask=mask, enable_gqa=case.q_heads != case.kv_heads)

    return call


PAGE_SIZE = 16  # tokens per page in the paged cases (vLLM's default block size)
KV_GROUP = 32  # elements per scale in the int8 KV cases
# Our kernel -> the memsim algorithm that models its schedule (and the KV storage it reads).
MEMSIM_ALGO = {"kv_int8": "flash_decoding", "lightning": "lightning_nodecay"}


def _ours(case: Case) -> Callable:
    """The matched set (kernels/): the public op of each kernel module, called as call(q, k, v)."""
    if case.kernel == "flash2":
        from kernels.flash2 import flash_attention

        return lambda q, k, v: flash_attention(q, k, v, causal=case.causal)
    if case.kernel == "flash_decoding":
        from kernels.flash_decoding import flash_decode

        return lambda q, k, v: flash_decode(q, k, v)
    if case.kernel == "paged":
        from kernels.paged import paged_decode, paged_layout

        caches: dict = {}

        def call(q, k, v):  # the paged layout is built once per input set, outside the timed calls
            if k.data_ptr() not in caches:
                caches[k.data_ptr()] = paged_layout(k, v, PAGE_SIZE)
            return paged_decode(q[:, :, 0], *caches[k.data_ptr()], num_splits=None)

        return call
    if case.kernel == "flash_decoding_pp":
        from kernels.flash_decoding_pp import flash_decode_pp

        return lambda q, k, v: flash_decode_pp(q, k, v)
    if case.kernel == "kv_int8":
        from kernels.kv_quant import quantize_kv, quantized_decode

        quantized: dict = {}

        def call(q, k, v):  # quantised once per input set, outside the timed calls
            if k.data_ptr() not in quantized:
                quantized[k.data_ptr()] = tuple(quantize_kv(x, bits=8, group_size=KV_GROUP) for x in (k, v))
            return quantized_decode(q, *quantized[k.data_ptr()])

        return call
    if case.kernel == "linear":
        from kernels.linear import linear_attention

        return lambda q, k, v: linear_attention(q, k, v)
    if case.kernel == "lightning":
        from kernels.lightning import lightning_attention

        return lambda q, k, v: lightning_attention(q, k, v)
    if case.kernel == "standard":
        from kernels.standard import standard_attention

        return lambda q, k, v: standard_attention(q, k, v, causal=case.causal)
    if case.kernel == "flash1":
        from kernels.flash1 import flash1_attention

        return lambda q, k, v: flash1_attention(q, k, v, causal=case.causal)
    raise ValueError(f"no runner for kernel {case.kernel!r}")


def launch_description(case: Case) -> dict:
    """For our kernels: the launch configs they report for the case's inputs (meta tensors), the memsim
    algorithm that models the same schedule, and the split count, recorded with the measurement."""
    if case.kernel in THEIRS:
        return {}
    dtype = DTYPES[case.dtype]
    q = torch.empty(case.batch, case.q_heads, case.q_len, case.head_dim, dtype=dtype, device="cuda")
    k = torch.empty(case.batch, case.kv_heads, case.kv_len, case.head_dim, dtype=dtype, device="cuda")
    if case.kernel == "flash2":
        from kernels.flash2 import launch_configs

        configs = launch_configs(tuple(q.shape), tuple(k.shape), dtype, causal=case.causal)
    elif case.kernel == "flash_decoding":
        from kernels.flash_decoding import launch_configs

        configs = launch_configs(q, k, k)
    elif case.kernel == "paged":
        from kernels.paged import launch_configs, paged_layout

        k_cache, v_cache, table, lens = paged_layout(k, k, PAGE_SIZE)
        configs = launch_configs(q[:, :, 0], k_cache, v_cache, table, lens, num_splits=None)
    elif case.kernel == "kv_int8":
        from kernels.kv_quant import launch_configs, quantize_kv

        kq = quantize_kv(torch.zeros_like(k), bits=8, group_size=KV_GROUP)
        configs = launch_configs(q, kq, kq)
    else:
        module = __import__(f"kernels.{case.kernel}", fromlist=["launch_configs"])
        configs = module.launch_configs(q, k, k)
    splits = configs[0].grid[2] if case.kernel in ("flash_decoding", "paged", "kv_int8", "flash_decoding_pp") else None
    extra = {"kv_dtype": "int8", "kv_group_size": KV_GROUP} if case.kernel == "kv_int8" else {}
    return {"launch_configs": [c.as_dict() for c in configs], "memsim_algo": MEMSIM_ALGO.get(case.kernel, case.kernel),
            "num_splits": splits, "page_size": PAGE_SIZE if case.kernel == "paged" else None, **extra}


THEIRS = {
    "sdpa_flash": lambda case: _sdpa("FLASH_ATTENTION", case),
    "sdpa_cudnn": lambda case: _sdpa("CUDNN_ATTENTION", case),
    "sdpa_efficient": lambda case: _sdpa("EFFICIENT_ATTENTION", case),
    "sdpa_math": lambda case: _sdpa("MATH", case),
    "flex_attention": _flex,
}


def kernel_call(case: Case) -> Callable:
    """call(q, k, v) running the case's kernel once."""
    make = THEIRS.get(case.kernel, _ours)
    return make(case)
