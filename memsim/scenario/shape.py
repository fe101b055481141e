"""The `shape:` of a scenario step: an attention call, [batch, heads, len, head_dim], written out or
taken from a model on a tensor-parallel group.

Written out, the keys are memsim.AttentionShape's fields (batch, q_heads, kv_heads, q_len, kv_len,
head_dim, dtype, kv_dtype, kv_group_size, kv_scale_dtype, causal, window); what is left out takes
AttentionShape's default. With `model:` (and `tp:`, default 1), the heads and head_dim are one GPU's share of one
layer, as memsim.capacity.KVLayout splits them (Megatron-style tensor parallelism).
"""

import dataclasses

from memsim.capacity.kv import KVLayout
from memsim.errors import MemsimError
from memsim.models import load_model
from memsim.scenario.schema import OMIT, Field, flag, mapping, named, one_of, whole
from memsim.workload.dtypes import COMPUTE_DTYPES, KV_DTYPES, SCALE_DTYPES
from memsim.workload.shape import AttentionShape

MODEL_KEYS = ("model", "tp")
HEAD_KEYS = ("q_heads", "kv_heads", "head_dim")  # what a model gives

SHAPE_FIELDS = {
    "model": Field(named(load_model, "model"), OMIT),
    "tp": Field(whole(1, 8), OMIT),
    "batch": Field(whole(1, 4), OMIT),
    "q_heads": Field(whole(1, 32), OMIT),
    "kv_heads": Field(whole(1, 8), OMIT),
    "q_len": Field(whole(1, 4096), OMIT),
    "kv_len": Field(whole(1, 4096), OMIT),
    "head_dim": Field(whole(1, 128), OMIT),
    "dtype": Field(one_of(COMPUTE_DTYPES, "dtype"), OMIT),
    "kv_dtype": Field(one_of(KV_DTYPES, "KV-cache dtype"), OMIT),
    "kv_group_size": Field(whole(1, 64), OMIT),
    "kv_scale_dtype": Field(one_of(SCALE_DTYPES, "KV-cache scale dtype"), OMIT),
    "causal": Field(flag, OMIT),
    "window": Field(whole(1, 4096), OMIT),
}


def shape_field(refused: dict[str, str] | None = None) -> Field:
    """The required `shape:` key; `refused` names keys the step sets itself (e.g. q_len, set by lengths)."""
    fields = {k: v for k, v in SHAPE_FIELDS.items() if k not in (refused or {})}
    check_keys = mapping(fields, refused)

    def check(value, where):
        shape = check_keys(value, where)
        if "model" in shape and any(k in shape for k in HEAD_KEYS):
            given = ", ".join(k for k in HEAD_KEYS if k in shape)
            raise MemsimError(f"{where.file}: {where.path}: give model (the heads come from it) or {given}, not both")
        if "tp" in shape and "model" not in shape:
            raise MemsimError(f"{where.file}: {where.key('tp').path} = {shape['tp']!r} needs a model to split "
                              f"over the GPUs; add model: or remove tp:")
        return shape
    return Field(check)


def build_shape(shape: dict, **lengths) -> AttentionShape:
    """The AttentionShape of a checked `shape:` mapping, with `lengths` (q_len, kv_len) put in."""
    given = {k: v for k, v in {**shape, **lengths}.items() if k not in MODEL_KEYS}
    if "model" not in shape:
        return AttentionShape(**given)
    model = shape["model"]
    base = AttentionShape(**given)  # dtypes, lengths and group size as given, heads replaced below
    layout = KVLayout(model, base.kv_dtype, shape.get("tp", 1), base.kv_group_size)
    return dataclasses.replace(base, q_heads=layout.q_heads_per_gpu, kv_heads=layout.kv_heads_per_gpu,
                               head_dim=model.head_dim)
