"""FP8 (e4m3) FlashAttention-2 forward with per-block scales, in Triton.

Quantisation (block quantisation as in FlashAttention-3, Shah et al. 2024, section 3.3): a tensor x [B, H, N, D]
is cut along the tokens into blocks of `block` tokens (the last one may be shorter); each (batch, head, block)
gets one fp32 scale = max |x| over the block's tokens and all D, divided by 448 (the largest finite e4m3fn),
and x ~ x_fp8 * scale. Q uses blocks of the kernel's BLOCK_M query rows, K and V blocks of its BLOCK_N keys,
so a program applies one Q scale for its whole tile and one K and one V scale per K/V step:
  q_scale [B, Hq, cdiv(Nq, q_block)], k_scale and v_scale [B, Hkv, cdiv(Nk, kv_block)].

Kernel: the FlashAttention-2 schedule of kernels.flash2 (grid (cdiv(Nq, BLOCK_M), B * Hq), Q tile on chip,
online softmax in fp32, causal split into full and masked key blocks), with both matmuls on e4m3 tensor cores
and fp32 accumulation: S = (Q8 K8^T) * q_scale * k_scale, then O += (P8 V8) * v_scale. P is cast to e4m3 scaled
by 2^8, which keeps probabilities down to 2^-14 in e4m3's normal range (plain P in [0, 1] would leave everything
below 2^-6 subnormal); the row sum l is kept in the same units, so the scaling cancels in O = acc / l.
Output bf16 or fp16; LSE [B, Hq, Nq] fp32, natural log. Fully masked rows: O = 0, LSE = -inf.

On Hopper, e4m3 wgmma wants both operands K-major: K [.., Nk, D] with D contiguous is, V is K-major when its
tokens are contiguous (quantize_fp8(v, block, token_major=True); the Triton tutorial 06-fused-attention
stores V that way for fp8). The kernel honours any strides.
"""

import math

import torch
import triton
import triton.language as tl

from kernels.flash2 import (LN2, LOG2E, MAX_HEAD_DIM, MIN_HEAD_DIM, _check_out, _check_tensor, _key_blocks,
                            _load_rows, _mask_bounds, _padded_head_dim, _program_heads, _store_rows, _visible)
from kernels.launch import INTERPRETING, LaunchConfig

E4M3_MAX = 448.0  # largest finite float8_e4m3fn
Q_BLOCK = 128  # default query rows per scale = BLOCK_M
KV_BLOCK = 128  # default keys per scale = BLOCK_N
MIN_BLOCK = 32  # e4m3 wgmma reduces over 32 elements: P8 V8 needs BLOCK_N >= 32
P_LOG2_SCALE = tl.constexpr(8.0)  # P8 = e4m3(P * 2^8): P in [2^-14, 1] is normal in e4m3; 2^8 < 448
OUT_DTYPES = (torch.bfloat16, torch.float16)
# (num_warps, num_stages) on sm_90 by padded head dim: e4m3 tiles take half the bytes of bf16 ones, so 128 x 128
# tiles with 3 stages hold 112 KiB at d = 128 (Q, plus 3 K and V tiles).
WARPS_STAGES_SM90 = {32: (4, 3), 64: (4, 3), 128: (8, 3), 256: (8, 2)}

_compiled_shared_bytes: dict[tuple, int] = {}
_recent_launches: list[LaunchConfig] = []


# ----------------------------------------------------------------------------------------------------------------
# Quantiser
# ----------------------------------------------------------------------------------------------------------------

def _check_block(name: str, block) -> None:
    if isinstance(block, bool) or not isinstance(block, int) or block <= 0:
        raise ValueError(f"{name} = {block!r}; pass a whole number of tokens > 0")


def _block_amax(x: torch.Tensor, block: int) -> torch.Tensor:
    """max |x| per (batch, head, block of tokens): x [B, H, N, D] -> [B, H, cdiv(N, block)] fp32."""
    batch, heads, tokens, dim = x.shape
    blocks = triton.cdiv(tokens, block)
    padded = torch.zeros(batch, heads, blocks * block, dim, dtype=torch.float32, device=x.device)
    padded[:, :, :tokens] = x.abs().to(torch.float32)
    return padded.view(batch, heads, blocks, block * dim).amax(dim=-1)


