"""FlashAttention-2 forward and backward in Triton (Dao 2023), the kernels that run memsim's flash2 schedules.

Forward (Dao 2023, Algorithm 1): grid (cdiv(Nq, BLOCK_M), B * Hq), q-block fastest. A program loads its Q tile
once, keeps it on chip for the whole loop, and streams the K/V blocks of its kv head through num_stages shared
memory buffers with an online softmax: running max m and sum l in fp32 registers, exp2 with log2(e) folded into
the softmax scale, and the division by l deferred to the end ("deferred rescaling", Dao 2023 section 3.1.1).
Key blocks that no row of the tile sees (causal, window) are never loaded. The blocks a tile does see split in
three runs: masked blocks before, fully visible blocks (no mask math at all), masked blocks after; for causal
attention the masked blocks are the ones on the diagonal.

Backward (Dao 2023, Algorithm 2, computed in three kernels with no atomics, so the result is deterministic):
  delta  D = rowsum(dO * O) - dLSE per query row, fp32, grid (cdiv(Nq, BLOCK_M), B * Hq);
  dK/dV  grid (cdiv(Nk, BLOCK_N), B * Hkv): K_j and V_j stay on chip while the program walks the query blocks
         that see them, for every q head of the kv head's group, so GQA gradients are summed in registers;
  dQ     grid (cdiv(Nq, BLOCK_M), B * Hq): the forward's loop again, recomputing P from the saved LSE.
dQ in its own kernel (recomputing S and dP) rather than with atomics follows the Triton tutorial
06-fused-attention, which computes dQ in a separate pass of the same kind.

Masks (shared/DESIGN.md): query i sits at position p = i + Nk - Nq; key j is visible iff p - left <= j <= p + right
(window), causal caps right at 0; alibi adds -slope * |p - j|. A row that sees no key gets O = 0 and LSE = -inf.
LSE is natural log at the boundary ([B, Hq, Nq], fp32); the kernels work in log2 inside.
"""

import math

import torch
import triton
import triton.language as tl

from kernels.launch import INTERPRETING, LaunchConfig, element_bytes

