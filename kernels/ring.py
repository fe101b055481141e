"""One step of Ring Attention (Liu et al. 2023, section 3): a rank's local queries against the one
K/V block that has reached it, at global positions, and the exact log-sum-exp merge of the steps.

    ring_step   blockwise attention (FlashAttention-2's Q-block outer loop, Dao 2023): one program per
                BLOCK_M query rows of one (batch, q head); Q_i and the fp32 accumulator stay on chip
                while the K/V tiles stream past; writes O_i and LSE_i once
    ring_merge  O = w_acc O_acc + w O with w = exp(LSE_part - LSE_new), in place on the accumulator;
                one program per BLOCK_M rows

`ring_attention` simulates the ring on one device: the sequence is cut into `world` contiguous blocks,
rank r holds Q_r, and at step s it holds the K/V block of rank (r - s) mod world (each hop passes a
block to the next rank); the steps' partial results merge into full attention.

Positions: local query i sits at q_start + i, key j at k_start + j; causal means key position <= query
position. A row that sees no key of the block gets O 0 and LSE -inf, which the merge weighs as nothing.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.checks import LN2, LOG2E, check_output, check_qkv, dot_precision, head_block
from kernels.launch import INTERPRETING, LaunchConfig, element_bytes, launch

# Step tiles on sm_90, as the Triton fused-attention tutorial (06-fused-attention.py) runs its forward:
# 128 x 64 with 4 warps (8 for d > 64), 3 stages; fp32 operands take twice the shared memory and exact fp32
# dots many more registers, so half the tile; d > 128 halves BLOCK_M again (the accumulator is BLOCK_M x d).
# The interpreter runs 16 x 16 so that short test blocks span several tiles.
STEP_TILES = {2: (128, 64), 4: (64, 32)}  # element bytes -> (BLOCK_M, BLOCK_N)
STEP_STAGES = 3
INTERPRETER_TILE = 16
# Merge: each program holds MERGE_ELEMENTS of each O (16 fp32 per thread of 4 warps); the interpreter
# runs 16 rows per program.
MERGE_ELEMENTS = 2048
MERGE_WARPS = 4


@triton.jit
def ring_step(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr,
              stride_qb, stride_qh, stride_qn, stride_qd,
              stride_kb, stride_kh, stride_kn, stride_kd,
              stride_vb, stride_vh, stride_vn, stride_vd,
              stride_ob, stride_oh, stride_om, stride_od,
              stride_lb, stride_lh, stride_ln,
              q_heads, group, q_len, kv_len, head_dim, shift, scale_log2,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
              DOT_PRECISION: tl.constexpr):
    """BLOCK_M query rows against the whole K/V block; shift = q_start - k_start, so that causally local
    query r sees local key c iff c <= r + shift."""
    pid = tl.program_id(0)
    t_r = tl.cdiv(q_len, BLOCK_M)
    i = pid % t_r
    head = pid // t_r
    b = (head // q_heads).to(tl.int64)
    h = (head % q_heads).to(tl.int64)
    rows = i * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < q_len
    q = tl.load(q_ptr + b * stride_qb + h * stride_qh + rows[:, None].to(tl.int64) * stride_qn + dims[None, :]
                * stride_qd, mask=row_ok[:, None] & (dims[None, :] < head_dim), other=0.0)
    k_base = k_ptr + b * stride_kb + (h // group) * stride_kh
    v_base = v_ptr + b * stride_vb + (h // group) * stride_vh
    end = kv_len
    if CAUSAL:  # keys past the block's last query position are never loaded
        end = tl.minimum(tl.maximum(tl.minimum((i + 1) * BLOCK_M, q_len) + shift, 0), kv_len)
    m = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for c0 in range(0, end, BLOCK_N):
        keys = c0 + tl.arange(0, BLOCK_N)
        k = tl.load(k_base + keys[None, :].to(tl.int64) * stride_kn + dims[:, None] * stride_kd,
                    mask=(keys[None, :] < kv_len) & (dims[:, None] < head_dim), other=0.0)
        v = tl.load(v_base + keys[:, None].to(tl.int64) * stride_vn + dims[None, :] * stride_vd,
                    mask=(keys[:, None] < kv_len) & (dims[None, :] < head_dim), other=0.0)
        s = tl.dot(q, k, input_precision=DOT_PRECISION) * scale_log2
        seen = keys[None, :] < kv_len
        if CAUSAL:
            seen = seen & (keys[None, :] <= rows[:, None] + shift)
        s = tl.where(seen, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row that has seen no key yet
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m - m_safe)
        l = l * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m = m_new
    seen_any = l > 0.0
    inv = tl.where(seen_any, 1.0 / tl.where(seen_any, l, 1.0), 0.0)
    o = o_ptr + b * stride_ob + h * stride_oh + rows[:, None].to(tl.int64) * stride_om + dims[None, :] * stride_od
    tl.store(o, (acc * inv[:, None]).to(o_ptr.dtype.element_ty), mask=row_ok[:, None] & (dims[None, :] < head_dim))
    lse = tl.where(seen_any, (m + tl.log2(tl.where(seen_any, l, 1.0))) * LN2, float("-inf"))
    tl.store(lse_ptr + b * stride_lb + h * stride_lh + rows.to(tl.int64) * stride_ln, lse, mask=row_ok)


@triton.jit
def ring_merge(oa_ptr, la_ptr, o_ptr, l_ptr,
               stride_ab, stride_ah, stride_am, stride_ad,
               stride_lab, stride_lah, stride_lam,
               stride_ob, stride_oh, stride_om, stride_od,
               stride_lb, stride_lh, stride_lm,
               heads, q_len, rows_total, head_dim,
               BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """O_acc, LSE_acc <- the exact merge of (O_acc, LSE_acc) and (O, LSE) for BLOCK_M rows of [B, H, N].
    An LSE of -inf on either side weighs nothing, whatever its O holds; both -inf gives O 0, LSE -inf."""
    index = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = index < rows_total
    n = index % q_len
    h = (index // q_len) % heads
    b = index // q_len // heads
    dims = tl.arange(0, BLOCK_D)
    in_tile = row_ok[:, None] & (dims[None, :] < head_dim)
    la_rows = la_ptr + b * stride_lab + h * stride_lah + n * stride_lam
    l_rows = l_ptr + b * stride_lb + h * stride_lh + n * stride_lm
    lse_acc = tl.load(la_rows, mask=row_ok, other=float("-inf"))
    lse = tl.load(l_rows, mask=row_ok, other=float("-inf"))
    top = tl.maximum(lse_acc, lse)
    top_safe = tl.where(top == float("-inf"), 0.0, top)
    w_acc = tl.exp(lse_acc - top_safe)
    w = tl.exp(lse - top_safe)
    total = w_acc + w
    inv = tl.where(total > 0.0, 1.0 / tl.where(total > 0.0, total, 1.0), 0.0)
    oa = oa_ptr + b[:, None] * stride_ab + h[:, None] * stride_ah + n[:, None] * stride_am + dims[None, :] * stride_ad
    o = o_ptr + b[:, None] * stride_ob + h[:, None] * stride_oh + n[:, None] * stride_om + dims[None, :] * stride_od
    o_acc = tl.load(oa, mask=in_tile, other=0.0).to(tl.float32)
    o_part = tl.load(o, mask=in_tile, other=0.0).to(tl.float32)
    merged = (tl.where(w_acc[:, None] > 0.0, w_acc[:, None] * o_acc, 0.0)
              + tl.where(w[:, None] > 0.0, w[:, None] * o_part, 0.0)) * inv[:, None]
    tl.store(oa, merged.to(oa_ptr.dtype.element_ty), mask=in_tile)
    new_lse = tl.where(total > 0.0, top_safe + tl.log(tl.where(total > 0.0, total, 1.0)), float("-inf"))
    tl.store(la_rows, new_lse, mask=row_ok)


def step_tiles(head_dim: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) of ring_step."""
    if INTERPRETING:
        return INTERPRETER_TILE, INTERPRETER_TILE, 4
    block_m, block_n = STEP_TILES[min(element_bytes(dtype), 4)]
    if head_dim > 128:
        block_m //= 2
    return block_m, block_n, 8 if head_dim > 64 else 4