def _per_token(scales: torch.Tensor, block: int, tokens: int) -> torch.Tensor:
    """[B, H, blocks] -> [B, H, tokens, 1]: each token's block scale."""
    return scales.repeat_interleave(block, dim=2)[:, :, :tokens, None]


def quantize_fp8(x: torch.Tensor, block: int, *, token_major: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, H, N, D] (any float dtype) -> (x_fp8 [B, H, N, D] float8_e4m3fn, scales [B, H, cdiv(N, block)] fp32)
    with x ~ x_fp8 * scale of the token's block; scale = max |x| over the block / 448 (1 for an all-zero block).
    Error per element: at most 2^-4 |x| (3 mantissa bits, round to nearest) or 2^-10 * scale (e4m3 subnormals).
    token_major: lay x_fp8 out with the tokens contiguous (stride 1 along N), the K-major V of the module
    docstring; the shape is the same."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.dtype.is_floating_point:
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x is {got}; pass a float tensor [B, H, N, D]")
    _check_block("block", block)
    amax = _block_amax(x, block)
    scales = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    scaled = (x.to(torch.float32) / _per_token(scales, block, x.shape[2])).clamp(-E4M3_MAX, E4M3_MAX)
    x_fp8 = scaled.to(torch.float8_e4m3fn)
    if token_major:
        x_fp8 = x_fp8.transpose(-1, -2).contiguous().transpose(-1, -2)
    return x_fp8, scales


def dequantize_fp8(x_fp8: torch.Tensor, scales: torch.Tensor, block: int) -> torch.Tensor:
    """The fp32 values x_fp8 [B, H, N, D] with scales [B, H, cdiv(N, block)] stand for."""
    _check_block("block", block)
    return x_fp8.to(torch.float32) * _per_token(scales.to(torch.float32), block, x_fp8.shape[2])


# ----------------------------------------------------------------------------------------------------------------
# Kernel
# ----------------------------------------------------------------------------------------------------------------

@triton.jit
def _round_to_e4m3(x):
    """x >= 0 rounded to the e4m3 grid in fp32 (3 mantissa bits; spacing 2^-9 below 2^-6). Only under the
    interpreter: its fp32 -> e4m3 cast drops the carry when rounding up to a power of two (1.96 -> 1.0, triton
    3.9), while values already on the grid convert exactly. The GPU casts with cvt.rn (round to nearest)."""
    exponent = tl.maximum(tl.floor(tl.log2(tl.maximum(x, 1e-30))), -6.0)
    spacing = tl.exp2(exponent - 3.0)
    return tl.floor(x / spacing + 0.5) * spacing


