"""KV-cache memory of one sequence against its context, for MHA, GQA and MQA variants of one model
and several element types: how much grouping K/V heads and narrowing their type save."""

import dataclasses

import numpy as np

from memsim.capacity.kv import KVLayout
from memsim.models.spec import ModelSpec
from memsim.plots import pyplot, save

GIB = 2**30
DTYPES = ("bf16", "fp8", "int4")
STYLES = {"bf16": "-", "fp16": "-", "fp32": "-.", "fp8": "--", "int8": "--", "int4": ":"}


def attention_variants(model: ModelSpec) -> dict[str, ModelSpec]:
    """The model as MHA (every q head its K/V head), its own GQA grouping (or 8 q heads per K/V head if
    it has none and 8 divides its heads), and MQA (one K/V head)."""
    variants = {"MHA": model.q_heads, "MQA": 1}
    if model.attention == "GQA":
        variants["GQA"] = model.kv_heads
    elif model.q_heads % 8 == 0 and model.q_heads > 8:
        variants["GQA"] = model.q_heads // 8
    out = {}
    for kind in ("MHA", "GQA", "MQA"):
        if kind in variants:
            own = " (the model's)" if variants[kind] == model.kv_heads else ""
            label = f"{kind}, {variants[kind]} K/V heads{own}"
            out[label] = dataclasses.replace(model, kv_heads=variants[kind])
    return out


def kv_memory_plot(model: ModelSpec, path, max_context: int | None = None, dtypes=DTYPES,
                   kv_budget_bytes: int | None = None, budget_label: str = "KV budget") -> str:
    """Write a PNG of the whole model's KV GiB per sequence (y, log; each K/V head counted once) against
    context (x, log2), one line per attention variant and dtype; `kv_budget_bytes` draws a horizontal line."""
    plt = pyplot()
    top = max_context or model.max_context
    contexts = np.unique(np.geomspace(min(1024, top), top, 24).astype(np.int64))
    fig, ax = plt.subplots(figsize=(8, 5))
    for (label, variant), colour in zip(attention_variants(model).items(), ("C0", "C1", "C2")):
        for dtype in dtypes:
            per_token = KVLayout(variant, dtype).bytes_per_token
            ax.plot(contexts, contexts * per_token / GIB, STYLES.get(dtype, "-"), color=colour,
                    label=f"{label}, {dtype}")
    if kv_budget_bytes:
        ax.axhline(kv_budget_bytes / GIB, color="black", linewidth=1,
                   label=f"{budget_label} ({kv_budget_bytes / GIB:.1f} GiB)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("KV cache per sequence, whole model (GiB)")
    ax.set_title(f"{model.name}: KV cache per sequence ({model.layers} layers, head_dim {model.head_dim})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return save(fig, path)
