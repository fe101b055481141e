"""FlashDecoding++'s asynchronised softmax with a unified maximum value (Hong et al. 2023, section 3).

Flash-Decoding's splits each keep a running maximum and rescale their partial sums whenever it grows;
the combine then rescales the partials again by their LSE. FlashDecoding++ drops both: every split of
every row subtracts the same fixed scalar phi, accumulating l = sum exp(s - phi) and
acc = sum exp(s - phi) v directly, so partials add without rescaling (O = sum acc / sum l,
LSE = phi + ln sum l). This is exact as long as exp(s - phi) neither overflows nor underflows:

- any score above phi + threshold (overflow risk), or a row whose largest score is below phi - threshold
  (its terms underflow), or a non-finite result, flags the row;
- flagged rows are recomputed exactly by flash_decode (section 3, "recomputation") and reported.

phi defaults to 0: the paper's Figure 5 shows the softmax inputs of typical LLMs concentrated within a
few tens of zero, and with fp32 exponents (the accumulator, and P in the P V product: see below) the
default window of +-40 around phi loses nothing: exp(40) x 2^31 keys x fp16's largest value stays below
fp32's range, and exp(-40) is far above its smallest normal. Pass phi and threshold from a model's
statistics where its logits sit elsewhere.

P is unnormalised here, so it can exceed fp16's range (exp(11.1) = 65504): the P V product runs with P
in fp32 (TF32 tensor cores on the GPU, whose 8-bit exponent is fp32's; exact fp32 for fp32 inputs).

Kernels: unified_max_split (one program per (batch, kv head, row block, split), GQA rows as in
decode_split) writes acc, l and the split's largest score; unified_max_combine sums them, normalises and
flags. Where data lives: as decode_split; the partials (fp32) go to HBM and are read once. With one split
there is nothing to sum: unified_max_single (one program per (batch, kv head, row block)) normalises and
flags its own rows and writes O, as decode_split does for Flash-Decoding, and no combine runs.
"""

import dataclasses
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels import flash_decoding as fd
from kernels.checks import LN2, LOG2E, head_block
from kernels.flash_decoding import (_empty_rows, _kv_heads, _kv_tiles, _split_program, _split_range,
                                    _visible_scores)
from kernels.launch import LaunchConfig, element_bytes, launch

DEFAULT_PHI = 0.0
DEFAULT_THRESHOLD = 40.0
MAX_THRESHOLD = 80.0  # exp(-80) = 1.8e-35 is still a normal fp32 number (smallest 1.2e-38)


class UnifiedMaxResult(NamedTuple):
    """out [B, Hq, Nq, D]; lse [B, Hq, Nq] fp32 (natural log); recomputed [B, Hq, Nq] bool: the rows that
    left the window around phi and were recomputed by flash_decode."""

    out: Tensor
    lse: Tensor
    recomputed: Tensor