@triton.jit
def _fp8_step(acc, m_i, l_i, q, k, v, k_scale, v_scale, rows, keys, k_len, shift, left, right, qk_scale2,
              MASKED: tl.constexpr, ROUND_P: tl.constexpr):
    """One K/V block: S in log2 units from the e4m3 product, P8 = e4m3(2^8 P), acc += (P8 V8) * v_scale."""
    s = tl.dot(q, tl.trans(k)) * (qk_scale2 * k_scale)
    if MASKED:
        s = tl.where(_visible(rows[:, None] + shift, keys[None, :], k_len, left, right), s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    if MASKED:
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_ref = m_new
    alpha = tl.exp2(m_i - m_ref)
    p = tl.exp2(s - m_ref[:, None] + P_LOG2_SCALE)  # P * 2^8
    l_i = l_i * alpha + tl.sum(p, 1)
    if ROUND_P:
        p = _round_to_e4m3(p)
    acc = acc * alpha[:, None] + tl.dot(p.to(tl.float8e4nv), v) * v_scale
    return acc, m_new, l_i


@triton.jit
def _fp8_blocks(acc, m_i, l_i, q, K, V, KS, VS, k_offsets, v_offsets, stride_kn, stride_vn, block_lo, block_hi,
                rows, k_len, shift, left, right, qk_scale2, d_mask,
                BLOCK_N: tl.constexpr, MASKED: tl.constexpr, PAD_D: tl.constexpr, ROUND_P: tl.constexpr):
    local = tl.arange(0, BLOCK_N)
    for block in tl.range(block_lo, block_hi):
        n0 = block * BLOCK_N
        keys = n0 + local
        k = _load_rows(K + n0.to(tl.int64) * stride_kn + k_offsets, keys, k_len, d_mask, MASKED, PAD_D)
        v = _load_rows(V + n0.to(tl.int64) * stride_vn + v_offsets, keys, k_len, d_mask, MASKED, PAD_D)
        acc, m_i, l_i = _fp8_step(acc, m_i, l_i, q, k, v, tl.load(KS + block), tl.load(VS + block), rows, keys,
                                  k_len, shift, left, right, qk_scale2, MASKED, ROUND_P)
    return acc, m_i, l_i


@triton.jit
def _flash2_fp8_fwd(Q, K, V, QS, KS, VS, O, LSE,
                    stride_qb, stride_qh, stride_qm, stride_qd, stride_kb, stride_kh, stride_kn, stride_kd,
                    stride_vb, stride_vh, stride_vn, stride_vd, stride_ob, stride_oh, stride_om, stride_od,
                    stride_lb, stride_lh, stride_lm,
                    q_heads, kv_heads, group, q_len, k_len, shift, left, right, scale2, q_blocks, k_blocks,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    ROUND_P: tl.constexpr):
    """One (query block, batch * q head); scales contiguous: QS [B, Hq, q_blocks], KS and VS [B, Hkv, k_blocks]."""
    PAD_D: tl.constexpr = BLOCK_D != HEAD_DIM
    q_block = tl.program_id(0)
    m0 = q_block * BLOCK_M
    batch, head, kv_head = _program_heads(q_heads, group)
    local_m, local_n, cols = tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D)
    rows = m0 + local_m
    d_mask = cols < HEAD_DIM

    q_base = Q + batch * stride_qb + head * stride_qh + m0.to(tl.int64) * stride_qm
    q = _load_rows(q_base + local_m[:, None] * stride_qm + cols[None, :] * stride_qd, rows, q_len, d_mask, True, PAD_D)
    qk_scale2 = scale2 * tl.load(QS + (batch * q_heads + head) * q_blocks + q_block)
    K += batch * stride_kb + kv_head * stride_kh
    V += batch * stride_vb + kv_head * stride_vh
    KS += (batch * kv_heads + kv_head) * k_blocks
    VS += (batch * kv_heads + kv_head) * k_blocks
    k_offsets = local_n[:, None] * stride_kn + cols[None, :] * stride_kd
    v_offsets = local_n[:, None] * stride_vn + cols[None, :] * stride_vd

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    first, full_first, full_last, last = _key_blocks(m0, q_len, k_len, shift, left, right, BLOCK_M, BLOCK_N)
    acc, m_i, l_i = _fp8_blocks(acc, m_i, l_i, q, K, V, KS, VS, k_offsets, v_offsets, stride_kn, stride_vn, first,
                                full_first, rows, k_len, shift, left, right, qk_scale2, d_mask, BLOCK_N, True, PAD_D,
                                ROUND_P)
    acc, m_i, l_i = _fp8_blocks(acc, m_i, l_i, q, K, V, KS, VS, k_offsets, v_offsets, stride_kn, stride_vn,
                                full_first, full_last, rows, k_len, shift, left, right, qk_scale2, d_mask, BLOCK_N,
                                False, PAD_D, ROUND_P)
    acc, m_i, l_i = _fp8_blocks(acc, m_i, l_i, q, K, V, KS, VS, k_offsets, v_offsets, stride_kn, stride_vn,
                                full_last, last, rows, k_len, shift, left, right, qk_scale2, d_mask, BLOCK_N, True,
                                PAD_D, ROUND_P)

    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    o = acc / l_safe[:, None]  # the 2^8 of P8 is in both acc and l
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(l_safe) - P_LOG2_SCALE) * LN2)
    o_base = O + batch * stride_ob + head * stride_oh + m0.to(tl.int64) * stride_om
    _store_rows(o_base + local_m[:, None] * stride_om + cols[None, :] * stride_od, o.to(O.dtype.element_ty), rows,
                q_len, d_mask, PAD_D)
    tl.store(LSE + batch * stride_lb + head * stride_lh + rows.to(tl.int64) * stride_lm, lse, mask=rows < q_len)