def launch_configs(q: Tensor, k_block: Tensor, v_block: Tensor) -> list[LaunchConfig]:
    """The one launch of ring_attention_step for these inputs."""
    check_qkv(q, k_block, v_block)
    batch, q_heads, q_len, head_dim = q.shape
    bm, bn, warps = step_tiles(head_dim, q.dtype)
    d_block = head_block(head_dim)
    e = element_bytes(q.dtype)
    smem = STEP_STAGES * 2 * bn * d_block * e + bm * d_block * e  # K, V tiles per stage; Q_i
    return [LaunchConfig("ring_step", bm, bn, warps, STEP_STAGES, (triton.cdiv(q_len, bm) * batch * q_heads,), smem)]


def merge_launch_configs(o_acc: Tensor) -> list[LaunchConfig]:
    """The one launch of merge_steps for an accumulator [B, H, N, D]."""
    rows = o_acc.shape[0] * o_acc.shape[1] * o_acc.shape[2]
    block_rows = INTERPRETER_TILE if INTERPRETING else MERGE_ELEMENTS // head_block(o_acc.shape[3])
    return [LaunchConfig("ring_merge", block_rows, 1, MERGE_WARPS, 1, (triton.cdiv(rows, block_rows),), 0)]


def _check_step_output(name: str, t: Tensor | None, shape: tuple, q: Tensor, dtypes: tuple) -> None:
    if t is not None and t.dtype not in dtypes:
        raise ValueError(f"{name}.dtype = {t.dtype}; expected one of {', '.join(map(str, dtypes))}")
    check_output(name, t, shape, t.dtype if t is not None else q.dtype, q.device)