LOG2E = tl.constexpr(1.4426950408889634)  # log2(e): exp(x) = exp2(x * log2(e))
LN2 = tl.constexpr(0.6931471805599453)  # ln(2): a log2 LSE times ln(2) is the natural LSE
MIN_HEAD_DIM, MAX_HEAD_DIM = 32, 256
DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Tiles for sm_90 (H100), keyed by the head dim padded to a power of two: (BLOCK_M, BLOCK_N, num_warps,
# num_stages). fp16/bf16 forward: 128 query rows per program over 4 warps (d <= 64) or 8 warps (d = 128, so the
# 128 x 128 fp32 accumulator takes 64 registers a thread); shared memory is the Q tile plus num_stages K and V
# tiles, 128 KiB for d = 128 (H100: 227 KiB per block). d = 256 halves BLOCK_M and keeps 8 warps, so the
# 64 x 256 accumulator takes 64 registers a thread and the buffers 160 KiB.
FORWARD_SM90 = {32: (128, 64, 4, 3), 64: (128, 64, 4, 3), 128: (128, 64, 8, 3), 256: (64, 64, 8, 2)}
# fp32 runs exact dots (no tensor cores, input_precision="ieee") and twice the bytes: smaller tiles.
FORWARD_SM90_FP32 = {32: (64, 32, 4, 2), 64: (64, 32, 4, 2), 128: (64, 32, 4, 2), 256: (32, 32, 4, 2)}
# Backward, dK/dV kernel: BLOCK_M query rows per step, BLOCK_N keys per program; dQ kernel: BLOCK_M query rows per
# program, BLOCK_N keys per step. d <= 64 uses the Triton tutorial 06-fused-attention's sizes (32 x 128 and
# 128 x 32, 4 warps, 5 stages); d = 128 takes 8 warps so the two 128 x 128 fp32 accumulators (dK, dV) fit in
# registers; d = 256 halves the tile that carries the accumulators.
DKDV_SM90 = {32: (32, 128, 4, 5), 64: (32, 128, 4, 5), 128: (32, 128, 8, 3), 256: (32, 64, 8, 2)}
DQ_SM90 = {32: (128, 32, 4, 5), 64: (128, 32, 4, 5), 128: (128, 32, 8, 3), 256: (64, 32, 8, 2)}
DKDV_SM90_FP32 = {32: (32, 64, 4, 2), 64: (32, 64, 4, 2), 128: (16, 32, 4, 2), 256: (16, 32, 4, 2)}
DQ_SM90_FP32 = {32: (64, 32, 4, 2), 64: (64, 32, 4, 2), 128: (32, 16, 4, 2), 256: (32, 16, 4, 2)}
DELTA_ROWS_SM90 = 64  # query rows per program of the delta kernel
# The interpreter runs programs one at a time in numpy: small tiles, and BLOCK_M != BLOCK_N so that the tests
# cover tiles that are taller than wide and wider than tall.
FORWARD_INTERPRETER = (32, 16, 4, 1)
DKDV_INTERPRETER = (16, 32, 4, 1)
DQ_INTERPRETER = (32, 16, 4, 1)
DELTA_ROWS_INTERPRETER = 32

# Shared memory the compiler allocated, per compiled variant, once a launch has returned its kernel.
_compiled_shared_bytes: dict[tuple, int] = {}
_recent_launches: list[LaunchConfig] = []


# ----------------------------------------------------------------------------------------------------------------
# Device helpers shared by the forward and backward kernels
# ----------------------------------------------------------------------------------------------------------------

@triton.jit
def _visible(position, key, k_len, left, right):
    """Which (query, key) pairs of a tile are visible; `position` and `key` broadcast to the tile's shape."""
    return (key >= position - left) & (key <= position + right) & (key < k_len)


@triton.jit
def _load_rows(ptrs, rows, n_rows, d_mask, CHECK_ROWS: tl.constexpr, PAD_D: tl.constexpr):
    """A [rows, BLOCK_D] tile; rows at or past n_rows and padded head-dim columns read 0."""
    if CHECK_ROWS:
        if PAD_D:
            tile = tl.load(ptrs, mask=(rows < n_rows)[:, None] & d_mask[None, :], other=0.0)
        else:
            tile = tl.load(ptrs, mask=(rows < n_rows)[:, None], other=0.0)
    else:
        if PAD_D:
            tile = tl.load(ptrs, mask=d_mask[None, :], other=0.0)
        else:
            tile = tl.load(ptrs)
    return tile


@triton.jit
def _store_rows(ptrs, tile, rows, n_rows, d_mask, PAD_D: tl.constexpr):
    if PAD_D:
        tl.store(ptrs, tile, mask=(rows < n_rows)[:, None] & d_mask[None, :])
    else:
        tl.store(ptrs, tile, mask=(rows < n_rows)[:, None])


@triton.jit
def _scores_log2(q, k, rows, keys, shift, qk_scale2, slope2, ALIBI: tl.constexpr, PRECISION: tl.constexpr):
    """S [BLOCK_M, BLOCK_N] in log2 units: (scale * Q K^T - slope * |p - j|) * log2(e)."""
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale2
    if ALIBI:
        s -= slope2 * tl.abs((rows[:, None] + shift) - keys[None, :]).to(tl.float32)
    return s


@triton.jit
def _key_blocks(m0, q_len, k_len, shift, left, right, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key blocks for the query rows [m0, m0 + BLOCK_M): [first, last) hold every key some row sees;
    [full_first, full_last) inside it are visible to every row, keys all < Nk. Operands of // stay >= 0."""
    row_last = tl.minimum(m0 + BLOCK_M, q_len) - 1
    key_lo = tl.maximum(m0 + shift - left, 0)  # first key the first row sees
    key_end = tl.maximum(tl.minimum(row_last + shift + right + 1, k_len), 0)  # one past the last row's last key
    first = key_lo // BLOCK_N
    last = tl.maximum((key_end + BLOCK_N - 1) // BLOCK_N, first)
    full_first = (tl.maximum(m0 + BLOCK_M - 1 + shift - left, 0) + BLOCK_N - 1) // BLOCK_N
    full_last = tl.maximum(tl.minimum(m0 + shift + right + 1, k_len), 0) // BLOCK_N
    full_first = tl.minimum(tl.maximum(full_first, first), last)
    full_last = tl.minimum(tl.maximum(full_last, full_first), last)
    return first, full_first, full_last, last


@triton.jit
def _query_blocks(n0, q_len, k_len, shift, left, right, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Query blocks for the keys [n0, n0 + BLOCK_N): [first, last) hold every row that sees one of them;
    [full_first, full_last) inside it see all of them, rows all < Nq and keys all < Nk."""
    key_last = tl.minimum(n0 + BLOCK_N, k_len) - 1
    row_lo = tl.maximum(n0 - shift - right, 0)  # first row that sees key n0
    row_end = tl.maximum(tl.minimum(key_last - shift + left + 1, q_len), 0)  # one past the last row seeing key_last
    first = row_lo // BLOCK_M
    last = tl.maximum((row_end + BLOCK_M - 1) // BLOCK_M, first)
    full_first = (tl.maximum(n0 + BLOCK_N - 1 - shift - right, 0) + BLOCK_M - 1) // BLOCK_M
    full_last = tl.maximum(tl.minimum(n0 - shift + left + 1, q_len), 0) // BLOCK_M
    full_last = tl.where(n0 + BLOCK_N <= k_len, full_last, 0)
    full_first = tl.minimum(tl.maximum(full_first, first), last)
    full_last = tl.minimum(tl.maximum(full_last, full_first), last)
    return first, full_first, full_last, last


# ----------------------------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------------------------

@triton.jit
def _forward_step(acc, m_i, l_i, q, k, v, rows, keys, k_len, shift, left, right, qk_scale2, slope2,
                  MASKED: tl.constexpr, ALIBI: tl.constexpr, PRECISION: tl.constexpr):
    """One K/V block of the online softmax: acc [BLOCK_M, BLOCK_D] and l [BLOCK_M] stay unnormalised."""
    s = _scores_log2(q, k, rows, keys, shift, qk_scale2, slope2, ALIBI, PRECISION)
    if MASKED:
        s = tl.where(_visible(rows[:, None] + shift, keys[None, :], k_len, left, right), s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    if MASKED:
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet: exp2(-inf - 0) = 0
    else:
        m_ref = m_new  # every row sees every key of a full block: the max is finite
    alpha = tl.exp2(m_i - m_ref)
    p = tl.exp2(s - m_ref[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
    return acc, m_new, l_i


@triton.jit
def _forward_blocks(acc, m_i, l_i, q, K, V, k_offsets, v_offsets, stride_kn, stride_vn, block_lo, block_hi,
                    rows, k_len, shift, left, right, qk_scale2, slope2, d_mask,
                    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, PAD_D: tl.constexpr, ALIBI: tl.constexpr,
                    PRECISION: tl.constexpr):
    """Key blocks [block_lo, block_hi): masked ones check keys against Nk and the mask, full ones check nothing."""
    local = tl.arange(0, BLOCK_N)
    for block in tl.range(block_lo, block_hi):
        n0 = block * BLOCK_N
        keys = n0 + local
        k = _load_rows(K + n0.to(tl.int64) * stride_kn + k_offsets, keys, k_len, d_mask, MASKED, PAD_D)
        v = _load_rows(V + n0.to(tl.int64) * stride_vn + v_offsets, keys, k_len, d_mask, MASKED, PAD_D)
        acc, m_i, l_i = _forward_step(acc, m_i, l_i, q, k, v, rows, keys, k_len, shift, left, right, qk_scale2,
                                      slope2, MASKED, ALIBI, PRECISION)
    return acc, m_i, l_i


@triton.jit
def _program_heads(q_heads, group):
    """(batch, q head, K/V head) of program axis 1 = batch * q_heads + q head, in int64 for offsets."""
    head = tl.program_id(1) % q_heads
    return (tl.program_id(1) // q_heads).to(tl.int64), head.to(tl.int64), (head // group).to(tl.int64)


@triton.jit
def _flash2_fwd(Q, K, V, O, LSE, SLOPES,
                stride_qb, stride_qh, stride_qm, stride_qd, stride_kb, stride_kh, stride_kn, stride_kd,
                stride_vb, stride_vh, stride_vn, stride_vd, stride_ob, stride_oh, stride_om, stride_od,
                stride_lb, stride_lh, stride_lm,
                q_heads, group, q_len, k_len, shift, left, right, qk_scale2,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                ALIBI: tl.constexpr, PRECISION: tl.constexpr):
    """One (query block, batch * q head): O [BLOCK_M, D] and LSE [BLOCK_M] of its rows."""
    PAD_D: tl.constexpr = BLOCK_D != HEAD_DIM
    m0 = tl.program_id(0) * BLOCK_M
    batch, head, kv_head = _program_heads(q_heads, group)
    local_m, local_n, cols = tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D)
    rows = m0 + local_m
    d_mask = cols < HEAD_DIM

    q_base = Q + batch * stride_qb + head * stride_qh + m0.to(tl.int64) * stride_qm
    q = _load_rows(q_base + local_m[:, None] * stride_qm + cols[None, :] * stride_qd, rows, q_len, d_mask,
                   True, PAD_D)  # stays on chip for the whole loop
    K += batch * stride_kb + kv_head * stride_kh
    V += batch * stride_vb + kv_head * stride_vh
    k_offsets = local_n[:, None] * stride_kn + cols[None, :] * stride_kd
    v_offsets = local_n[:, None] * stride_vn + cols[None, :] * stride_vd
    slope2 = 0.0
    if ALIBI:
        slope2 = tl.load(SLOPES + head) * LOG2E

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    first, full_first, full_last, last = _key_blocks(m0, q_len, k_len, shift, left, right, BLOCK_M, BLOCK_N)
    acc, m_i, l_i = _forward_blocks(acc, m_i, l_i, q, K, V, k_offsets, v_offsets, stride_kn, stride_vn, first,
                                    full_first, rows, k_len, shift, left, right, qk_scale2, slope2, d_mask,
                                    BLOCK_N, True, PAD_D, ALIBI, PRECISION)
    acc, m_i, l_i = _forward_blocks(acc, m_i, l_i, q, K, V, k_offsets, v_offsets, stride_kn, stride_vn,
                                    full_first, full_last, rows, k_len, shift, left, right, qk_scale2, slope2,
                                    d_mask, BLOCK_N, False, PAD_D, ALIBI, PRECISION)
    acc, m_i, l_i = _forward_blocks(acc, m_i, l_i, q, K, V, k_offsets, v_offsets, stride_kn, stride_vn,
                                    full_last, last, rows, k_len, shift, left, right, qk_scale2, slope2, d_mask,
                                    BLOCK_N, True, PAD_D, ALIBI, PRECISION)

    empty = l_i == 0.0  # no visible key: O = 0, LSE = -inf
    l_safe = tl.where(empty, 1.0, l_i)
    o = acc / l_safe[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(l_safe)) * LN2)
    o_base = O + batch * stride_ob + head * stride_oh + m0.to(tl.int64) * stride_om
    _store_rows(o_base + local_m[:, None] * stride_om + cols[None, :] * stride_od, o.to(O.dtype.element_ty), rows,
                q_len, d_mask, PAD_D)
    lse_ptrs = LSE + batch * stride_lb + head * stride_lh + rows.to(tl.int64) * stride_lm
    tl.store(lse_ptrs, lse, mask=rows < q_len)


# ----------------------------------------------------------------------------------------------------------------
# Backward: delta, dK/dV, dQ
# ----------------------------------------------------------------------------------------------------------------

@triton.jit
def _flash2_bwd_delta(O, DO, DLSE, DELTA, stride_ob, stride_oh, stride_om, stride_od,
                      stride_gb, stride_gh, stride_gm, stride_gd, q_heads, q_len,
                      HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, HAS_DLSE: tl.constexpr):
    """DELTA [B * Hq * Nq] (contiguous) = rowsum(dO * O) - dLSE, in fp32."""
    PAD_D: tl.constexpr = BLOCK_D != HEAD_DIM
    m0 = tl.program_id(0) * BLOCK_M
    batch = (tl.program_id(1) // q_heads).to(tl.int64)
    head = (tl.program_id(1) % q_heads).to(tl.int64)
    local_m, cols = tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_D)
    rows = m0 + local_m
    d_mask = cols < HEAD_DIM
    o_base = O + batch * stride_ob + head * stride_oh + m0.to(tl.int64) * stride_om
    g_base = DO + batch * stride_gb + head * stride_gh + m0.to(tl.int64) * stride_gm
    o = _load_rows(o_base + local_m[:, None] * stride_om + cols[None, :] * stride_od, rows, q_len, d_mask, True, PAD_D)
    do = _load_rows(g_base + local_m[:, None] * stride_gm + cols[None, :] * stride_gd, rows, q_len, d_mask, True,
                    PAD_D)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    row_offsets = (batch * q_heads + head) * q_len + rows
    if HAS_DLSE:
        delta -= tl.load(DLSE + row_offsets, mask=rows < q_len, other=0.0)
    tl.store(DELTA + row_offsets, delta, mask=rows < q_len)


@triton.jit
def _load_row_stats(LSE, DELTA, row_base, rows, q_len, CHECK_ROWS: tl.constexpr):
    """LSE in log2 units (+inf for an empty row, so that exp2(S - LSE) = 0) and delta of a block of rows."""
    if CHECK_ROWS:
        lse = tl.load(LSE + row_base + rows, mask=rows < q_len, other=0.0)
        delta = tl.load(DELTA + row_base + rows, mask=rows < q_len, other=0.0)
    else:
        lse = tl.load(LSE + row_base + rows)
        delta = tl.load(DELTA + row_base + rows)
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * LOG2E)
    return lse2, delta


@triton.jit
def _dkdv_step(dk, dv, k, v, q, do, lse2, delta, rows, keys, q_len, k_len, shift, left, right, qk_scale2, slope2,
               MASKED: tl.constexpr, ALIBI: tl.constexpr, PRECISION: tl.constexpr):
    """dV += P^T dO and dK += dS^T Q (unscaled) for one query block; tiles transposed: [BLOCK_N, BLOCK_M]."""
    s_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale2
    if ALIBI:
        s_t -= slope2 * tl.abs((rows[None, :] + shift) - keys[:, None]).to(tl.float32)
    if MASKED:
        seen = _visible(rows[None, :] + shift, keys[:, None], k_len, left, right) & (rows < q_len)[None, :]
        s_t = tl.where(seen, s_t, float("-inf"))
    p_t = tl.exp2(s_t - lse2[None, :])
    dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=PRECISION)
    dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
    ds_t = p_t * (dp_t - delta[None, :])
    dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=PRECISION)
    return dk, dv


@triton.jit
def _dkdv_blocks(dk, dv, k, v, Q, DO, LSE, DELTA, SLOPES, q_offsets, do_offsets, stride_qh, stride_qm, stride_gh,
                 stride_gm, first_head, row_base, group, block_lo, block_hi, keys, q_len, k_len, shift, left, right,
                 qk_scale2, d_mask, BLOCK_M: tl.constexpr, MASKED: tl.constexpr, PAD_D: tl.constexpr,
                 ALIBI: tl.constexpr, PRECISION: tl.constexpr):
    """The query blocks [block_lo, block_hi) of every q head of the group, as one flat loop over (head, block):
    no loop nest, so each step's Q and dO loads pipeline like those of a single loop. Q and DO point at the
    batch; row_base is the LSE/delta offset of the batch's first q head."""
    local = tl.arange(0, BLOCK_M)
    blocks = block_hi - block_lo
    for step in tl.range(0, group * blocks):
        member = step // blocks
        head = first_head + member
        m0 = (block_lo + step - member * blocks) * BLOCK_M
        rows = m0 + local
        q = _load_rows(Q + head * stride_qh + m0.to(tl.int64) * stride_qm + q_offsets, rows, q_len, d_mask, MASKED,
                       PAD_D)
        do = _load_rows(DO + head * stride_gh + m0.to(tl.int64) * stride_gm + do_offsets, rows, q_len, d_mask,
                        MASKED, PAD_D)
        lse2, delta = _load_row_stats(LSE, DELTA, row_base + head * q_len, rows, q_len, MASKED)
        slope2 = 0.0
        if ALIBI:
            slope2 = tl.load(SLOPES + head) * LOG2E
        dk, dv = _dkdv_step(dk, dv, k, v, q, do, lse2, delta, rows, keys, q_len, k_len, shift, left, right,
                            qk_scale2, slope2, MASKED, ALIBI, PRECISION)
    return dk, dv


@triton.jit
def _flash2_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, SLOPES,
                     stride_qb, stride_qh, stride_qm, stride_qd, stride_kb, stride_kh, stride_kn, stride_kd,
                     stride_vb, stride_vh, stride_vn, stride_vd, stride_gb, stride_gh, stride_gm, stride_gd,
                     stride_dkb, stride_dkh, stride_dkn, stride_dkd, stride_dvb, stride_dvh, stride_dvn, stride_dvd,
                     q_heads, kv_heads, group, q_len, k_len, shift, left, right, qk_scale2, scale,
                     HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     ALIBI: tl.constexpr, PRECISION: tl.constexpr):
    """One (key block, batch * kv head): dK, dV [BLOCK_N, D] summed over the q heads of the group."""
    PAD_D: tl.constexpr = BLOCK_D != HEAD_DIM
    n0 = tl.program_id(0) * BLOCK_N
    batch = (tl.program_id(1) // kv_heads).to(tl.int64)
    kv_head = (tl.program_id(1) % kv_heads).to(tl.int64)
    local_m, local_n, cols = tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D)
    keys = n0 + local_n
    d_mask = cols < HEAD_DIM
    k_base = K + batch * stride_kb + kv_head * stride_kh + n0.to(tl.int64) * stride_kn
    v_base = V + batch * stride_vb + kv_head * stride_vh + n0.to(tl.int64) * stride_vn
    # K_j and V_j stay on chip while every query block that sees them streams past.
    k = _load_rows(k_base + local_n[:, None] * stride_kn + cols[None, :] * stride_kd, keys, k_len, d_mask, True, PAD_D)
    v = _load_rows(v_base + local_n[:, None] * stride_vn + cols[None, :] * stride_vd, keys, k_len, d_mask, True, PAD_D)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    Q += batch * stride_qb
    DO += batch * stride_gb
    q_offsets = local_m[:, None] * stride_qm + cols[None, :] * stride_qd
    do_offsets = local_m[:, None] * stride_gm + cols[None, :] * stride_gd
    first_head = kv_head * group
    row_base = batch * q_heads * q_len
    first, full_first, full_last, last = _query_blocks(n0, q_len, k_len, shift, left, right, BLOCK_M, BLOCK_N)
    dk, dv = _dkdv_blocks(dk, dv, k, v, Q, DO, LSE, DELTA, SLOPES, q_offsets, do_offsets, stride_qh, stride_qm,
                          stride_gh, stride_gm, first_head, row_base, group, first, full_first, keys, q_len, k_len,
                          shift, left, right, qk_scale2, d_mask, BLOCK_M, True, PAD_D, ALIBI, PRECISION)
    dk, dv = _dkdv_blocks(dk, dv, k, v, Q, DO, LSE, DELTA, SLOPES, q_offsets, do_offsets, stride_qh, stride_qm,
                          stride_gh, stride_gm, first_head, row_base, group, full_first, full_last, keys, q_len, k_len,
                          shift, left, right, qk_scale2, d_mask, BLOCK_M, False, PAD_D, ALIBI, PRECISION)
    dk, dv = _dkdv_blocks(dk, dv, k, v, Q, DO, LSE, DELTA, SLOPES, q_offsets, do_offsets, stride_qh, stride_qm,
                          stride_gh, stride_gm, first_head, row_base, group, full_last, last, keys, q_len, k_len,
                          shift, left, right, qk_scale2, d_mask, BLOCK_M, True, PAD_D, ALIBI, PRECISION)
    dk_base = DK + batch * stride_dkb + kv_head * stride_dkh + n0.to(tl.int64) * stride_dkn
    dv_base = DV + batch * stride_dvb + kv_head * stride_dvh + n0.to(tl.int64) * stride_dvn
    _store_rows(dk_base + local_n[:, None] * stride_dkn + cols[None, :] * stride_dkd,
                (dk * scale).to(DK.dtype.element_ty), keys, k_len, d_mask, PAD_D)
    _store_rows(dv_base + local_n[:, None] * stride_dvn + cols[None, :] * stride_dvd, dv.to(DV.dtype.element_ty),
                keys, k_len, d_mask, PAD_D)


@triton.jit
def _dq_blocks(dq, q, do, lse2, delta, K, V, k_offsets, v_offsets, stride_kn, stride_vn, block_lo, block_hi,
               rows, k_len, shift, left, right, qk_scale2, slope2, d_mask,
               BLOCK_N: tl.constexpr, MASKED: tl.constexpr, PAD_D: tl.constexpr, ALIBI: tl.constexpr,
               PRECISION: tl.constexpr):
    """dQ += dS K (unscaled) over the key blocks [block_lo, block_hi), P recomputed from the saved LSE."""
    local = tl.arange(0, BLOCK_N)
    for block in tl.range(block_lo, block_hi):
        n0 = block * BLOCK_N
        keys = n0 + local
        k = _load_rows(K + n0.to(tl.int64) * stride_kn + k_offsets, keys, k_len, d_mask, MASKED, PAD_D)
        v = _load_rows(V + n0.to(tl.int64) * stride_vn + v_offsets, keys, k_len, d_mask, MASKED, PAD_D)
        s = _scores_log2(q, k, rows, keys, shift, qk_scale2, slope2, ALIBI, PRECISION)
        if MASKED:
            s = tl.where(_visible(rows[:, None] + shift, keys[None, :], k_len, left, right), s, float("-inf"))
        p = tl.exp2(s - lse2[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)
    return dq


@triton.jit
def _flash2_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ, SLOPES,
                   stride_qb, stride_qh, stride_qm, stride_qd, stride_kb, stride_kh, stride_kn, stride_kd,
                   stride_vb, stride_vh, stride_vn, stride_vd, stride_gb, stride_gh, stride_gm, stride_gd,
                   stride_dqb, stride_dqh, stride_dqm, stride_dqd,
                   q_heads, group, q_len, k_len, shift, left, right, qk_scale2, scale,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   ALIBI: tl.constexpr, PRECISION: tl.constexpr):
    """One (query block, batch * q head): dQ [BLOCK_M, D]; Q, dO, LSE and delta stay on chip."""
    PAD_D: tl.constexpr = BLOCK_D != HEAD_DIM
    m0 = tl.program_id(0) * BLOCK_M
    batch, head, kv_head = _program_heads(q_heads, group)
    local_m, local_n, cols = tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D)
    rows = m0 + local_m
    d_mask = cols < HEAD_DIM
    q_base = Q + batch * stride_qb + head * stride_qh + m0.to(tl.int64) * stride_qm
    g_base = DO + batch * stride_gb + head * stride_gh + m0.to(tl.int64) * stride_gm
    q = _load_rows(q_base + local_m[:, None] * stride_qm + cols[None, :] * stride_qd, rows, q_len, d_mask, True, PAD_D)
    do = _load_rows(g_base + local_m[:, None] * stride_gm + cols[None, :] * stride_gd, rows, q_len, d_mask, True,
                    PAD_D)
    lse2, delta = _load_row_stats(LSE, DELTA, (batch * q_heads + head) * q_len, rows, q_len, True)
    K += batch * stride_kb + kv_head * stride_kh
    V += batch * stride_vb + kv_head * stride_vh
    k_offsets = local_n[:, None] * stride_kn + cols[None, :] * stride_kd
    v_offsets = local_n[:, None] * stride_vn + cols[None, :] * stride_vd
    slope2 = 0.0
    if ALIBI:
        slope2 = tl.load(SLOPES + head) * LOG2E

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    first, full_first, full_last, last = _key_blocks(m0, q_len, k_len, shift, left, right, BLOCK_M, BLOCK_N)
    dq = _dq_blocks(dq, q, do, lse2, delta, K, V, k_offsets, v_offsets, stride_kn, stride_vn, first, full_first,
                    rows, k_len, shift, left, right, qk_scale2, slope2, d_mask, BLOCK_N, True, PAD_D, ALIBI, PRECISION)
    dq = _dq_blocks(dq, q, do, lse2, delta, K, V, k_offsets, v_offsets, stride_kn, stride_vn, full_first, full_last,
                    rows, k_len, shift, left, right, qk_scale2, slope2, d_mask, BLOCK_N, False, PAD_D, ALIBI,
                    PRECISION)
    dq = _dq_blocks(dq, q, do, lse2, delta, K, V, k_offsets, v_offsets, stride_kn, stride_vn, full_last, last,
                    rows, k_len, shift, left, right, qk_scale2, slope2, d_mask, BLOCK_N, True, PAD_D, ALIBI, PRECISION)
    dq_base = DQ + batch * stride_dqb + head * stride_dqh + m0.to(tl.int64) * stride_dqm
    _store_rows(dq_base + local_m[:, None] * stride_dqm + cols[None, :] * stride_dqd,
                (dq * scale).to(DQ.dtype.element_ty), rows, q_len, d_mask, PAD_D)


# ----------------------------------------------------------------------------------------------------------------
# Launch configs: the tiles per head dim and dtype, and the shared memory each kernel holds
# ----------------------------------------------------------------------------------------------------------------

def _padded_head_dim(head_dim: int) -> int:
    return max(MIN_HEAD_DIM, triton.next_power_of_2(head_dim))


def _check_config_args(q_shape, k_shape, dtype: torch.dtype) -> None:
    if len(q_shape) != 4 or len(k_shape) != 4:
        raise ValueError(f"q_shape {tuple(q_shape)}, k_shape {tuple(k_shape)}; both must be [B, H, N, D]")
    if not MIN_HEAD_DIM <= q_shape[3] <= MAX_HEAD_DIM:
        raise ValueError(f"head dim = {q_shape[3]}; it must be from {MIN_HEAD_DIM} to {MAX_HEAD_DIM}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype = {dtype}; use one of float16, bfloat16, float32")


def _tiles(table: dict, table_fp32: dict, interpreter: tuple, head_dim: int, dtype: torch.dtype) -> tuple:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for one kernel."""
    if INTERPRETING:
        return interpreter
    return (table_fp32 if dtype == torch.float32 else table)[_padded_head_dim(head_dim)]


def _precision(dtype: torch.dtype) -> str:
    """Exact fp32 dots for fp32 inputs (shared/DESIGN.md); fp16/bf16 run on tensor cores, fp32 accumulation."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _shared_key(kernel: str, tiles: tuple, head_dim: int, dtype: torch.dtype, flag: bool) -> tuple:
    return (kernel, *tiles, _padded_head_dim(head_dim), head_dim, dtype, flag)


def _config(kernel: str, tiles: tuple, grid: tuple, estimate_bytes: int, key: tuple) -> LaunchConfig:
    """The config with the compiler's shared memory where this variant has been launched, else the estimate."""
    block_m, block_n, warps, stages = tiles
    if key in _compiled_shared_bytes:
        return LaunchConfig(kernel, block_m, block_n, warps, stages, grid, _compiled_shared_bytes[key], "compiled")
    return LaunchConfig(kernel, block_m, block_n, warps, stages, grid, int(estimate_bytes), "estimate")


def launch_configs(q_shape, k_shape, dtype: torch.dtype, *, causal: bool = False,
                   window: tuple[int, int] | None = None, alibi_slopes=None) -> list[LaunchConfig]:
    """The forward's one launch for q [B, Hq, Nq, D], k/v [B, Hkv, Nk, D]. The tiles depend on the head dim and
    dtype only; causal and window are accepted so a caller can pass the op's keywords unchanged.
    Shared memory estimate: the Q tile plus num_stages K and V tiles."""
    _check_config_args(q_shape, k_shape, dtype)
    batch, q_heads, q_len, head_dim = q_shape
    tiles = _tiles(FORWARD_SM90, FORWARD_SM90_FP32, FORWARD_INTERPRETER, head_dim, dtype)
    block_m, block_n, _, stages = tiles
    tile_bytes = _padded_head_dim(head_dim) * element_bytes(dtype)
    grid = (triton.cdiv(q_len, block_m), batch * q_heads)
    key = _shared_key("_flash2_fwd", tiles, head_dim, dtype, alibi_slopes is not None)
    return [_config("_flash2_fwd", tiles, grid, (block_m + stages * 2 * block_n) * tile_bytes, key)]


def backward_launch_configs(q_shape, k_shape, dtype: torch.dtype, *, causal: bool = False,
                            window: tuple[int, int] | None = None, alibi_slopes=None,
                            lse_grad: bool = False) -> list[LaunchConfig]:
    """The backward's launches in order: delta, dK/dV, dQ. `lse_grad`: a gradient of the LSE output flows in.
    Shared memory estimates: dK/dV holds K_j, V_j and num_stages Q, dO tiles with their LSE and delta rows;
    dQ holds Q_i, dO_i and num_stages K, V tiles; delta holds no shared buffer."""
    _check_config_args(q_shape, k_shape, dtype)
    batch, q_heads, q_len, head_dim = q_shape
    kv_heads, k_len = k_shape[1], k_shape[2]
    tile_bytes = _padded_head_dim(head_dim) * element_bytes(dtype)  # one row of Q, K, V or dO
    alibi = alibi_slopes is not None
    rows = DELTA_ROWS_INTERPRETER if INTERPRETING else DELTA_ROWS_SM90
    delta = (rows, 1, 4, 1)
    dkdv_m, dkdv_n, _, dkdv_stages = dkdv = _tiles(DKDV_SM90, DKDV_SM90_FP32, DKDV_INTERPRETER, head_dim, dtype)
    dq_m, dq_n, _, dq_stages = dq = _tiles(DQ_SM90, DQ_SM90_FP32, DQ_INTERPRETER, head_dim, dtype)
    dkdv_bytes = 2 * dkdv_n * tile_bytes + dkdv_stages * dkdv_m * (2 * tile_bytes + 2 * 4)
    dq_bytes = 2 * dq_m * tile_bytes + dq_stages * 2 * dq_n * tile_bytes
    return [
        _config("_flash2_bwd_delta", delta, (triton.cdiv(q_len, rows), batch * q_heads), 0,
                _shared_key("_flash2_bwd_delta", delta, head_dim, dtype, lse_grad)),
        _config("_flash2_bwd_dkdv", dkdv, (triton.cdiv(k_len, dkdv_n), batch * kv_heads), dkdv_bytes,
                _shared_key("_flash2_bwd_dkdv", dkdv, head_dim, dtype, alibi)),
        _config("_flash2_bwd_dq", dq, (triton.cdiv(q_len, dq_m), batch * q_heads), dq_bytes,
                _shared_key("_flash2_bwd_dq", dq, head_dim, dtype, alibi)),
    ]


def recent_launches() -> list[LaunchConfig]:
    """The configs the most recent forward or backward call launched, shared memory as compiled where known."""
    return list(_recent_launches)


def _launch(kernel, config: LaunchConfig, key: tuple, args: tuple, constexprs: dict) -> None:
    """Launch `kernel` exactly as `config` says and remember what the compiler allocated."""
    if 0 in config.grid:
        return
    compiled = kernel[config.grid](*args, num_warps=config.num_warps, num_stages=config.num_stages, **constexprs)
    launched = config.with_compiled(compiled)
    if launched.shared_mem_source == "compiled":
        _compiled_shared_bytes[key] = launched.shared_mem_bytes
    _recent_launches.append(launched)


# ----------------------------------------------------------------------------------------------------------------
# Checking inputs
# ----------------------------------------------------------------------------------------------------------------

def _check_tensor(name: str, x, ndim: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} is a {type(x).__name__}; pass a torch.Tensor")
    if x.dim() != ndim:
        raise ValueError(f"{name} has shape {tuple(x.shape)}; it must have {ndim} dimensions")
    if x.device.type != "cuda" and not INTERPRETING:
        raise ValueError(f"{name} is on {x.device}; use a CUDA tensor (or TRITON_INTERPRET=1 on the CPU)")


def _check_qkv(q, k, v) -> None:
    """q [B, Hq, Nq, D], k and v [B, Hkv, Nk, D]: one dtype, one device, Hq a multiple of Hkv, 32 <= D <= 256."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        _check_tensor(name, x, 4)
    if q.dtype not in DTYPES:
        raise ValueError(f"q.dtype = {q.dtype}; use one of float16, bfloat16, float32")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v dtypes = {q.dtype}, {k.dtype}, {v.dtype}; they must all be {q.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k, v devices = {q.device}, {k.device}, {v.device}; put them on one device")
    if tuple(k.shape) != tuple(v.shape):
        raise ValueError(f"k shape {tuple(k.shape)} != v shape {tuple(v.shape)}; they must match")
    if k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3]:
        raise ValueError(f"q shape {tuple(q.shape)} and k shape {tuple(k.shape)} must agree in batch and head dim")
    if not MIN_HEAD_DIM <= q.shape[3] <= MAX_HEAD_DIM:
        raise ValueError(f"head dim = {q.shape[3]}; it must be from {MIN_HEAD_DIM} to {MAX_HEAD_DIM}")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise ValueError(f"q heads = {q.shape[1]} must be a multiple of kv heads = {k.shape[1]}")


def _check_options(q, window, alibi_slopes, scale) -> None:
    if window is not None:
        if (not isinstance(window, (tuple, list)) or len(window) != 2
                or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 0 for w in window)):
            raise ValueError(f"window = {window!r}; pass (left, right) with whole numbers >= 0, or None")
    if alibi_slopes is not None:
        _check_tensor("alibi_slopes", alibi_slopes, 1)
        if alibi_slopes.shape[0] != q.shape[1] or alibi_slopes.device != q.device:
            raise ValueError(f"alibi_slopes has shape {tuple(alibi_slopes.shape)} on {alibi_slopes.device}; "
                             f"it must be [{q.shape[1]}] (one slope per q head) on {q.device}")
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise ValueError(f"scale = {scale!r}; pass a finite number or None (1 / sqrt(D))")


def _check_out(name: str, x, shape, dtype: torch.dtype, device) -> None:
    if x is None:
        return
    if not isinstance(x, torch.Tensor) or tuple(x.shape) != tuple(shape) or x.dtype != dtype or x.device != device:
        got = f"{tuple(x.shape)} {x.dtype} on {x.device}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} is {got}; it must be {tuple(shape)} {dtype} on {device}")


def _mask_bounds(q_len: int, k_len: int, causal: bool, window) -> tuple[int, int]:
    """(left, right) of the visible band around p = i + Nk - Nq; no window is a band wider than any distance."""
    far = q_len + k_len + 1
    left, right = (far, far) if window is None else (min(window[0], far), min(window[1], far))
    return left, (min(right, 0) if causal else right)


def _slopes(alibi_slopes, q):
    """fp32 contiguous slopes, or a placeholder pointer the kernel never reads."""
    return q if alibi_slopes is None else alibi_slopes.detach().to(torch.float32).contiguous()


# ----------------------------------------------------------------------------------------------------------------
# Forward and backward on the host
# ----------------------------------------------------------------------------------------------------------------

def _forward(q, k, v, causal, window, alibi_slopes, scale, out, lse_out):
    """(O [B, Hq, Nq, D], LSE [B, Hq, Nq] fp32) from the forward kernel."""
    batch, q_heads, q_len, head_dim = q.shape
    kv_heads, k_len = k.shape[1], k.shape[2]
    _check_out("out", out, q.shape, q.dtype, q.device)
    _check_out("lse_out", lse_out, (batch, q_heads, q_len), torch.float32, q.device)
    o = torch.empty_like(q) if out is None else out
    lse = torch.empty((batch, q_heads, q_len), dtype=torch.float32, device=q.device) if lse_out is None else lse_out
    scale = head_dim ** -0.5 if scale is None else float(scale)
    left, right = _mask_bounds(q_len, k_len, causal, window)
    [config] = launch_configs(q.shape, k.shape, q.dtype, causal=causal, window=window, alibi_slopes=alibi_slopes)
    tiles = (config.block_m, config.block_n, config.num_warps, config.num_stages)
    _recent_launches.clear()
    _launch(_flash2_fwd, config, _shared_key(config.kernel, tiles, head_dim, q.dtype, alibi_slopes is not None),
            (q, k, v, o, lse, _slopes(alibi_slopes, q), *q.stride(), *k.stride(), *v.stride(), *o.stride(),
             *lse.stride(), q_heads, q_heads // kv_heads, q_len, k_len, k_len - q_len, left, right,
             scale * LOG2E.value),
            dict(HEAD_DIM=head_dim, BLOCK_D=_padded_head_dim(head_dim), BLOCK_M=config.block_m,
                 BLOCK_N=config.block_n, ALIBI=alibi_slopes is not None, PRECISION=_precision(q.dtype)))
    return o, lse


def _backward(do, q, k, v, o, lse, dlse, dq, dk, dv, causal, window, alibi_slopes, scale) -> None:
    """Launch delta, dK/dV and dQ; lse and dlse contiguous [B, Hq, Nq] fp32 (dlse may be None)."""
    batch, q_heads, q_len, head_dim = q.shape
    kv_heads, k_len = k.shape[1], k.shape[2]
    delta = torch.empty((batch, q_heads, q_len), dtype=torch.float32, device=q.device)
    scale = head_dim ** -0.5 if scale is None else float(scale)
    left, right = _mask_bounds(q_len, k_len, causal, window)
    slopes, alibi, lse_grad = _slopes(alibi_slopes, q), alibi_slopes is not None, dlse is not None
    configs = backward_launch_configs(q.shape, k.shape, q.dtype, causal=causal, window=window,
                                      alibi_slopes=alibi_slopes, lse_grad=lse_grad)
    keys = [_shared_key(c.kernel, (c.block_m, c.block_n, c.num_warps, c.num_stages), head_dim, q.dtype, flag)
            for c, flag in zip(configs, (lse_grad, alibi, alibi))]
    shape = dict(HEAD_DIM=head_dim, BLOCK_D=_padded_head_dim(head_dim))
    common = dict(shape, ALIBI=alibi, PRECISION=_precision(q.dtype))
    band = (q_len, k_len, k_len - q_len, left, right, scale * LOG2E.value, scale)
    _recent_launches.clear()
    _launch(_flash2_bwd_delta, configs[0], keys[0],
            (o, do, dlse if lse_grad else delta, delta, *o.stride(), *do.stride(), q_heads, q_len),
            dict(shape, BLOCK_M=configs[0].block_m, HAS_DLSE=lse_grad))
    _launch(_flash2_bwd_dkdv, configs[1], keys[1],
            (q, k, v, do, lse, delta, dk, dv, slopes, *q.stride(), *k.stride(), *v.stride(), *do.stride(),
             *dk.stride(), *dv.stride(), q_heads, kv_heads, q_heads // kv_heads, *band),
            dict(common, BLOCK_M=configs[1].block_m, BLOCK_N=configs[1].block_n))
    _launch(_flash2_bwd_dq, configs[2], keys[2],
            (q, k, v, do, lse, delta, dq, slopes, *q.stride(), *k.stride(), *v.stride(), *do.stride(),
             *dq.stride(), q_heads, q_heads // kv_heads, *band),
            dict(common, BLOCK_M=configs[2].block_m, BLOCK_N=configs[2].block_n))


def flash_attention_backward(do, q, k, v, o, lse, *, causal: bool = False, window: tuple[int, int] | None = None,
                             alibi_slopes=None, scale: float | None = None, dlse=None, dq_out=None, dk_out=None,
                             dv_out=None):
    """Gradients of attention for the output gradient do [B, Hq, Nq, D] (and dlse [B, Hq, Nq] of the LSE output,
    or None), given the forward's o [B, Hq, Nq, D] and lse [B, Hq, Nq] (natural log). Returns
    (dQ [B, Hq, Nq, D], dK [B, Hkv, Nk, D], dV [B, Hkv, Nk, D]) in the inputs' dtype, GQA summed over each group.
    dq_out, dk_out, dv_out: preallocated outputs."""
    _check_qkv(q, k, v)
    _check_options(q, window, alibi_slopes, scale)
    rows = tuple(q.shape[:3])
    for name, x, shape, dtype in (("do", do, q.shape, q.dtype), ("o", o, q.shape, q.dtype),
                                  ("lse", lse, rows, torch.float32), ("dlse", dlse, rows, torch.float32),
                                  ("dq_out", dq_out, q.shape, q.dtype), ("dk_out", dk_out, k.shape, k.dtype),
                                  ("dv_out", dv_out, k.shape, k.dtype)):
        _check_out(name, x, shape, dtype, q.device)
    dq = torch.empty_like(q) if dq_out is None else dq_out
    dk = torch.empty_like(k) if dk_out is None else dk_out
    dv = torch.empty_like(v) if dv_out is None else dv_out
    _backward(do, q, k, v, o, lse.contiguous(), None if dlse is None else dlse.contiguous(), dq, dk, dv, causal,
              tuple(window) if window is not None else None, alibi_slopes, scale)
    return dq, dk, dv


class FlashAttentionFunction(torch.autograd.Function):
    """Autograd for flash_attention: saves Q, K, V, O and the LSE; the backward recomputes P from the LSE."""

    @staticmethod
    def forward(ctx, q, k, v, causal, window, alibi_slopes, scale, out, lse_out):
        o, lse = _forward(q, k, v, causal, window, alibi_slopes, scale, out, lse_out)
        ctx.save_for_backward(q, k, v, o, lse, alibi_slopes)
        ctx.options = dict(causal=causal, window=window, scale=scale)
        ctx.set_materialize_grads(False)
        return o, lse

    @staticmethod
    def backward(ctx, do, dlse):
        q, k, v, o, lse, alibi_slopes = ctx.saved_tensors
        do = torch.zeros_like(o) if do is None else do
        dq, dk, dv = flash_attention_backward(do, q, k, v, o, lse, alibi_slopes=alibi_slopes, dlse=dlse,
                                              **ctx.options)
        return dq, dk, dv, None, None, None, None, None, None


def flash_attention(q, k, v, *, causal: bool = False, window: tuple[int, int] | None = None, alibi_slopes=None,
                    scale: float | None = None, return_lse: bool = False, out=None, lse_out=None):
    """softmax(scale * Q K^T + bias) V, FlashAttention-2 (Dao 2023).

    q [B, Hq, Nq, D], k and v [B, Hkv, Nk, D] (Hq a multiple of Hkv: q head h reads kv head h // (Hq // Hkv)),
    fp16, bf16 or fp32, 32 <= D <= 256; queries aligned to the end of the keys (p = i + Nk - Nq).
    causal: key j visible iff j <= p. window (left, right): iff p - left <= j <= p + right.
    alibi_slopes [Hq]: bias -slope * |p - j|. scale: default 1 / sqrt(D).
    Returns O [B, Hq, Nq, D] in q's dtype, and LSE [B, Hq, Nq] fp32 (natural log) with return_lse.
    out, lse_out: preallocated outputs (the LSE is written to lse_out even without return_lse).
    Differentiable in q, k, v (FlashAttentionFunction), including through the LSE; with autograd the returned O
    is a view of `out`."""
    _check_qkv(q, k, v)
    _check_options(q, window, alibi_slopes, scale)
    window = None if window is None else tuple(window)
    if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)):
        o, lse = FlashAttentionFunction.apply(q, k, v, causal, window, alibi_slopes, scale, out, lse_out)
    else:
        o, lse = _forward(q, k, v, causal, window, alibi_slopes, scale, out, lse_out)
    return (o, lse) if return_lse else o


# ----------------------------------------------------------------------------------------------------------------
# Benchmark against PyTorch's FlashAttention-2 (SDPA flash backend) on a GPU
# ----------------------------------------------------------------------------------------------------------------

def attention_flops(batch: int, heads: int, seq_len: int, head_dim: int, causal: bool, backward: bool) -> float:
    """4 B H N^2 d for the forward's two matmuls, halved when causal; the backward counts 2.5 times that
    (five matmuls instead of two, Dao 2023 section 4.1), as the FlashAttention papers report it."""
    flops = 4.0 * batch * heads * seq_len * seq_len * head_dim * (0.5 if causal else 1.0)
    return flops * (2.5 if backward else 1.0)


def benchmark(batch: int = 4, heads: int = 32, seq_len: int = 4096, head_dim: int = 128, causal: bool = False,
              dtype: torch.dtype = torch.bfloat16, backward: bool = False) -> dict[str, float]:
    """TFLOP/s of flash_attention and of torch SDPA's flash backend on one shape (median of triton's do_bench),
    the comparison of shared/DESIGN.md's peer table. Needs a CUDA device."""
    if not torch.cuda.is_available():
        raise ValueError("benchmark needs a CUDA device; none is available")
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from triton.testing import do_bench

    q, k, v = (torch.randn(batch, heads, seq_len, head_dim, device="cuda", dtype=dtype, requires_grad=backward)
               for _ in range(3))

    def ours():
        return flash_attention(q, k, v, causal=causal)

    def sdpa():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)

    flops = attention_flops(batch, heads, seq_len, head_dim, causal, backward)
    result = {}
    for name, run in (("flash2", ours), ("sdpa_flash", sdpa)):
        if backward:
            o = run()
            do = torch.randn_like(o)
            ms = do_bench(lambda: o.backward(do, retain_graph=True), grad_to_none=[q, k, v])
        else:
            ms = do_bench(run)
        result[f"{name}_tflops"] = flops / (ms * 1e-3) / 1e12
    return result
