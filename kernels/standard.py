"""Standard attention (Dao et al. 2022, Algorithm 0) as three Triton kernels, so that the HBM round
trips of S and P can be measured:

    standard_qk       S = Q K^T                      one program per BLOCK_M x BLOCK_N tile of S
    standard_softmax  P = softmax(scale * S), masked  one program per row of S
    standard_pv       O = P V                        one program per BLOCK_M rows of O

The schedule is memsim's (memsim/algorithms/standard.py, memsim/schedules/standard.py):
- S and P are written to HBM in the input dtype and read back by the next kernel;
- the GEMMs run the whole Nq x Nk even under a causal mask; the softmax kernel applies the scale and
  the mask (so S holds the unscaled Q K^T);
- score GEMM program id p = j + T_c * (i + T_r * head), column tile fastest; value GEMM
  p = row_tile + T_rows * head; softmax p = row;
- GQA: q head h reads kv head h // (Hq // Hkv) directly, no repeated copy of K or V.

Where data lives: a score-GEMM program streams BLOCK_K-wide chunks of its Q rows and K rows through
shared memory and keeps its S tile in registers; a value-GEMM program keeps its BLOCK_M x d fp32
accumulator in registers and streams BLOCK_M x BLOCK_N chunks of P and BLOCK_N x d chunks of V; a
softmax program holds its row in registers when it fits (ROW_BLOCK_MAX), else reads it three times
(max, sum, output) as PyTorch's cunn_SoftMaxForward does.
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.checks import LN2, LOG2E, check_output, check_qkv, check_tile, dot_precision, head_block
from kernels.launch import INTERPRETING, LaunchConfig, element_bytes, launch

# GEMM tiles as memsim.algorithms.standard.default_tiles picks them: the largest of these whose score
# panels and value chunks fit in an H100's opt-in shared memory per block (232448 B, shared/DESIGN.md),
# 8 warps, 2 stages. The interpreter runs 16 x 16 tiles so that short test sequences span several.
GEMM_TILES = ((128, 128), (128, 64), (64, 64), (64, 32))
GEMM_WARPS = 8
GEMM_STAGES = 2
SMEM_PER_BLOCK_BYTES = 232448
# K depth of one score-GEMM chunk: 64, as memsim.schedules.standard.GEMM_K_CHUNK (CUTLASS's sm80 default
# threadblock tile 128 x 256 x 64); 16 under the interpreter so that a test head dim spans several chunks.
SCORE_K_CHUNK = 16 if INTERPRETING else 64
INTERPRETER_TILE = 16

# Softmax: one program per row. PyTorch's block size (aten/src/ATen/native/cuda/SoftMax.cu,
# SoftMax_getBlockSize): threads a power of two >= 32 covering half of min(the row's 16-byte vectors, 1024),
# as memsim.algorithms.standard.softmax_threads. A row longer than ROW_BLOCK_MAX keys is read in chunks of
# ROW_BLOCK_MAX, three passes; the interpreter uses 32 so that short tests cover both paths.
SOFTMAX_VECTOR_BYTES = 16
SOFTMAX_MAX_THREADS = 1024
ROW_BLOCK_MAX = 32 if INTERPRETING else 16384


@dataclass(frozen=True)
class StandardWorkspace:
    """The intermediates standard attention writes to HBM, both [B, Hq, Nq, Nk] in the input dtype:
    scores = Q K^T (unscaled, unmasked), probs = the masked row softmax of scale * scores."""

    scores: Tensor
    probs: Tensor

    @staticmethod
    def allocate(q: Tensor, k: Tensor) -> "StandardWorkspace":
        shape = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        return StandardWorkspace(q.new_empty(shape), q.new_empty(shape))


# ---- kernels ----------------------------------------------------------------------------------------

@triton.jit
def standard_qk(q_ptr, k_ptr, s_ptr,
                stride_qb, stride_qh, stride_qn, stride_qd,
                stride_kb, stride_kh, stride_kn, stride_kd,
                stride_sb, stride_sh, stride_sm, stride_sn,
                q_heads, group, q_len, kv_len, head_dim,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                DOT_PRECISION: tl.constexpr):
    """One BLOCK_M x BLOCK_N tile of S = Q K^T for one (batch, q head), fp32 accumulation."""
    pid = tl.program_id(0)
    t_c = tl.cdiv(kv_len, BLOCK_N)
    t_r = tl.cdiv(q_len, BLOCK_M)
    j = pid % t_c
    i = (pid // t_c) % t_r
    head = pid // (t_c * t_r)
    b = (head // q_heads).to(tl.int64)
    h = (head % q_heads).to(tl.int64)
    rows = i * BLOCK_M + tl.arange(0, BLOCK_M)
    keys = j * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_K)
    q_rows = q_ptr + b * stride_qb + h * stride_qh + rows[:, None].to(tl.int64) * stride_qn
    k_cols = k_ptr + b * stride_kb + (h // group) * stride_kh + keys[None, :].to(tl.int64) * stride_kn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for d0 in range(0, head_dim, BLOCK_K):
        d = d0 + dims
        a = tl.load(q_rows + d[None, :] * stride_qd, mask=(rows[:, None] < q_len) & (d[None, :] < head_dim), other=0.0)
        bt = tl.load(k_cols + d[:, None] * stride_kd, mask=(d[:, None] < head_dim) & (keys[None, :] < kv_len),
                     other=0.0)
        acc = tl.dot(a, bt, acc, input_precision=DOT_PRECISION)
    s_tile = (s_ptr + b * stride_sb + h * stride_sh + rows[:, None].to(tl.int64) * stride_sm
              + keys[None, :].to(tl.int64) * stride_sn)
    tl.store(s_tile, acc.to(s_ptr.dtype.element_ty), mask=(rows[:, None] < q_len) & (keys[None, :] < kv_len))


@triton.jit
def _scaled_chunk(s_row, stride_sn, cols, kv_len, last_key, scale_log2, CAUSAL: tl.constexpr):
    """log2-domain scores of one chunk of a row; keys past the row's end or the causal limit are -inf."""
    s = tl.load(s_row + cols.to(tl.int64) * stride_sn, mask=cols < kv_len, other=0.0).to(tl.float32)
    seen = cols < kv_len
    if CAUSAL:
        seen = seen & (cols <= last_key)
    return tl.where(seen, s * scale_log2, float("-inf"))


