"""memsim.capacity.plan: how many sequences of what context a model serves on a tensor-parallel group
of GPUs, what its KV cache costs, what paging and prefix sharing save, and how fast it decodes."""

from dataclasses import dataclass, field

import numpy as np

from memsim.capacity.fit import DEFAULT_RESERVE_FRACTION, MemoryBudget, check_block_size, max_batch, max_context
from memsim.capacity.kv import DEFAULT_KV_GROUP_SIZE, KVLayout
from memsim.capacity.lengths import check_lengths
from memsim.capacity.paging import AllocationWaste, allocation_waste
from memsim.capacity.sharing import SharingSavings, sharing_savings
from memsim.capacity.timing import DEFAULT_DECODE_ALGO, DEFAULT_PREFILL_ALGO, StepTime, decode_step, prefill
from memsim.capacity.weights import weight_bytes, weight_bytes_per_gpu
from memsim.errors import MemsimError
from memsim.hardware import GPUSpec, load_gpu
from memsim.models import ModelSpec, load_model

GIB = 2**30


@dataclass(frozen=True)
class CapacityPlan:
    """Everything `memsim capacity` prints. Bytes are per GPU unless the name says otherwise."""

    model: ModelSpec
    gpu: str
    tp: int
    context: int
    batch: int | None  # as given; None: not given
    block_size: int
    weight_dtype: str
    layout: KVLayout
    weights_bytes_total: int
    budget: MemoryBudget
    max_batch: int  # sequences of `context` tokens that fit (paged, block_size)
    max_context: int  # tokens each of `batch` (or 1) sequences can have
    waste: AllocationWaste | None
    sharing: tuple[SharingSavings, ...]
    decode: StepTime
    prefill: StepTime
    decode_algo: str
    prefill_algo: str
    engine: str
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def batch_for_timing(self) -> int:
        """The batch the decode step is predicted at: the one given, else the largest that fits (at least 1)."""
        return self.batch if self.batch is not None else max(1, self.max_batch)

    @property
    def batch_fits(self) -> bool:
        return self.max_batch >= self.batch_for_timing

    @property
    def kv_bytes_per_sequence(self) -> int:
        """One sequence of `context` tokens on one GPU."""
        return self.context * self.layout.bytes_per_token_per_gpu

    @property
    def decode_tokens_per_s(self) -> float:
        return self.batch_for_timing / self.decode.total_s

    @property
    def decode_attention_tokens_per_s(self) -> float:
        return self.batch_for_timing / self.decode.attention_s

    def verdict(self) -> str:
        """One line: does the batch fit at the context, with the numbers."""
        b, per_seq = self.batch_for_timing, self.kv_bytes_per_sequence
        if self.max_batch == 0:
            return (f"no sequence of {self.context} tokens fits: one needs {per_seq / GIB:.2f} GiB of KV cache "
                    f"per GPU, {self.budget.kv_bytes / GIB:.2f} GiB are left after weights and reserve; "
                    f"at most {self.max_context} tokens fit")
        if not self.batch_fits:
            return (f"batch {b} at {self.context} tokens does not fit: it needs {b * per_seq / GIB:.2f} GiB of KV "
                    f"cache per GPU, {self.budget.kv_bytes / GIB:.2f} GiB are left; at most {self.max_batch} "
                    f"sequences fit")
        return (f"fits: up to {self.max_batch} sequences of {self.context} tokens "
                f"({self.budget.kv_bytes / GIB:.2f} GiB of KV cache per GPU)")

    def as_dict(self) -> dict:
        per_gpu = self.layout.bytes_per_token_per_gpu
        b = self.batch_for_timing
        return {
            "model": self.model.as_dict(), "gpu": self.gpu, "tp": self.tp, "context": self.context,
            "batch": self.batch, "block_size": self.block_size, "weight_dtype": self.weight_dtype,
            "kv": dict(self.layout.as_dict(), bytes_per_sequence_per_gpu=self.kv_bytes_per_sequence,
                       bytes_per_sequence=self.context * self.layout.bytes_per_token,
                       bytes_total_per_gpu=b * self.kv_bytes_per_sequence,
                       bytes_total_all_gpus=b * self.context * self.layout.bytes_per_token_all_gpus),
            "weights": {"bytes_total": self.weights_bytes_total, "bytes_per_gpu": self.budget.weights_bytes},
            "memory": self.budget.as_dict(),
            "max_batch": self.max_batch, "max_context": self.max_context,
            "max_context_batch": self.batch or 1, "batch_fits": self.batch_fits, "verdict": self.verdict(),
            "waste": self.waste.as_dict(per_gpu) if self.waste else None,
            "sharing": [s.as_dict(per_gpu) for s in self.sharing],
            "decode": dict(self.decode.as_dict(), batch=b, algo=self.decode_algo, engine=self.engine,
                           tokens_per_s=self.decode_tokens_per_s,
                           attention_only_tokens_per_s=self.decode_attention_tokens_per_s),
            "prefill": dict(self.prefill.as_dict(), algo=self.prefill_algo, engine=self.engine,
                            time_to_first_token_s=self.prefill.total_s),
            "notes": list(self.notes),
        }


