"""FlashAttention-1's forward (Dao et al. 2022, Algorithm 1) in its own loop order: key/value blocks
outer, query blocks inner, with O, l (row sum) and m (row max) kept in HBM between outer steps.

Two launches, as memsim models them (memsim/algorithms/flash1.py, memsim/schedules/flash1.py):

    flash1_init  Algorithm 1, line 2: O = 0 (the fp32 scratch), l = 0, m = -inf, written to HBM;
                 PyTorch's elementwise grid, 4 warps x 32 threads x 4 elements per program
    flash1_fwd   one program per (batch, q head) walking the outer loop sequentially

Where data lives in flash1_fwd: K_j and V_j are loaded once per outer step j and stay on chip for the
whole inner loop; each inner step i loads Q_i, O_i (the fp32 scratch), l_i and m_i from memory, folds in
S_ij = Q_i K_j^T, and stores O_i, l_i, m_i back (lines 8-13). At the last key block a query block sees,
O_i goes to the output in the input dtype instead of the scratch (FA1's o_tmp is fp32: flash-attention
v1, csrc/flash_attn/fmha_api.cpp). Causal (aligned to the end): for key block j the inner loop starts at
the first query block some row of which sees block j; query blocks that see no key at all are written as
O 0, LSE -inf before the outer loop (memsim writes nothing for them).

m is kept in the log2 domain of the scaled scores (the kernel uses exp2); the LSE it returns is natural log.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.checks import LN2, LOG2E, check_output, check_qkv, check_tile, dot_precision, head_block
from kernels.launch import INTERPRETING, LaunchConfig, element_bytes, launch

# flash-attention v1 on sm80 (memsim.algorithms.flash1.default_tiles): FMHA_kernel_traits with 16 query rows
# per inner step, 256 keys per block for d <= 64 and 128 for larger d, 4 warps, no pipelining
# (csrc/flash_attn/src/fmha_fwd_hdim{32,64,128}.cu). The interpreter runs 16-key blocks so that short
# test sequences span several outer steps.
FLASH1_BLOCK_M = 16
FLASH1_WARPS = 4
FLASH1_STAGES = 1
INTERPRETER_BLOCK_N = 16
SMEM_PER_BLOCK_BYTES = 232448  # H100 opt-in shared memory per block (shared/DESIGN.md)
# PyTorch's elementwise launch (aten/src/ATen/native/cuda/thread_constants.h), as memsim.algorithms.pointwise.
INIT_WARPS = 4
INIT_BLOCK = INIT_WARPS * 32 * 4


@triton.jit
def flash1_init(o_ptr, l_ptr, m_ptr, o_elements, rows, BLOCK: tl.constexpr):
    """Algorithm 1, line 2, over one flat index space: O scratch elements, then l, then m."""
    index = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    tl.store(o_ptr + index, tl.zeros((BLOCK,), tl.float32), mask=index < o_elements)
    row = index - o_elements
    tl.store(l_ptr + row, tl.zeros((BLOCK,), tl.float32), mask=(row >= 0) & (row < rows))
    row = row - rows
    tl.store(m_ptr + row, tl.full((BLOCK,), float("-inf"), tl.float32), mask=(row >= 0) & (row < rows))


@triton.jit
def _empty_blocks(o_base, lse_base, stride_om, stride_od, stride_ln, blocks, head_dim,
                  BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, WRITE_LSE: tl.constexpr):
    """Query blocks 0 .. blocks-1 see no key (causal, Nq > Nk): O 0 and LSE -inf."""
    dims = tl.arange(0, BLOCK_D)
    for i in range(0, blocks):
        rows = i * BLOCK_M + tl.arange(0, BLOCK_M)
        o_rows = o_base + rows[:, None].to(tl.int64) * stride_om + dims[None, :] * stride_od
        tl.store(o_rows, tl.zeros((BLOCK_M, BLOCK_D), o_base.dtype.element_ty), mask=dims[None, :] < head_dim)
        if WRITE_LSE:
            tl.store(lse_base + rows.to(tl.int64) * stride_ln, tl.full((BLOCK_M,), float("-inf"), tl.float32))


@triton.jit
def _inner_step(q_base, acc_base, l_base, m_base, o_base, lse_base, k, v, i, j, stride_qn, stride_qd,
                stride_om, stride_od, stride_ln, q_len, kv_len, head_dim, scale_log2, is_last,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
                WRITE_LSE: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Algorithm 1, lines 8-13, for query block i against the on-chip K_j [BLOCK_D, BLOCK_N] (transposed)
    and V_j [BLOCK_N, BLOCK_D]."""
    rows = i * BLOCK_M + tl.arange(0, BLOCK_M)
    keys = j * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < q_len
    in_tile = row_ok[:, None] & (dims[None, :] < head_dim)
    tile = rows[:, None].to(tl.int64) * head_dim + dims[None, :]  # the fp32 scratch is [Nq, D] per head
    q = tl.load(q_base + rows[:, None].to(tl.int64) * stride_qn + dims[None, :] * stride_qd,
                mask=in_tile, other=0.0)
    o_prev = tl.load(acc_base + tile, mask=in_tile, other=0.0)
    l_prev = tl.load(l_base + rows, mask=row_ok, other=0.0)
    m_prev = tl.load(m_base + rows, mask=row_ok, other=float("-inf"))
    s = tl.dot(q, k, input_precision=DOT_PRECISION) * scale_log2
    seen = keys[None, :] < kv_len
    if CAUSAL:
        seen = seen & (keys[None, :] <= rows[:, None] + (kv_len - q_len))
    s = tl.where(seen, s, float("-inf"))
    # m_new = max(m_i, rowmax S_ij); e^(m~ - m_new) P~_ij is computed as one exp2 of S_ij - m_new.
    m_new = tl.maximum(m_prev, tl.max(s, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row that has seen no key yet
    p = tl.exp2(s - m_safe[:, None])
    carried = l_prev * tl.exp2(m_prev - m_safe)  # l_i e^(m_i - m_new)
    l_new = carried + tl.sum(p, axis=1)
    inv = tl.where(l_new > 0.0, 1.0 / tl.where(l_new > 0.0, l_new, 1.0), 0.0)
    pv = tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    o_new = (carried[:, None] * o_prev + pv) * inv[:, None]
    if is_last:  # the last key block this query block sees: O in the input dtype
        o_rows = o_base + rows[:, None].to(tl.int64) * stride_om + dims[None, :] * stride_od
        tl.store(o_rows, o_new.to(o_base.dtype.element_ty), mask=in_tile)
        if WRITE_LSE:
            lse = tl.where(l_new > 0.0, (m_safe + tl.log2(tl.where(l_new > 0.0, l_new, 1.0))) * LN2, float("-inf"))
            tl.store(lse_base + rows.to(tl.int64) * stride_ln, lse, mask=row_ok)
    else:
        tl.store(acc_base + tile, o_new, mask=in_tile)
    tl.store(l_base + rows, l_new, mask=row_ok)
    tl.store(m_base + rows, m_new, mask=row_ok)


@triton.jit
def flash1_fwd(q_ptr, k_ptr, v_ptr, o_ptr, acc_ptr, l_ptr, m_ptr, lse_ptr,
               stride_qb, stride_qh, stride_qn, stride_qd,
               stride_kb, stride_kh, stride_kn, stride_kd,
               stride_vb, stride_vh, stride_vn, stride_vd,
               stride_ob, stride_oh, stride_om, stride_od,
               stride_lb, stride_lh, stride_ln,
               q_heads, group, q_len, kv_len, head_dim, scale_log2,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
               WRITE_LSE: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """One (batch, q head): for each key block j (outer), for each query block i that sees it (inner)."""
    head = tl.program_id(0)
    b = (head // q_heads).to(tl.int64)
    h = (head % q_heads).to(tl.int64)
    q_base = q_ptr + b * stride_qb + h * stride_qh
    k_base = k_ptr + b * stride_kb + (h // group) * stride_kh
    v_base = v_ptr + b * stride_vb + (h // group) * stride_vh
    o_base = o_ptr + b * stride_ob + h * stride_oh
    lse_base = lse_ptr + b * stride_lb + h * stride_lh
    acc_base = acc_ptr + head.to(tl.int64) * q_len * head_dim  # the fp32 scratch [B * Hq, Nq, D]
    l_base = l_ptr + head.to(tl.int64) * q_len
    m_base = m_ptr + head.to(tl.int64) * q_len
    t_r = tl.cdiv(q_len, BLOCK_M)
    t_c = tl.cdiv(kv_len, BLOCK_N)
    shift = kv_len - q_len  # causal: query row r sees key c iff c <= r + shift
    if CAUSAL:
        _empty_blocks(o_base, lse_base, stride_om, stride_od, stride_ln, tl.maximum(-shift, 0) // BLOCK_M,
                      head_dim, BLOCK_M, BLOCK_D, WRITE_LSE)
    dims = tl.arange(0, BLOCK_D)
    for j in range(0, t_c):
        keys = j * BLOCK_N + tl.arange(0, BLOCK_N)
        k = tl.load(k_base + keys[None, :].to(tl.int64) * stride_kn + dims[:, None] * stride_kd,
                    mask=(keys[None, :] < kv_len) & (dims[:, None] < head_dim), other=0.0)  # K_j^T [BLOCK_D, BLOCK_N]
        v = tl.load(v_base + keys[:, None].to(tl.int64) * stride_vn + dims[None, :] * stride_vd,
                    mask=(keys[:, None] < kv_len) & (dims[None, :] < head_dim), other=0.0)  # on chip all outer step
        first = 0
        if CAUSAL:
            first = tl.maximum(j * BLOCK_N - shift, 0) // BLOCK_M
        for i in range(first, t_r):
            is_last = j == t_c - 1
            if CAUSAL:
                last_row = tl.minimum((i + 1) * BLOCK_M, q_len) - 1
                is_last = j == tl.minimum(t_c - 1, (last_row + shift) // BLOCK_N)
            _inner_step(q_base, acc_base, l_base, m_base, o_base, lse_base, k, v, i, j, stride_qn, stride_qd,
                        stride_om, stride_od, stride_ln, q_len, kv_len, head_dim, scale_log2, is_last,
                        BLOCK_M, BLOCK_N, BLOCK_D, CAUSAL, WRITE_LSE, DOT_PRECISION)
        # The next outer step re-reads O_i, l_i, m_i that other threads of this program stored.
        tl.debug_barrier()


def flash1_tiles(head_dim: int, dtype: torch.dtype) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N): FA1's 16 x 256 (d <= 64) or 16 x 128, halving BLOCK_N while K_j and V_j would
    not fit in shared memory (fp32, large d)."""
    if INTERPRETING:
        return FLASH1_BLOCK_M, INTERPRETER_BLOCK_N
    block_n = 256 if head_dim <= 64 else 128
    while block_n > 16 and 2 * block_n * head_block(head_dim) * element_bytes(dtype) > SMEM_PER_BLOCK_BYTES // 2:
        block_n //= 2
    return FLASH1_BLOCK_M, block_n


def launch_configs(q: Tensor, k: Tensor, v: Tensor, *, block_m: int | None = None,
                   block_n: int | None = None) -> list[LaunchConfig]:
    """flash1_init then flash1_fwd for these inputs; block_m / block_n override the tiles (powers of two >= 16)."""
    check_qkv(q, k, v)
    batch, q_heads, q_len, head_dim = q.shape
    default_m, default_n = flash1_tiles(head_dim, q.dtype)
    bm, bn = block_m or default_m, block_n or default_n
    check_tile(bm, "block_m")
    check_tile(bn, "block_n")
    rows = batch * q_heads * q_len
    d_block = head_block(head_dim)
    e = element_bytes(q.dtype)
    # K_j, V_j, Q_i, the fp32 O_i and P_ij (memsim.algorithms.flash1.smem_buffers, less its split-K partials).
    smem = 2 * bn * d_block * e + bm * d_block * (e + 4) + bm * bn * e
    return [
        LaunchConfig("flash1_init", 1, INIT_BLOCK, INIT_WARPS, 1,
                     (triton.cdiv(rows * (head_dim + 2), INIT_BLOCK),), 0),
        LaunchConfig("flash1_fwd", bm, bn, FLASH1_WARPS, FLASH1_STAGES, (batch * q_heads,), smem),
    ]


def flash1_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False, scale: float | None = None,
                     out: Tensor | None = None, return_lse: bool = False, lse_out: Tensor | None = None,
                     block_m: int | None = None, block_n: int | None = None, launched: list | None = None):
    """softmax(scale * Q K^T) V in FlashAttention-1's loop order.

    q [B, Hq, Nq, D], k and v [B, Hkv, Nk, D] (Hq a multiple of Hkv); causal aligned to the end. out
    [B, Hq, Nq, D] in q's dtype, lse_out [B, Hq, Nq] fp32 (natural log). `launched`, if a list, receives each
    launch's LaunchConfig. Returns O, or (O, LSE) with return_lse."""
    init, fwd = launch_configs(q, k, v, block_m=block_m, block_n=block_n)
    batch, q_heads, q_len, head_dim = q.shape
    kv_len = k.shape[2]
    check_output("out", out, q.shape, q.dtype, q.device)
    check_output("lse_out", lse_out, (batch, q_heads, q_len), torch.float32, q.device)
    out = torch.empty_like(q) if out is None else out
    write_lse = return_lse or lse_out is not None
    if lse_out is None:
        lse_out = torch.empty((batch, q_heads, q_len) if write_lse else (1, 1, 1), dtype=torch.float32,
                              device=q.device)
    # O (fp32 scratch), l, m: Algorithm 1's HBM-resident state.
    acc = torch.empty((batch * q_heads, q_len, head_dim), dtype=torch.float32, device=q.device)
    row_sum = torch.empty((batch * q_heads, q_len), dtype=torch.float32, device=q.device)
    row_max = torch.empty_like(row_sum)
    launch(flash1_init, init, acc, row_sum, row_max, acc.numel(), row_sum.numel(), launched=launched,
           BLOCK=init.block_n)
    scale = head_dim ** -0.5 if scale is None else scale
    launch(flash1_fwd, fwd, q, k, v, out, acc, row_sum, row_max, lse_out, *q.stride(), *k.stride(), *v.stride(),
           *out.stride(), *lse_out.stride(), q_heads, q_heads // k.shape[1], q_len, kv_len, head_dim, scale * LOG2E,
           launched=launched, BLOCK_M=fwd.block_m, BLOCK_N=fwd.block_n, BLOCK_D=head_block(head_dim), CAUSAL=causal,
           WRITE_LSE=write_lse, DOT_PRECISION=dot_precision(q.dtype))
    return (out, lse_out) if return_lse else out
