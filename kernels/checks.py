"""What the kernel modules share outside their kernels: checks of the tensors a public op is given, and the
few small rules every launcher applies (the padded head dim a tile holds, the precision of tl.dot, the
log2 constants of exp2-based softmax).

Every check raises ValueError with one line that names the value and says what would be right.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # what the kernels take; bf16 runs on a GPU only
MAX_HEAD_DIM = 256  # the largest head dim any kernel's tiles are sized for
MIN_DOT = 16  # tl.dot needs every tile dimension >= 16

LOG2E = 1.4426950408889634  # exp(x) = exp2(x * log2(e)): the kernels work in log2
LN2 = tl.constexpr(0.6931471805599453)  # log2 -> natural log, for the LSE at every public boundary


def check_qkv(q: Tensor, k: Tensor, v: Tensor, *, same_length: bool = False) -> None:
    """q [B, Hq, Nq, D], k and v [B, Hkv, Nk, D], Hq a multiple of Hkv, every dim >= 1, D <= MAX_HEAD_DIM, one
    dtype of DTYPES on one device; same_length: Nk must equal Nq (one sequence, as linear attention has)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name} has shape {tuple(t.shape)}; expected 4 dims [B, H, N, D]")
        if t.dtype not in DTYPES:
            raise ValueError(f"{name}.dtype = {t.dtype}; expected one of float16, bfloat16, float32")
    if k.shape != v.shape:
        raise ValueError(f"k shape {tuple(k.shape)} != v shape {tuple(v.shape)}; expected one shape (the value dim "
                         f"equals the head dim)")
    if min(q.shape) < 1 or min(k.shape) < 1:
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)} have an empty dim; every dim must be >= 1")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise ValueError(f"dtypes q {q.dtype}, k {k.dtype}, v {v.dtype} differ; pass one dtype")
    if q.device != k.device or q.device != v.device:
        raise ValueError(f"devices q {q.device}, k {k.device}, v {v.device} differ; pass one device")
    (batch, q_heads, q_len, head_dim), kv_len = q.shape, k.shape[2]
    if k.shape[0] != batch or k.shape[3] != head_dim or (same_length and kv_len != q_len):
        length = q_len if same_length else "Nk"
        raise ValueError(f"k shape {tuple(k.shape)} does not fit q shape {tuple(q.shape)}; expected "
                         f"[{batch}, Hkv, {length}, {head_dim}]")
    if q_heads % k.shape[1]:
        raise ValueError(f"q heads = {q_heads} must be a multiple of kv heads = {k.shape[1]}")
    if head_dim > MAX_HEAD_DIM:
        raise ValueError(f"head dim D = {head_dim}; expected 1 <= D <= {MAX_HEAD_DIM}")


def check_head_offsets(q: Tensor, k: Tensor) -> None:
    """For kernels whose offsets inside one head are int32 (the head's base is int64): N * D < 2^31."""
    elements = max(q.shape[2], k.shape[2]) * q.shape[3]
    if elements >= 2 ** 31:
        raise ValueError(f"N * D = {elements} per head; expected < 2^31 (offsets inside a head are int32)")


def check_output(name: str, t: Tensor | None, shape: tuple, dtype: torch.dtype, device) -> None:
    """A preallocated output (None: none given) must have the shape, dtype and device the op writes."""
    if t is None:
        return
    if tuple(t.shape) != tuple(shape) or t.dtype != dtype or t.device != torch.device(device):
        raise ValueError(f"{name} is {tuple(t.shape)} {t.dtype} on {t.device}; expected {tuple(shape)} {dtype} "
                         f"on {device}")


def output_like(out: Tensor | None, like: Tensor, name: str = "out") -> Tensor:
    """`out` checked against `like`'s shape, dtype and device, or a fresh contiguous tensor like it."""
    check_output(name, out, like.shape, like.dtype, like.device)
    return torch.empty_like(like, memory_format=torch.contiguous_format) if out is None else out


def check_tile(value: int, name: str) -> None:
    """A tile size given by the caller: a power of two >= MIN_DOT (tl.arange and tl.dot tiles)."""
    if value < MIN_DOT or value & (value - 1):
        raise ValueError(f"{name} = {value}; expected a power of two >= {MIN_DOT}")


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get exact fp32 dots; fp16/bf16 run on tensor cores with fp32 accumulation."""
    return "ieee" if dtype == torch.float32 else "tf32"


def head_block(head_dim: int) -> int:
    """The padded head dim a tile holds: a power of two, at least MIN_DOT (tl.dot's smallest K)."""
    return max(MIN_DOT, triton.next_power_of_2(head_dim))