def weights_do_not_fit(model: ModelSpec, gpu: GPUSpec, tp: int, dtype: str, budget: MemoryBudget) -> str:
    where = f"one {gpu.name}" if tp == 1 else f"{tp} x {gpu.name} (tp={tp})"
    need = f"{budget.weights_bytes / GIB:.1f} GiB" + ("" if tp == 1 else " per GPU")
    if budget.weights_bytes > budget.hbm_bytes:
        return (f"{model.name} in {dtype} does not fit on {where}: its weights alone need {need}, more than "
                f"the {budget.hbm_bytes / GIB:.1f} GiB of HBM; use more GPUs (--tp) or a narrower --weight-dtype")
    return (f"{model.name} in {dtype} does not fit on {where}: its weights need {need}, more than the "
            f"{budget.usable_bytes / GIB:.1f} GiB left after the {budget.reserve_fraction:.0%} reserve for "
            f"activations and runtime (--reserve); use more GPUs (--tp) or a narrower --weight-dtype")


def _notes(model: ModelSpec, layout: KVLayout, context: int, reserve: float, engine: str) -> tuple[str, ...]:
    notes = [f"reserve: {reserve:.0%} of each GPU's HBM is kept for activations and the runtime "
             f"(vLLM's default gpu_memory_utilization 0.9 keeps the same); change it with --reserve"]
    if layout.replicated:
        notes.append(f"{model.name} has {model.kv_heads} K/V heads for tp = {layout.tp} GPUs: each K/V head is "
                     f"replicated on {layout.tp // model.kv_heads} GPUs, so the GPUs together hold "
                     f"{layout.tp // model.kv_heads}x the model's KV cache")
    if context > model.max_context:
        notes.append(f"context {context} exceeds {model.name}'s {model.max_context}-token maximum "
                     f"(max_position_embeddings); computed as given")
    if model.sliding_window:
        notes.append(f"{model.name} attends within a {model.sliding_window}-token window; a rolling cache could keep "
                     f"only that many tokens, this plan keeps every token (as paged servers allocate)")
    notes.append(f"times: attention from memsim.predict (engine {engine}) for one layer x {model.layers} layers, plus "
                 f"weights as a roofline: max(weight bytes / HBM bandwidth, 2 x params x tokens / tensor FLOP/s); "
                 f"not included: tensor-parallel all-reduce, activations' traffic, norms, sampling, scheduling")
    if model.is_moe:
        notes.append(f"{model.name} reads only the experts its tokens are routed to: expected share with uniform "
                     f"routing of {model.experts_per_token} of {model.experts} experts per token")
    return tuple(notes)


def _lengths(lengths, context: int) -> np.ndarray | None:
    return None if lengths is None else check_lengths(np.asarray(lengths), context)