# ----------------------------------------------------------------------------------------------------------------
# Host
# ----------------------------------------------------------------------------------------------------------------

def _warps_stages(head_dim: int) -> tuple[int, int]:
    return (4, 1) if INTERPRETING else WARPS_STAGES_SM90[_padded_head_dim(head_dim)]


def _check_blocks(q_block, kv_block) -> None:
    for name, block in (("q_block", q_block), ("kv_block", kv_block)):
        _check_block(name, block)
        if block < MIN_BLOCK or block & (block - 1):
            raise ValueError(f"{name} = {block}; it must be a power of two >= {MIN_BLOCK} (it is the kernel's tile)")


def _shared_key(q_block: int, kv_block: int, warps: int, stages: int, head_dim: int, out_dtype) -> tuple:
    return ("_flash2_fp8_fwd", q_block, kv_block, warps, stages, head_dim, out_dtype)


def launch_configs(q_shape, k_shape, *, q_block: int = Q_BLOCK, kv_block: int = KV_BLOCK, causal: bool = False,
                   out_dtype: torch.dtype = torch.bfloat16) -> list[LaunchConfig]:
    """The one launch for q [B, Hq, Nq, D], k/v [B, Hkv, Nk, D]: BLOCK_M = q_block, BLOCK_N = kv_block (the
    quantisation blocks). Shared memory estimate: the Q tile plus num_stages K and V tiles, one byte an element.
    causal is accepted so a caller can pass the op's keywords unchanged; the tiles do not depend on it."""
    _check_blocks(q_block, kv_block)
    batch, q_heads, q_len, head_dim = q_shape
    warps, stages = _warps_stages(head_dim)
    grid = (triton.cdiv(q_len, q_block), batch * q_heads)
    key = _shared_key(q_block, kv_block, warps, stages, head_dim, out_dtype)
    if key in _compiled_shared_bytes:
        return [LaunchConfig("_flash2_fp8_fwd", q_block, kv_block, warps, stages, grid, _compiled_shared_bytes[key],
                             "compiled")]
    estimate = (q_block + stages * 2 * kv_block) * _padded_head_dim(head_dim)
    return [LaunchConfig("_flash2_fp8_fwd", q_block, kv_block, warps, stages, grid, estimate, "estimate")]


def recent_launches() -> list[LaunchConfig]:
    """The configs the most recent flash_attention_fp8 call launched."""
    return list(_recent_launches)


def _check_fp8_inputs(q, k, v, q_scale, k_scale, v_scale, q_block, kv_block) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        _check_tensor(name, x, 4)
        if x.dtype != torch.float8_e4m3fn or x.device != q.device:
            raise ValueError(f"{name} is {x.dtype} on {x.device}; it must be float8_e4m3fn on {q.device}")
    if tuple(k.shape) != tuple(v.shape) or k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3]:
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}: k and v must match, and "
                         f"agree with q in batch and head dim")
    if not MIN_HEAD_DIM <= q.shape[3] <= MAX_HEAD_DIM:
        raise ValueError(f"head dim = {q.shape[3]}; it must be from {MIN_HEAD_DIM} to {MAX_HEAD_DIM}")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise ValueError(f"q heads = {q.shape[1]} must be a multiple of kv heads = {k.shape[1]}")
    _check_blocks(q_block, kv_block)
    batch, q_heads, q_len, _ = q.shape
    for name, scales, heads, tokens, block in (("q_scale", q_scale, q_heads, q_len, q_block),
                                               ("k_scale", k_scale, k.shape[1], k.shape[2], kv_block),
                                               ("v_scale", v_scale, k.shape[1], k.shape[2], kv_block)):
        _check_tensor(name, scales, 3)
        _check_out(name, scales, (batch, heads, triton.cdiv(tokens, block)), torch.float32, q.device)