def ring_attention_step(q: Tensor, k_block: Tensor, v_block: Tensor, *, q_start: int, k_start: int, causal: bool,
                        scale: float | None = None, out: Tensor | None = None, lse_out: Tensor | None = None,
                        launched: list | None = None) -> tuple[Tensor, Tensor]:
    """Attention of local queries q [B, Hq, Nq, D] (positions q_start + i) over one block k_block, v_block
    [B, Hkv, Nk, D] (positions k_start + j). out [B, Hq, Nq, D] in q's dtype or fp32 (an accumulator),
    lse_out [B, Hq, Nq] fp32, natural log. Returns (O, LSE); a row that sees no key: O 0, LSE -inf."""
    (config,) = launch_configs(q, k_block, v_block)
    batch, q_heads, q_len, head_dim = q.shape
    for name, value in (("q_start", q_start), ("k_start", k_start)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} = {value!r}; expected a position, a whole number >= 0")
    _check_step_output("out", out, q.shape, q, (q.dtype, torch.float32))
    _check_step_output("lse_out", lse_out, (batch, q_heads, q_len), q, (torch.float32,))
    out = torch.empty_like(q) if out is None else out
    lse_out = torch.empty((batch, q_heads, q_len), dtype=torch.float32, device=q.device) if lse_out is None else lse_out
    scale = head_dim ** -0.5 if scale is None else scale
    launch(ring_step, config, q, k_block, v_block, out, lse_out, *q.stride(), *k_block.stride(), *v_block.stride(),
           *out.stride(), *lse_out.stride(), q_heads, q_heads // k_block.shape[1], q_len, k_block.shape[2], head_dim,
           q_start - k_start, scale * LOG2E, launched=launched, BLOCK_M=config.block_m, BLOCK_N=config.block_n,
           BLOCK_D=head_block(head_dim), CAUSAL=causal, DOT_PRECISION=dot_precision(q.dtype))
    return out, lse_out