@triton.jit
def _unified_partials(q, k_head, v_head, start, end, last_key, stride_kn, stride_kd, stride_vn, stride_vd,
                      qk_scale_log2, phi_log2, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr):
    """Keys [start, end) of one program's rows: acc = sum exp(s - phi) v [BLOCK_M, BLOCK_D], l = sum exp(s - phi)
    and the largest score (log2 units) [BLOCK_M]. No rescaling: the shift is phi for every key."""
    top, l, acc = _empty_rows(BLOCK_M, BLOCK_D)
    for n0 in range(start, end, BLOCK_N):
        keys = n0 + tl.arange(0, BLOCK_N)
        k, v = _kv_tiles(k_head, v_head, keys, end, stride_kn, stride_kd, stride_vn, stride_vd, HEAD_DIM, BLOCK_D)
        s = _visible_scores(q, k, keys, end, last_key, qk_scale_log2, CAUSAL, IEEE)
        top = tl.maximum(top, tl.max(s, 1))
        p = tl.exp2(s - phi_log2)  # the unified max: the same shift for every split, never updated
        l += tl.sum(p, 1)
        if IEEE:
            acc += tl.dot(p, v.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(p, v.to(tl.float32), input_precision="tf32")
    return top, l, acc


@triton.jit
def _finish_rows(total, top, acc_largest, phi, threshold):
    """Rows (any shape) from their summed l, their largest score (natural units) and largest |acc|: (what O is
    divided by: l, or 1 for a row with l = 0; LSE = phi + ln l or -inf; flag: the row left
    [phi - threshold, phi + threshold] or its result is not finite, so it must be recomputed; empty: it saw no key)."""
    empty = top == float("-inf")
    safe = tl.where(total > 0.0, total, 1.0)
    finite = (tl.abs(total) < float("inf")) & (acc_largest / safe < float("inf"))  # NaN compares false
    flag = (~empty) & ((top > phi + threshold) | (top < phi - threshold) | ~finite | (total <= 0.0))
    lse = tl.where(empty, float("-inf"), phi + tl.log(safe))
    return safe, lse, flag, empty


@triton.jit
def unified_max_split(q_ptr, k_ptr, v_ptr, acc_ptr, sum_ptr, top_ptr,
                      stride_qb, stride_qh, stride_qn, stride_qd,
                      stride_kb, stride_kh, stride_kn, stride_kd,
                      stride_vb, stride_vh, stride_vn, stride_vd,
                      stride_ab, stride_ah, stride_an, stride_as, stride_ad,
                      stride_xb, stride_xh, stride_xn, stride_xs,
                      kv_heads, q_len, kv_len, keys_per_split, qk_scale_log2, phi_log2,
                      GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr):
    """acc = sum exp(s - phi) v, l = sum exp(s - phi) and the largest score of one split: no rescaling."""
    b, kv_head, split, q, head, query, row_ok = _split_program(q_ptr, kv_heads, q_len, stride_qb, stride_qh,
                                                               stride_qn, stride_qd, GROUP, HEAD_DIM, BLOCK_M,
                                                               BLOCK_D)
    k_head, v_head = _kv_heads(k_ptr, v_ptr, b, kv_head, stride_kb, stride_kh, stride_vb, stride_vh)
    start, end = _split_range(split, kv_len, keys_per_split)
    top, l, acc = _unified_partials(q, k_head, v_head, start, end, query + kv_len - q_len, stride_kn, stride_kd,
                                    stride_vn, stride_vd, qk_scale_log2, phi_log2, HEAD_DIM, BLOCK_M, BLOCK_N,
                                    BLOCK_D, CAUSAL, IEEE)
    b64, q64, s64 = b.to(tl.int64), query.to(tl.int64), split.to(tl.int64)
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < HEAD_DIM
    acc_ptrs = (acc_ptr + b64 * stride_ab + head[:, None] * stride_ah + q64[:, None] * stride_an + s64 * stride_as
                + dims[None, :] * stride_ad)
    tl.store(acc_ptrs, acc, mask=row_ok[:, None] & dim_ok[None, :])
    row_ptrs = b64 * stride_xb + head * stride_xh + q64 * stride_xn + s64 * stride_xs
    tl.store(sum_ptr + row_ptrs, l, mask=row_ok)
    tl.store(top_ptr + row_ptrs, top * LN2, mask=row_ok)


@triton.jit
def unified_max_single(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, flag_ptr,
                       stride_qb, stride_qh, stride_qn, stride_qd,
                       stride_kb, stride_kh, stride_kn, stride_kd,
                       stride_vb, stride_vh, stride_vn, stride_vd,
                       stride_ob, stride_oh, stride_on, stride_od,
                       stride_lb, stride_lh, stride_ln,
                       stride_fb, stride_fh, stride_fn,
                       kv_heads, q_len, kv_len, qk_scale_log2, phi_log2, phi, threshold,
                       GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr):
    """One split over all the keys: nothing to sum, so the program normalises its own rows and flags those that
    left the window, as unified_max_combine does for several splits, and writes O, LSE and the flags."""
    b, kv_head, _, q, head, query, row_ok = _split_program(q_ptr, kv_heads, q_len, stride_qb, stride_qh,
                                                           stride_qn, stride_qd, GROUP, HEAD_DIM, BLOCK_M, BLOCK_D)
    k_head, v_head = _kv_heads(k_ptr, v_ptr, b, kv_head, stride_kb, stride_kh, stride_vb, stride_vh)
    top, l, acc = _unified_partials(q, k_head, v_head, 0, kv_len, query + kv_len - q_len, stride_kn, stride_kd,
                                    stride_vn, stride_vd, qk_scale_log2, phi_log2, HEAD_DIM, BLOCK_M, BLOCK_N,
                                    BLOCK_D, CAUSAL, IEEE)
    divisor, lse, flag, empty = _finish_rows(l, top * LN2, tl.max(tl.abs(acc), 1),
                                             phi, threshold)
    o = tl.where(empty[:, None], 0.0, acc / divisor[:, None])
    b64, q64 = b.to(tl.int64), query.to(tl.int64)
    dims = tl.arange(0, BLOCK_D)
    tl.store(o_ptr + b64 * stride_ob + head[:, None] * stride_oh + q64[:, None] * stride_on + dims[None, :] * stride_od,
             o.to(o_ptr.dtype.element_ty), mask=row_ok[:, None] & (dims < HEAD_DIM)[None, :])
    tl.store(lse_ptr + b64 * stride_lb + head * stride_lh + q64 * stride_ln, lse, mask=row_ok)
    tl.store(flag_ptr + b64 * stride_fb + head * stride_fh + q64 * stride_fn, flag.to(tl.int8), mask=row_ok)


@triton.jit
def unified_max_combine(acc_ptr, sum_ptr, top_ptr, o_ptr, lse_ptr, flag_ptr,
                        stride_ab, stride_ah, stride_an, stride_as, stride_ad,
                        stride_xb, stride_xh, stride_xn, stride_xs,
                        stride_ob, stride_oh, stride_on, stride_od,
                        stride_lb, stride_lh, stride_ln,
                        q_heads, q_len, num_splits, phi, threshold,
                        HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """One row: O = sum_s acc_s / sum_s l_s, LSE = phi + ln sum_s l_s; flag (1) a row whose largest score
    leaves [phi - threshold, phi + threshold] or whose result is not finite. Empty rows: O 0, LSE -inf."""
    row = tl.program_id(0)
    b = (row // (q_heads * q_len)).to(tl.int64)
    head = (row // q_len % q_heads).to(tl.int64)
    query = (row % q_len).to(tl.int64)
    splits = tl.arange(0, BLOCK_S)
    split_ok = splits < num_splits
    dims = tl.arange(0, BLOCK_D)
    parts = b * stride_xb + head * stride_xh + query * stride_xn + splits * stride_xs
    total = tl.sum(tl.load(sum_ptr + parts, mask=split_ok, other=0.0), 0)
    top = tl.max(tl.load(top_ptr + parts, mask=split_ok, other=float("-inf")), 0)
    accs = tl.load(acc_ptr + b * stride_ab + head * stride_ah + query * stride_an + splits[:, None] * stride_as
                   + dims[None, :] * stride_ad, mask=split_ok[:, None] & (dims[None, :] < HEAD_DIM), other=0.0)
    summed = tl.sum(accs, 0)
    divisor, lse, flag, empty = _finish_rows(total, top, tl.max(tl.abs(summed), 0),
                                             phi, threshold)
    o = tl.where(empty, 0.0, summed / divisor)
    tl.store(o_ptr + b * stride_ob + head * stride_oh + query * stride_on + dims * stride_od,
             o.to(o_ptr.dtype.element_ty), mask=dims < HEAD_DIM)
    tl.store(lse_ptr + b * stride_lb + head * stride_lh + query * stride_ln, lse)
    tl.store(flag_ptr + row, flag.to(tl.int8))


def check_window(phi: float, threshold: float) -> None:
    if not abs(phi) < float("inf"):
        raise ValueError(f"phi = {phi}; expected a finite number")
    if not 0.0 < threshold <= MAX_THRESHOLD:
        raise ValueError(f"threshold = {threshold}; expected 0 < threshold <= {MAX_THRESHOLD} (fp32's exponent range)")


def launch_configs(q: Tensor, k: Tensor, v: Tensor, *, num_splits: int | None = None,
                   sm_count: int | None = None) -> list[LaunchConfig]:
    """The fast path's launches, in order: unified_max_split, unified_max_combine; with one split,
    unified_max_single alone. Rows that leave the window add flash_decode's launches (kernels.flash_decoding)
    for their batch entries, which depend on the data and are recorded in `launched` when they run."""
    split, *_ = fd.launch_configs(q, k, v, num_splits=num_splits, sm_count=sm_count)
    e = element_bytes(q.dtype)
    splits = split.grid[2]
    name = "unified_max_split" if splits > 1 else "unified_max_single"
    config = fd.split_config(name, split.grid, split.block_m, split.block_n, q.shape[3], e, e, split.num_warps)
    if splits == 1:
        return [config]
    merge = fd.combine_config(q.shape[0], q.shape[1], q.shape[2], q.shape[3], splits)
    return [config, dataclasses.replace(merge, kernel="unified_max_combine")]


def recompute_rows(q: Tensor, k: Tensor, v: Tensor, flagged: Tensor, out: Tensor, lse: Tensor, *, scale: float,
                   causal: bool, launched: list | None) -> None:
    """Overwrite the flagged rows [B, Hq, Nq] of out and lse with flash_decode's exact result; it runs on the
    batch entries that hold a flagged row."""
    entries = flagged.flatten(1).any(dim=1).nonzero().flatten()
    o, l = fd.flash_decode(q[entries], k[entries], v[entries], scale=scale, causal=causal, return_lse=True,
                           launched=launched)
    rows = flagged[entries]
    out[entries] = torch.where(rows.unsqueeze(-1), o, out[entries])
    lse[entries] = torch.where(rows, l, lse[entries])


def flash_decode_pp(q: Tensor, k: Tensor, v: Tensor, *, phi: float = DEFAULT_PHI,
                    threshold: float = DEFAULT_THRESHOLD, num_splits: int | None = None, scale: float | None = None,
                    causal: bool = False, out: Tensor | None = None, lse_out: Tensor | None = None,
                    launched: list | None = None) -> UnifiedMaxResult:
    """Decode attention with FlashDecoding++'s unified maximum phi (module docstring).

    q [B, Hq, Nq, D], k and v [B, Hkv, Nk, D] as flash_decode. phi and threshold in units of the scaled
    scores (scale * q . k): rows with a score above phi + threshold, or whose largest score is below
    phi - threshold, are recomputed exactly. out [B, Hq, Nq, D] and lse_out [B, Hq, Nq] fp32 may be
    preallocated. Returns UnifiedMaxResult(out, lse, recomputed [B, Hq, Nq] bool)."""
    check_window(phi, threshold)
    configs = launch_configs(q, k, v, num_splits=num_splits)
    out, lse = fd.decode_outputs(q, out, lse_out)
    flags = torch.zeros(q.shape[:3], dtype=torch.int8, device=q.device)
    if q.numel() == 0:
        return UnifiedMaxResult(out, lse, flags.bool())
    split = configs[0]
    num_splits = split.grid[2]
    scale = q.shape[3] ** -0.5 if scale is None else scale
    batch, q_heads, q_len, head_dim = q.shape
    meta = dict(GROUP=q_heads // k.shape[1], HEAD_DIM=head_dim, BLOCK_M=split.block_m, BLOCK_N=split.block_n,
                BLOCK_D=head_block(head_dim), CAUSAL=causal, IEEE=q.dtype == torch.float32)
    if num_splits == 1:
        launch(unified_max_single, split, q, k, v, out, lse, flags, *q.stride(), *k.stride(), *v.stride(),
               *out.stride(), *lse.stride(), *flags.stride(), k.shape[1], q_len, k.shape[2], scale * LOG2E, phi * LOG2E,
               float(phi), float(threshold), launched=launched, **meta)
        return _recomputed(q, k, v, flags, out, lse, scale, causal, launched)
    merge = configs[1]
    acc = torch.empty((batch, q_heads, q_len, num_splits, head_dim), dtype=torch.float32, device=q.device)
    sums = torch.empty((batch, q_heads, q_len, num_splits), dtype=torch.float32, device=q.device)
    tops = torch.empty_like(sums)
    launch(unified_max_split, split, q, k, v, acc, sums, tops, *q.stride(), *k.stride(), *v.stride(), *acc.stride(),
           *sums.stride(), k.shape[1], q_len, k.shape[2], fd.keys_per_split(k.shape[2], num_splits, split.block_n),
           scale * LOG2E, phi * LOG2E, launched=launched, **meta)
    launch(unified_max_combine, merge, acc, sums, tops, out, lse, flags, *acc.stride(), *sums.stride(), *out.stride(),
           *lse.stride(), q_heads, q_len, num_splits, float(phi), float(threshold), launched=launched,
           HEAD_DIM=head_dim, BLOCK_S=merge.block_n, BLOCK_D=head_block(head_dim))
    return _recomputed(q, k, v, flags, out, lse, scale, causal, launched)


def _recomputed(q: Tensor, k: Tensor, v: Tensor, flags: Tensor, out: Tensor, lse: Tensor, scale: float, causal: bool,
                launched: list | None) -> UnifiedMaxResult:
    """The result once the flagged rows are recomputed (recompute_rows)."""
    recomputed = flags.bool()
    if recomputed.any():
        recompute_rows(q, k, v, recomputed, out, lse, scale=scale, causal=causal, launched=launched)
    return UnifiedMaxResult(out, lse, recomputed)
