"""Decode-step and prefill time of a whole model on one tensor-parallel group, and tokens per second.

Attention: memsim.predict of one layer's attention call on one GPU (its share of the heads), times
the layers. The tp GPUs run their shares at the same time, so one GPU's time is the group's time.

Weights: a roofline, modelled explicitly: every weight matrix of the GPU's share is read from HBM
once per step and multiplied by the step's tokens,
    weights_s = max(weight bytes read / HBM bandwidth, 2 x params per token x tokens / tp / tensor FLOP/s)
(an FMA is two FLOPs). A mixture-of-experts layer reads only the experts its tokens are routed to:
with uniform, independent routing of t tokens to k of E experts, a fraction 1 - (1 - k/E)^t of the
experts is read (Mixtral's router is trained toward balanced use; Jiang et al. 2024, section 5).

Not modelled: the tensor-parallel all-reduce after attention and MLP, activations' HBM traffic,
norms, sampling and the scheduler; the prefill time leaves out writing the new K/V to the cache.
"""

from dataclasses import dataclass

from memsim.capacity.kv import KVLayout
from memsim.capacity.weights import weight_bytes_per_gpu
from memsim.errors import MemsimError
from memsim.hardware.spec import GPUSpec
from memsim.models.spec import ModelSpec
from memsim.predict import predict, resolve_tiles
from memsim.workload.dtypes import tensor_core_dtype
from memsim.workload.shape import AttentionShape

DEFAULT_DECODE_ALGO = "flash_decoding"
DEFAULT_PREFILL_ALGO = "flash2"


@dataclass(frozen=True)
class StepTime:
    """One forward step of the whole model on one GPU of the group, in seconds."""

    tokens: int  # tokens the step processes (the batch for decode, the prompt for prefill)
    attention_per_layer_s: float
    layers: int
    weights_s: float
    weights_bound: str  # "hbm" or "tensor"
    weights_bytes_read: float  # this GPU's
    weights_flops: float  # this GPU's
    attention_bound: str

    @property
    def attention_s(self) -> float:
        return self.attention_per_layer_s * self.layers

    @property
    def total_s(self) -> float:
        return self.attention_s + self.weights_s

    def as_dict(self) -> dict:
        return {"tokens": self.tokens, "attention_per_layer_s": self.attention_per_layer_s,
                "attention_s": self.attention_s, "attention_bound": self.attention_bound,
                "weights_s": self.weights_s, "weights_bound": self.weights_bound,
                "weights_bytes_read": self.weights_bytes_read, "weights_flops": self.weights_flops,
                "total_s": self.total_s}


def expert_read_fraction(model: ModelSpec, tokens: int) -> float:
    """Share of the model's weight bytes one step over `tokens` tokens reads: 1 for a dense model."""
    if not model.is_moe:
        return 1.0
    e, k = model.experts, model.experts_per_token
    per_expert = (model.params - model.params_per_token) / (e - k)  # one expert, all layers
    shared = model.params - e * per_expert  # attention, embeddings, norms, routers
    touched = e * (1.0 - (1.0 - k / e) ** tokens)
    return (shared + touched * per_expert) / model.params


def weights_roofline(model: ModelSpec, gpu: GPUSpec, tokens: int, weight_dtype: str, dtype: str, tp: int,
                     calibrated: bool = True) -> tuple[float, str, float, float]:
    """(seconds, "hbm" or "tensor", bytes read, FLOPs) of one GPU's weight matmuls over `tokens` tokens."""
    ceilings = gpu.ceilings(calibrated)
    rate_key = tensor_core_dtype(dtype)
    if rate_key not in ceilings.tensor_flops_per_s:
        raise MemsimError(f"{gpu.name} has no {rate_key} tensor-core rate for --dtype {dtype}; "
                          f"use one of {', '.join(ceilings.tensor_flops_per_s)}")
    read = weight_bytes_per_gpu(model.params, weight_dtype, tp) * expert_read_fraction(model, tokens)
    flops = 2.0 * model.params_per_token * tokens / tp
    memory_s = read / ceilings.hbm_bandwidth_bytes_per_s
    compute_s = flops / ceilings.tensor_flops_per_s[rate_key]
    return max(memory_s, compute_s), "hbm" if memory_s >= compute_s else "tensor", read, flops


def attention_shape(layout: KVLayout, batch: int, q_len: int, kv_len: int, dtype: str, causal: bool) -> AttentionShape:
    """One layer's attention on one GPU: its q heads and K/V heads; [batch, heads, len, head_dim]."""
    return AttentionShape(batch=batch, q_heads=layout.q_heads_per_gpu, kv_heads=layout.kv_heads_per_gpu,
                          q_len=q_len, kv_len=kv_len, head_dim=layout.model.head_dim, dtype=dtype,
                          kv_dtype=layout.kv_dtype, kv_group_size=layout.group_size, causal=causal)


def _step(layout: KVLayout, gpu: GPUSpec, shape: AttentionShape, tokens: int, algo: str, engine: str,
          weight_dtype: str, dtype: str, calibrated: bool, page_size: int | None = None) -> StepTime:
    tiles = resolve_tiles(gpu, algo, shape, page_size=page_size)
    p = predict(algo, shape, gpu, tiles, engine=engine, calibrated=calibrated)
    w_s, w_bound, w_bytes, w_flops = weights_roofline(layout.model, gpu, tokens, weight_dtype, dtype,
                                                      layout.tp, calibrated)
    return StepTime(tokens=tokens, attention_per_layer_s=p.latency_s, layers=layout.model.layers,
                    weights_s=w_s, weights_bound=w_bound, weights_bytes_read=w_bytes, weights_flops=w_flops,
                    attention_bound=p.bound)


def decode_step(layout: KVLayout, gpu: GPUSpec, batch: int, context: int, *, algo: str = DEFAULT_DECODE_ALGO,
                engine: str = "analytic", weight_dtype: str = "bf16", dtype: str = "bf16",
                calibrated: bool = True, page_size: int | None = None) -> StepTime:
    """One new token for each of `batch` sequences that hold `context` tokens; `page_size` is the KV block
    the paged algorithm reads (default: its own)."""
    shape = attention_shape(layout, batch, 1, context, dtype, causal=False)
    return _step(layout, gpu, shape, batch, algo, engine, weight_dtype, dtype, calibrated, page_size)


def prefill(layout: KVLayout, gpu: GPUSpec, prompt_len: int, *, algo: str = DEFAULT_PREFILL_ALGO,
            engine: str = "analytic", weight_dtype: str = "bf16", dtype: str = "bf16",
            calibrated: bool = True) -> StepTime:
    """One request's prompt of `prompt_len` tokens, causal: the time to its first token."""
    shape = attention_shape(layout, 1, prompt_len, prompt_len, dtype, causal=True)
    return _step(layout, gpu, shape, prompt_len, algo, engine, weight_dtype, dtype, calibrated)