def merge_steps(o_acc: Tensor, lse_acc: Tensor, o: Tensor, lse: Tensor, *,
                launched: list | None = None) -> tuple[Tensor, Tensor]:
    """Merge a step's (o [B, H, N, D], lse [B, H, N]) into the accumulator (o_acc, lse_acc) in place, exactly:
    LSE = log(e^lse_acc + e^lse), O = e^(lse_acc - LSE) o_acc + e^(lse - LSE) o. LSE fp32, natural log.
    Returns (o_acc, lse_acc)."""
    if o_acc.dim() != 4 or o.shape != o_acc.shape:
        raise ValueError(f"o_acc {tuple(o_acc.shape)} and o {tuple(o.shape)} must be one shape [B, H, N, D]")
    for name, t in (("lse_acc", lse_acc), ("lse", lse)):
        check_output(name, t, o_acc.shape[:3], torch.float32, o_acc.device)
    if o.device != o_acc.device:
        raise ValueError(f"o is on {o.device}, o_acc on {o_acc.device}; pass one device")
    (config,) = merge_launch_configs(o_acc)
    batch, heads, q_len, head_dim = o_acc.shape
    launch(ring_merge, config, o_acc, lse_acc, o, lse, *o_acc.stride(), *lse_acc.stride(), *o.stride(), *lse.stride(),
           heads, q_len, batch * heads * q_len, head_dim, launched=launched, BLOCK_M=config.block_m,
           BLOCK_D=head_block(head_dim))
    return o_acc, lse_acc


def block_bounds(length: int, world: int) -> list[tuple[int, int]]:
    """[start, stop) of each rank's block: `world` contiguous blocks whose sizes differ by at most one."""
    base, extra = divmod(length, world)
    starts = [r * base + min(r, extra) for r in range(world + 1)]
    return list(zip(starts[:-1], starts[1:]))


def _one_rank(q: Tensor, k: Tensor, v: Tensor, bounds: list[tuple[int, int]], rank: int, causal: bool,
              scale: float | None, launched: list | None) -> tuple[Tensor, Tensor]:
    """Rank `rank`'s queries against every block in ring order, merged into an fp32 accumulator:
    (O [B, Hq, n_rank, D] fp32, LSE [B, Hq, n_rank])."""
    q0, q1 = bounds[rank]
    world = len(bounds)
    o_acc = q.new_empty(q.shape[:2] + (q1 - q0, q.shape[3]), dtype=torch.float32)
    lse_acc = q.new_empty(o_acc.shape[:3], dtype=torch.float32)
    o_step, lse_step = torch.empty_like(o_acc), torch.empty_like(lse_acc)
    for step in range(world):
        k0, k1 = bounds[(rank - step) % world]  # the block that has travelled `step` hops to this rank
        o, lse = (o_acc, lse_acc) if step == 0 else (o_step, lse_step)
        ring_attention_step(q[:, :, q0:q1], k[:, :, k0:k1], v[:, :, k0:k1], q_start=q0, k_start=k0, causal=causal,
                            scale=scale, out=o, lse_out=lse, launched=launched)
        if step:
            merge_steps(o_acc, lse_acc, o_step, lse_step, launched=launched)
    return o_acc, lse_acc


def ring_attention(q: Tensor, k: Tensor, v: Tensor, *, world: int, causal: bool, scale: float | None = None,
                   out: Tensor | None = None, lse_out: Tensor | None = None,
                   launched: list | None = None) -> tuple[Tensor, Tensor]:
    """Full attention of q [B, Hq, N, D] over k, v [B, Hkv, N, D] computed as a ring of `world` ranks on one
    device: each rank's queries meet every K/V block in ring order, merged in fp32. Returns (O [B, Hq, N, D]
    in q's dtype, LSE [B, Hq, N] fp32, natural log)."""
    check_qkv(q, k, v)
    batch, q_heads, length, _ = q.shape
    if k.shape[2] != length:
        raise ValueError(f"k length = {k.shape[2]} != q length = {length}; ring attention splits one sequence")
    if isinstance(world, bool) or not isinstance(world, int) or not 1 <= world <= length:
        raise ValueError(f"world = {world!r}; expected a whole number of ranks from 1 to the length {length}")
    check_output("out", out, q.shape, q.dtype, q.device)
    check_output("lse_out", lse_out, (batch, q_heads, length), torch.float32, q.device)
    out = torch.empty_like(q) if out is None else out
    lse_out = q.new_empty((batch, q_heads, length), dtype=torch.float32) if lse_out is None else lse_out
    bounds = block_bounds(length, world)
    for rank, (q0, q1) in enumerate(bounds):
        o, lse = _one_rank(q, k, v, bounds, rank, causal, scale, launched)
        out[:, :, q0:q1].copy_(o)
        lse_out[:, :, q0:q1].copy_(lse)
    return out, lse_out
