"""Decode attention over a paged KV cache (PagedAttention, Kwon et al. 2023, section 4.1): the keys
and values of a sequence sit in fixed-size pages scattered through one cache, and a block table lists a
sequence's pages in order. The kernel reads the table itself: key j of sequence b lives in page
block_table[b, j // page_size] at slot j % page_size.

Split-KV as Flash-Decoding (kernels/flash_decoding.py): one program per (sequence, kv head, row block,
split) reads BLOCK_N keys per step, whatever the page size (a step may span several pages or part of
one), for all q heads of its GQA group; with several splits decode_combine merges the partials.
A sequence's splits cover ceil(seq_len / BLOCK_N) key blocks; a sequence of length 0 gets O 0, LSE -inf.

Where data lives: the program's query rows and accumulator stay in registers; each step gathers the
step's block ids from the table (int64 offsets into the cache), then BLOCK_N x d tiles of K and V.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels import flash_decoding as fd
from kernels.checks import DTYPES, LOG2E, MAX_HEAD_DIM, check_output, head_block
from kernels.flash_decoding import (_empty_rows, _online_softmax_step, _split_program, _split_range, _store_rows,
                                    _visible_scores)
from kernels.launch import LaunchConfig, element_bytes, launch

TABLE_DTYPES = (torch.int32, torch.int64)


@triton.jit
def paged_split(q_ptr, k_ptr, v_ptr, table_ptr, seq_lens_ptr, o_ptr, lse_ptr,
                stride_qb, stride_qh, stride_qd,
                stride_kblock, stride_kh, stride_kslot, stride_kd,
                stride_vblock, stride_vh, stride_vslot, stride_vd,
                stride_tb, stride_tp,
                stride_ob, stride_oh, stride_os, stride_od,
                stride_lb, stride_lh, stride_ls,
                kv_heads, num_splits, qk_scale_log2,
                GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, PAGE_SIZE: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr):
    """Partial attention of one (sequence, kv head, row block) over one split of the sequence's keys."""
    b, kv_head, split, q, head, query, row_ok = _split_program(q_ptr, kv_heads, 1, stride_qb, stride_qh, 0, stride_qd,
                                                               GROUP, HEAD_DIM, BLOCK_M, BLOCK_D)
    seq_len = tl.load(seq_lens_ptr + b.to(tl.int64))
    per_split = tl.cdiv(tl.cdiv(seq_len, BLOCK_N), num_splits) * BLOCK_N
    table_row = table_ptr + b.to(tl.int64) * stride_tb
    k_head = k_ptr + kv_head.to(tl.int64) * stride_kh
    v_head = v_ptr + kv_head.to(tl.int64) * stride_vh
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < HEAD_DIM
    m, l, acc = _empty_rows(BLOCK_M, BLOCK_D)
    start, end = _split_range(split, seq_len, per_split)
    for n0 in range(start, end, BLOCK_N):
        keys = n0 + tl.arange(0, BLOCK_N)
        key_ok = keys < end
        block = tl.load(table_row + (keys // PAGE_SIZE).to(tl.int64) * stride_tp, mask=key_ok, other=0)
        slot = (keys % PAGE_SIZE).to(tl.int64)
        row = block.to(tl.int64)[:, None]
        tile_ok = key_ok[:, None] & dim_ok[None, :]
        k = tl.load(k_head + row * stride_kblock + slot[:, None] * stride_kslot + dims[None, :] * stride_kd,
                    mask=tile_ok, other=0.0)
        v = tl.load(v_head + row * stride_vblock + slot[:, None] * stride_vslot + dims[None, :] * stride_vd,
                    mask=tile_ok, other=0.0)
        s = _visible_scores(q, k, keys, end, end, qk_scale_log2, False, IEEE)  # no causal limit: last_key unread
        m, l, acc = _online_softmax_step(s, v, m, l, acc, IEEE)
    _store_rows(o_ptr, lse_ptr, acc, m, l, b, head, query, split, row_ok,
                stride_ob, stride_oh, 0, stride_os, stride_od, stride_lb, stride_lh, 0, stride_ls,
                HEAD_DIM, BLOCK_D)


def check_paged_inputs(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_table: Tensor, seq_lens: Tensor,
                       num_splits: int | None) -> None:
    """q [B, Hq, D]; k/v_cache [num_blocks, Hkv, page_size, D]; block_table [B, max_pages] and seq_lens [B] int."""
    if q.dim() != 3:
        raise ValueError(f"q has shape {tuple(q.shape)}; expected 3 dims [B, Hq, D]")
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape or k_cache.dtype != v_cache.dtype:
        raise ValueError(f"k_cache {tuple(k_cache.shape)} {k_cache.dtype} and v_cache {tuple(v_cache.shape)} "
                         f"{v_cache.dtype}; expected one shape [num_blocks, Hkv, page_size, D] and one dtype")
    batch = q.shape[0]
    if block_table.dim() != 2 or block_table.shape[0] != batch or block_table.dtype not in TABLE_DTYPES:
        raise ValueError(f"block_table is {tuple(block_table.shape)} {block_table.dtype}; expected [{batch}, "
                         f"max_pages] int32")
    if tuple(seq_lens.shape) != (batch,) or seq_lens.dtype not in TABLE_DTYPES:
        raise ValueError(f"seq_lens is {tuple(seq_lens.shape)} {seq_lens.dtype}; expected [{batch}] int32")
    for name, t in (("block_table", block_table), ("seq_lens", seq_lens), ("k_cache", k_cache)):
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device}; expected q's device {q.device}")
    if q.dtype not in DTYPES or k_cache.dtype != q.dtype:
        raise ValueError(f"q.dtype = {q.dtype}, k_cache.dtype = {k_cache.dtype}; expected one dtype among float16, "
                         f"bfloat16, float32")
    if k_cache.shape[3] != q.shape[2] or not 1 <= q.shape[2] <= MAX_HEAD_DIM:
        raise ValueError(f"head dims q {q.shape[2]}, cache {k_cache.shape[3]}; expected one head dim in "
                         f"1..{MAX_HEAD_DIM}")
    if k_cache.shape[1] < 1 or k_cache.shape[2] < 1 or q.shape[1] % k_cache.shape[1]:
        raise ValueError(f"q heads = {q.shape[1]}, kv heads = {k_cache.shape[1]}, page_size = {k_cache.shape[2]}; "
                         f"expected q heads a multiple of kv heads and page_size >= 1")
    if num_splits is not None and (not isinstance(num_splits, int) or num_splits < 1):
        raise ValueError(f"num_splits = {num_splits!r}; expected None or an int >= 1")


def launch_configs(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_table: Tensor, seq_lens: Tensor, *,
                   num_splits: int | None = 1, sm_count: int | None = None) -> list[LaunchConfig]:
    """The launches of paged_decode, in order: paged_split, then decode_combine when num_splits > 1.
    num_splits None: choose_num_splits for the table's capacity (max_pages x page_size keys)."""
    check_paged_inputs(q, k_cache, v_cache, block_table, seq_lens, num_splits)
    batch, q_heads, head_dim = q.shape
    kv_heads, page_size = k_cache.shape[1], k_cache.shape[2]
    e = element_bytes(q.dtype)
    group = q_heads // kv_heads
    block_m, block_n = fd.row_block(group), fd.key_block(head_dim, e)
    row_blocks = triton.cdiv(group, block_m)
    if num_splits is None:
        sm_count = fd.device_sm_count(q.device) if sm_count is None else sm_count
        num_splits = fd.choose_num_splits(batch, kv_heads, block_table.shape[1] * page_size, sm_count,
                                          block_n=block_n, row_blocks=row_blocks)
    configs = [fd.split_config("paged_split", (batch * kv_heads, row_blocks, num_splits), block_m, block_n,
                               head_dim, e, e, fd.split_warps(block_m, e))]
    if num_splits > 1:
        configs.append(fd.combine_config(batch, q_heads, 1, head_dim, num_splits))
    return configs


def paged_decode(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_table: Tensor, seq_lens: Tensor, *,
                 scale: float | None = None, num_splits: int | None = 1, out: Tensor | None = None,
                 lse_out: Tensor | None = None, launched: list | None = None) -> tuple[Tensor, Tensor]:
    """One decode step over a paged KV cache.

    q [B, Hq, D]; k_cache, v_cache [num_blocks, Hkv, page_size, D] in q's dtype (fp16, bf16, fp32), Hq a
    multiple of Hkv; block_table [B, max_pages] int32 (entries past a sequence's pages are never read;
    those it reads must lie in [0, num_blocks)); seq_lens [B] int32, each <= max_pages x page_size.
    out [B, Hq, D] and lse_out [B, Hq] fp32 may be preallocated; `launched` receives each LaunchConfig.
    Returns (O [B, Hq, D], LSE [B, Hq], natural log); a sequence of length 0 gets O 0 and LSE -inf."""
    configs = launch_configs(q, k_cache, v_cache, block_table, seq_lens, num_splits=num_splits)
    check_output("out", out, q.shape, q.dtype, q.device)
    check_output("lse_out", lse_out, q.shape[:2], torch.float32, q.device)
    out = torch.empty_like(q) if out is None else out
    lse = torch.empty(q.shape[:2], dtype=torch.float32, device=q.device) if lse_out is None else lse_out
    if q.numel() == 0:
        return out, lse
    out4, lse3 = out.unsqueeze(2), lse.unsqueeze(2)  # views as [B, Hq, 1, D] and [B, Hq, 1]: one query each
    split = configs[0]
    num_splits = split.grid[2]
    scale = q.shape[2] ** -0.5 if scale is None else scale
    o_target, lse_target, o_strides, lse_strides = fd.split_targets(out4, lse3, num_splits)
    so, sl = o_strides, lse_strides
    launch(paged_split, split, q, k_cache, v_cache, block_table, seq_lens, o_target, lse_target, *q.stride(),
           *k_cache.stride(), *v_cache.stride(), *block_table.stride(), so[0], so[1], so[3], so[4], sl[0], sl[1], sl[3],
           k_cache.shape[1], num_splits, scale * LOG2E, launched=launched, GROUP=q.shape[1] // k_cache.shape[1],
           HEAD_DIM=q.shape[2], PAGE_SIZE=k_cache.shape[2], BLOCK_M=split.block_m, BLOCK_N=split.block_n,
           BLOCK_D=head_block(q.shape[2]), IEEE=q.dtype == torch.float32)
    if num_splits > 1:
        fd.combine(configs[1], o_target, lse_target, out4, lse3, launched)
    return out, lse


# ---- host-side layout (benchmarks, validation) ------------------------------------------------------

def paged_layout(k: torch.Tensor, v: torch.Tensor, page: int) -> tuple:
    """K/V [B, Hkv, N, D] laid out as a paged cache with pages scattered by a random block table:
    (k_cache, v_cache [B * N / page, Hkv, page, D], block_table [B, N / page] int32, seq_lens [B] int32)."""
    batch, heads, n, d = k.shape
    pages = -(-n // page)
    pad = pages * page - n
    caches = []
    for x in (k, v):
        x = torch.nn.functional.pad(x, (0, 0, 0, pad))
        caches.append(x.view(batch, heads, pages, page, d).permute(0, 2, 1, 3, 4).reshape(batch * pages, heads, page, d))
    perm = torch.randperm(batch * pages, generator=torch.Generator().manual_seed(1)).to(k.device)
    scattered = [torch.empty_like(c) for c in caches]
    for dst, src in zip(scattered, caches):
        dst[perm] = src
    table = perm.to(torch.int32).view(batch, pages)
    return scattered[0], scattered[1], table, torch.full((batch,), n, dtype=torch.int32, device=k.device)