@triton.jit
def standard_softmax(s_ptr, p_ptr, lse_ptr,
                     stride_sb, stride_sh, stride_sm, stride_sn,
                     stride_pb, stride_ph, stride_pm, stride_pn,
                     stride_lb, stride_lh, stride_ln,
                     q_heads, q_len, kv_len, scale_log2,
                     BLOCK_N: tl.constexpr, SINGLE_PASS: tl.constexpr, CAUSAL: tl.constexpr,
                     WRITE_LSE: tl.constexpr):
    """One row: P = softmax(scale * S) over the visible keys (causal aligned to the end: key j is
    visible to query n iff j <= n + kv_len - q_len). A row with no visible key gets P 0 and LSE -inf."""
    row = tl.program_id(0)
    n = row % q_len
    b = (row // q_len // q_heads).to(tl.int64)
    h = (row // q_len % q_heads).to(tl.int64)
    s_row = s_ptr + b * stride_sb + h * stride_sh + n.to(tl.int64) * stride_sm
    p_row = p_ptr + b * stride_pb + h * stride_ph + n.to(tl.int64) * stride_pm
    last_key = n + kv_len - q_len
    cols = tl.arange(0, BLOCK_N)
    if SINGLE_PASS:  # BLOCK_N >= kv_len: the row stays in registers, one read of S
        x = _scaled_chunk(s_row, stride_sn, cols, kv_len, last_key, scale_log2, CAUSAL)
        m = tl.max(x, axis=0)
        m_safe = tl.where(m == float("-inf"), 0.0, m)
        e = tl.exp2(x - m_safe)
        total = tl.sum(e, axis=0)
        inv = tl.where(total > 0.0, 1.0 / tl.where(total > 0.0, total, 1.0), 0.0)
        tl.store(p_row + cols.to(tl.int64) * stride_pn, (e * inv).to(p_ptr.dtype.element_ty), mask=cols < kv_len)
    else:  # three passes over the row: max, sum, output
        m = tl.full([], float("-inf"), tl.float32)
        for c0 in range(0, kv_len, BLOCK_N):
            m = tl.maximum(m, tl.max(_scaled_chunk(s_row, stride_sn, c0 + cols, kv_len, last_key, scale_log2,
                                                   CAUSAL), axis=0))
        m_safe = tl.where(m == float("-inf"), 0.0, m)
        total = tl.zeros([], tl.float32)
        for c0 in range(0, kv_len, BLOCK_N):
            x = _scaled_chunk(s_row, stride_sn, c0 + cols, kv_len, last_key, scale_log2, CAUSAL)
            total += tl.sum(tl.exp2(x - m_safe), axis=0)
        inv = tl.where(total > 0.0, 1.0 / tl.where(total > 0.0, total, 1.0), 0.0)
        for c0 in range(0, kv_len, BLOCK_N):
            x = _scaled_chunk(s_row, stride_sn, c0 + cols, kv_len, last_key, scale_log2, CAUSAL)
            tl.store(p_row + (c0 + cols).to(tl.int64) * stride_pn, (tl.exp2(x - m_safe) * inv).to(
                p_ptr.dtype.element_ty), mask=c0 + cols < kv_len)
    if WRITE_LSE:
        lse = tl.where(total > 0.0, (m_safe + tl.log2(tl.where(total > 0.0, total, 1.0))) * LN2, float("-inf"))
        tl.store(lse_ptr + b * stride_lb + h * stride_lh + n.to(tl.int64) * stride_ln, lse)


@triton.jit
def standard_pv(p_ptr, v_ptr, o_ptr,
                stride_pb, stride_ph, stride_pm, stride_pn,
                stride_vb, stride_vh, stride_vn, stride_vd,
                stride_ob, stride_oh, stride_om, stride_od,
                q_heads, group, q_len, kv_len, head_dim,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                DOT_PRECISION: tl.constexpr):
    """BLOCK_M rows of O = P V for one (batch, q head); the fp32 accumulator stays in registers."""
    pid = tl.program_id(0)
    t_rows = tl.cdiv(q_len, BLOCK_M)
    r = pid % t_rows
    head = pid // t_rows
    b = (head // q_heads).to(tl.int64)
    h = (head % q_heads).to(tl.int64)
    rows = r * BLOCK_M + tl.arange(0, BLOCK_M)
    depth = tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    p_rows = p_ptr + b * stride_pb + h * stride_ph + rows[:, None].to(tl.int64) * stride_pm
    v_base = v_ptr + b * stride_vb + (h // group) * stride_vh + dims[None, :] * stride_vd
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for k0 in range(0, kv_len, BLOCK_N):
        keys = k0 + depth
        p = tl.load(p_rows + keys[None, :].to(tl.int64) * stride_pn,
                    mask=(rows[:, None] < q_len) & (keys[None, :] < kv_len), other=0.0)
        v = tl.load(v_base + keys[:, None].to(tl.int64) * stride_vn,
                    mask=(keys[:, None] < kv_len) & (dims[None, :] < head_dim), other=0.0)
        acc = tl.dot(p, v, acc, input_precision=DOT_PRECISION)
    o_rows = o_ptr + b * stride_ob + h * stride_oh + rows[:, None].to(tl.int64) * stride_om + dims[None, :] * stride_od
    tl.store(o_rows, acc.to(o_ptr.dtype.element_ty), mask=(rows[:, None] < q_len) & (dims[None, :] < head_dim))


# ---- inputs and launch configs ----------------------------------------------------------------------

def gemm_tiles(head_dim: int, dtype: torch.dtype) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) as memsim.algorithms.standard.default_tiles: the largest tile whose score panels
    (BLOCK_M + BLOCK_N) x d and value chunks stages x (BLOCK_M x BLOCK_N + BLOCK_N x d) fit in shared memory."""
    if INTERPRETING:
        return INTERPRETER_TILE, INTERPRETER_TILE
    e = element_bytes(dtype)
    for block_m, block_n in GEMM_TILES:
        score = (block_m + block_n) * head_dim * e
        value = GEMM_STAGES * (block_m * block_n + block_n * head_dim) * e
        if max(score, value) <= SMEM_PER_BLOCK_BYTES:
            return block_m, block_n
    return GEMM_TILES[-1]


def softmax_warps(kv_len: int, dtype: torch.dtype) -> int:
    """PyTorch's softmax block size in warps (memsim.algorithms.standard.softmax_threads)."""
    vectors = kv_len * element_bytes(dtype) / SOFTMAX_VECTOR_BYTES
    threads = 32
    while threads < min(vectors, SOFTMAX_MAX_THREADS) / 2:
        threads *= 2
    return threads // 32


def score_chunk(head_dim: int) -> int:
    return min(SCORE_K_CHUNK, head_block(head_dim))


def launch_configs(q: Tensor, k: Tensor, v: Tensor, *, block_m: int | None = None,
                   block_n: int | None = None) -> list[LaunchConfig]:
    """The three launches of standard_attention for these inputs, in order: QK^T, softmax, PV.
    block_m / block_n override the GEMM tiles (powers of two >= 16)."""
    check_qkv(q, k, v)
    batch, q_heads, q_len, head_dim = q.shape
    kv_len = k.shape[2]
    default_m, default_n = gemm_tiles(head_dim, q.dtype)
    bm, bn = block_m or default_m, block_n or default_n
    check_tile(bm, "block_m")
    check_tile(bn, "block_n")
    e = element_bytes(q.dtype)
    heads = batch * q_heads
    t_r, t_c = triton.cdiv(q_len, bm), triton.cdiv(kv_len, bn)
    chunk, d_block = score_chunk(head_dim), head_block(head_dim)
    row_block = min(triton.next_power_of_2(kv_len), ROW_BLOCK_MAX)
    row_warps = softmax_warps(kv_len, q.dtype)
    return [
        LaunchConfig("standard_qk", bm, bn, GEMM_WARPS, GEMM_STAGES, (t_c * t_r * heads,),
                     GEMM_STAGES * (bm + bn) * chunk * e),
        LaunchConfig("standard_softmax", 1, row_block, row_warps, 1, (heads * q_len,), row_warps * 4),
        LaunchConfig("standard_pv", bm, bn, GEMM_WARPS, GEMM_STAGES, (t_r * heads,),
                     GEMM_STAGES * (bm * bn + bn * d_block) * e),
    ]


# ---- the op ----------------------------------------------------------------------------------------

def standard_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False, scale: float | None = None,
                       out: Tensor | None = None, return_lse: bool = False, lse_out: Tensor | None = None,
                       workspace: StandardWorkspace | None = None, block_m: int | None = None,
                       block_n: int | None = None, launched: list | None = None):
    """softmax(scale * Q K^T) V through HBM-materialised S and P.

    q [B, Hq, Nq, D], k and v [B, Hkv, Nk, D] (Hq a multiple of Hkv); causal aligned to the end (query i
    sees key j iff j <= i + Nk - Nq). out [B, Hq, Nq, D] in q's dtype, lse_out [B, Hq, Nq] fp32 (natural
    log); workspace holds S and P (StandardWorkspace, else allocated here). `launched`, if a list, receives
    each launch's LaunchConfig (with compiled shared memory where the GPU reports it).
    Returns O, or (O, LSE) with return_lse."""
    configs = launch_configs(q, k, v, block_m=block_m, block_n=block_n)
    batch, q_heads, q_len, head_dim = q.shape
    kv_len = k.shape[2]
    check_output("out", out, q.shape, q.dtype, q.device)
    check_output("lse_out", lse_out, (batch, q_heads, q_len), torch.float32, q.device)
    if workspace is None:
        workspace = StandardWorkspace.allocate(q, k)
    check_output("workspace.scores", workspace.scores, (batch, q_heads, q_len, kv_len), q.dtype, q.device)
    check_output("workspace.probs", workspace.probs, (batch, q_heads, q_len, kv_len), q.dtype, q.device)
    out = torch.empty_like(q) if out is None else out
    write_lse = return_lse or lse_out is not None
    if lse_out is None:
        lse_out = torch.empty((batch, q_heads, q_len) if write_lse else (1, 1, 1), dtype=torch.float32,
                              device=q.device)
    scale = head_dim ** -0.5 if scale is None else scale
    group = q_heads // k.shape[1]
    s, p = workspace.scores, workspace.probs
    precision = dot_precision(q.dtype)
    qk, softmax, pv = configs

    launch(standard_qk, qk, q, k, s, *q.stride(), *k.stride(), *s.stride(), q_heads, group, q_len, kv_len, head_dim,
           launched=launched, BLOCK_M=qk.block_m, BLOCK_N=qk.block_n, BLOCK_K=score_chunk(head_dim),
           DOT_PRECISION=precision)
    launch(standard_softmax, softmax, s, p, lse_out, *s.stride(), *p.stride(), *lse_out.stride(), q_heads, q_len,
           kv_len, scale * LOG2E, launched=launched, BLOCK_N=softmax.block_n, SINGLE_PASS=softmax.block_n >= kv_len,
           CAUSAL=causal, WRITE_LSE=write_lse)
    launch(standard_pv, pv, p, v, out, *p.stride(), *v.stride(), *out.stride(), q_heads, group, q_len, kv_len,
           head_dim, launched=launched, BLOCK_M=pv.block_m, BLOCK_N=pv.block_n, BLOCK_D=head_block(head_dim),
           DOT_PRECISION=precision)
    return (out, lse_out) if return_lse else out