def plan(model: ModelSpec | str, gpu: GPUSpec | str = "H100-SXM5-80GB", *, tp: int = 1, context: int | None = None,
         batch: int | None = None, kv_dtype: str = "bf16", weight_dtype: str = "bf16", dtype: str = "bf16",
         block_size: int = 16, lengths=None, samples: int = 4, beam_width: int = 4, prompt_len: int | None = None,
         gen_len: int | None = None, reserve_fraction: float = DEFAULT_RESERVE_FRACTION, engine: str = "analytic",
         decode_algo: str = DEFAULT_DECODE_ALGO, prefill_algo: str = DEFAULT_PREFILL_ALGO,
         kv_group_size: int = DEFAULT_KV_GROUP_SIZE, calibrated: bool = True) -> CapacityPlan:
    """Plan serving `model` on `tp` GPUs of `gpu` at `context` tokens (default: the model's maximum).

    `lengths` (ints [requests], each <= context) adds contiguous-vs-paged waste; `samples` and `beam_width`
    sequences share a prompt of `prompt_len` tokens (default context // 2) and each generate `gen_len`
    (default the rest of the context). Raises MemsimError when the weights alone do not fit."""
    model = model if isinstance(model, ModelSpec) else load_model(model)
    spec = gpu if isinstance(gpu, GPUSpec) else load_gpu(gpu)
    context = model.max_context if context is None else context
    prompt_len, gen_len = _prompt_and_generation(context, prompt_len, gen_len)
    if batch is not None:
        _positive("batch", batch)
    check_block_size(block_size)
    layout = KVLayout(model, kv_dtype, tp, kv_group_size)
    budget = MemoryBudget(spec.hbm_bytes, weight_bytes_per_gpu(model.params, weight_dtype, tp), reserve_fraction)
    if not budget.weights_fit:
        raise MemsimError(weights_do_not_fit(model, spec, tp, weight_dtype, budget))
    per_token = layout.bytes_per_token_per_gpu
    most = max_batch(budget.kv_bytes, per_token, context, block_size)
    lengths = _lengths(lengths, context)
    timing_batch = batch if batch is not None else max(1, most)
    times = dict(engine=engine, weight_dtype=weight_dtype, dtype=dtype, calibrated=calibrated)
    return CapacityPlan(
        model=model, gpu=spec.name, tp=tp, context=context, batch=batch, block_size=block_size,
        weight_dtype=weight_dtype, layout=layout, weights_bytes_total=weight_bytes(model.params, weight_dtype),
        budget=budget, max_batch=most, max_context=max_context(budget.kv_bytes, per_token, batch or 1, block_size),
        waste=allocation_waste(lengths, context, block_size) if lengths is not None else None,
        sharing=(sharing_savings("parallel sampling", samples, prompt_len, gen_len, block_size),
                 sharing_savings("beam search", beam_width, prompt_len, gen_len, block_size)),
        decode=decode_step(layout, spec, timing_batch, context, algo=decode_algo, page_size=block_size, **times),
        prefill=prefill(layout, spec, prompt_len, algo=prefill_algo, **times),
        decode_algo=decode_algo, prefill_algo=prefill_algo, engine=engine,
        notes=_notes(model, layout, context, reserve_fraction, engine),
    )


def _prompt_and_generation(context: int, prompt_len: int | None, gen_len: int | None) -> tuple[int, int]:
    _positive("context", context)
    prompt_len = max(1, context // 2) if prompt_len is None else prompt_len
    _positive("prompt_len", prompt_len)
    gen_len = context - prompt_len if gen_len is None else gen_len
    if isinstance(gen_len, bool) or not isinstance(gen_len, int) or gen_len < 0:
        raise MemsimError(f"gen_len = {gen_len!r} must be a whole number >= 0 (prompt_len = {prompt_len}, "
                          f"context = {context})")
    if prompt_len + gen_len > context:
        raise MemsimError(f"prompt_len + gen_len = {prompt_len} + {gen_len} exceeds the context {context}; "
                          f"a sequence holds at most context tokens")
    return prompt_len, gen_len


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise MemsimError(f"{name} = {value!r} must be a positive whole number")