def flash_attention_fp8(q, k, v, q_scale, k_scale, v_scale, *, q_block: int = Q_BLOCK, kv_block: int = KV_BLOCK,
                        causal: bool = False, scale: float | None = None, out_dtype: torch.dtype = torch.bfloat16,
                        return_lse: bool = False, out=None, lse_out=None):
    """Attention on e4m3 inputs with per-block scales (module docstring), fp32 accumulation.

    q [B, Hq, Nq, D], k and v [B, Hkv, Nk, D] float8_e4m3fn; q_scale [B, Hq, cdiv(Nq, q_block)],
    k_scale and v_scale [B, Hkv, cdiv(Nk, kv_block)] fp32 (as quantize_fp8 makes them). causal: key j visible
    iff j <= i + Nk - Nq. scale: default 1 / sqrt(D). Returns O [B, Hq, Nq, D] in out_dtype (bf16 or fp16),
    and LSE [B, Hq, Nq] fp32 (natural log) with return_lse; out, lse_out: preallocated outputs."""
    _check_fp8_inputs(q, k, v, q_scale, k_scale, v_scale, q_block, kv_block)
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype = {out_dtype}; use torch.bfloat16 or torch.float16")
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise ValueError(f"scale = {scale!r}; pass a finite number or None (1 / sqrt(D))")
    batch, q_heads, q_len, head_dim = q.shape
    kv_heads, k_len = k.shape[1], k.shape[2]
    _check_out("out", out, q.shape, out_dtype, q.device)
    _check_out("lse_out", lse_out, (batch, q_heads, q_len), torch.float32, q.device)
    o = torch.empty(q.shape, dtype=out_dtype, device=q.device) if out is None else out
    lse = torch.empty((batch, q_heads, q_len), dtype=torch.float32, device=q.device) if lse_out is None else lse_out
    scale = head_dim ** -0.5 if scale is None else float(scale)
    left, right = _mask_bounds(q_len, k_len, causal, None)
    [config] = launch_configs(q.shape, k.shape, q_block=q_block, kv_block=kv_block, causal=causal, out_dtype=out_dtype)
    _recent_launches.clear()
    _launch(config, _shared_key(q_block, kv_block, config.num_warps, config.num_stages, head_dim, out_dtype),
            (q, k, v, q_scale.contiguous(), k_scale.contiguous(), v_scale.contiguous(), o, lse,
             *q.stride(), *k.stride(), *v.stride(), *o.stride(), *lse.stride(),
             q_heads, kv_heads, q_heads // kv_heads, q_len, k_len, k_len - q_len, left, right, scale * LOG2E.value,
             triton.cdiv(q_len, q_block), triton.cdiv(k_len, kv_block)),
            dict(HEAD_DIM=head_dim, BLOCK_D=_padded_head_dim(head_dim), BLOCK_M=q_block, BLOCK_N=kv_block,
                 ROUND_P=INTERPRETING))
    return (o, lse) if return_lse else o


def _launch(config: LaunchConfig, key: tuple, args: tuple, constexprs: dict) -> None:
    """Launch the kernel exactly as `config` says and remember what the compiler allocated."""
    if 0 in config.grid:
        return
    compiled = _flash2_fp8_fwd[config.grid](*args, num_warps=config.num_warps, num_stages=config.num_stages,
                                            **constexprs)
    launched = config.with_compiled(compiled)
    if launched.shared_mem_source == "compiled":
        _compiled_shared_bytes[key] = launched.shared_mem_bytes
    _recent_launches.append(launched)
