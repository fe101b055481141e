"""Flash-Decoding (Dao, Haziza, Massa, Sizov 2023): attention for a few queries against a long KV cache,
parallel over the keys as well as over batch and heads. Two kernels:

    decode_split    one program per (batch, kv head, row block, split): the partial O and LSE of its
                    rows over the split's keys [split * keys_per_split, (split + 1) * keys_per_split)
    decode_combine  one program per (batch, q head, query): merges the splits' partials by their LSE

GQA: the rows of one program are the Nq queries of all Hq / Hkv q heads that share its kv head
(row r = g * Nq + i: q head kv_head * group + g, query i), so each K/V tile is read once for the group.
Causal aligned to the end: query i sees key j iff j <= i + Nk - Nq.

Where data lives: a split program keeps its query rows (BLOCK_M x d) and its fp32 accumulator in
registers for its whole key range and streams BLOCK_N x d tiles of K and V through shared memory
(num_stages - 1 tiles in flight). The partials, [B, Hq, Nq, S, d] fp32 and [B, Hq, Nq, S] LSE, go to HBM and are read
once by the combine. With one split the split kernel writes O and LSE directly and nothing is combined.

The jitted pieces here (the program's identity and query rows, key tiles, masked scores, online-softmax
step, row store; Triton inlines them) and the combine kernel are shared with the FlashDecoding++, paged and
quantised decode kernels (kernels/flash_decoding_pp.py, kernels/paged.py, kernels/kv_quant.py).
"""

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.checks import DTYPES, LN2, LOG2E, MAX_HEAD_DIM, MIN_DOT, check_output, head_block
from kernels.launch import INTERPRETING, LaunchConfig, ceil_div, element_bytes, launch

H100_SM_COUNT = 132  # shared/DESIGN.md, measured H100 SXM; the SM count assumed where no GPU is present
# FlashAttention-2's split heuristic counts two CTAs of 128 threads per SM (flash-attention
# csrc/flash_attn/flash_api.cpp, set_params_splitkv: "multiProcessorCount * 2"). At least two of our split
# programs fit an H100 SM too (shared memory and registers below).
CTAS_PER_SM = 2
MAX_SPLITS = 128  # FlashAttention-2's cap on num_splits (same place)

# One pipeline stage holds a K tile and a V tile: BLOCK_N is chosen so that they take 32 KiB
# (BLOCK_N = 64 at d = 128 in 16-bit). Three stages: Triton keeps num_stages - 1 tiles in flight in
# shared memory. Compiled for sm_90 by triton 3.9 (bf16, d = 128, BLOCK_M 16, BLOCK_N 64): 38912, 71680,
# 104448 B of shared memory at 2, 3, 4 stages; 85 registers a thread at 4 warps, 73 at 8 (triton 3.6: the
# same shared memory, 80 and 64 registers). With 4 warps, fp32 tiles (d = 128) spill (255 registers) and
# need 8 warps (50 registers); 64-row blocks take 168 registers at 4 warps, 127 at 8.
KV_STAGE_BYTES = 32 * 1024
SPLIT_STAGES = 3
# Rows per program: the smallest tl.dot M is 16 (MIN_DOT); a group with more rows than ROW_BLOCK_MAX is cut
# into row blocks. The interpreter uses 16-key tiles and 16-row blocks so that short test shapes span several
# tiles, several row blocks and several splits.
ROW_BLOCK_MAX = 16 if INTERPRETING else 64
INTERPRETER_BLOCK_N = 16


# ---- jitted pieces shared by every decode kernel ------------------------------------------------------

@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    """a @ b with fp32 accumulation: exact fp32 for fp32 inputs, tensor cores for fp16/bf16."""
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _query_rows(q_ptr, b, kv_head, row_block, q_len,
                stride_qb, stride_qh, stride_qn, stride_qd,
                GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """The BLOCK_M query rows of one program, [BLOCK_M, BLOCK_D] (padding rows and dims are 0), and per row
    its q head [BLOCK_M] (int64), query index [BLOCK_M] and validity [BLOCK_M]."""
    rows = row_block * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < GROUP * q_len
    head = kv_head.to(tl.int64) * GROUP + rows // q_len
    query = rows % q_len
    dims = tl.arange(0, BLOCK_D)
    ptrs = (q_ptr + b.to(tl.int64) * stride_qb + head[:, None] * stride_qh
            + query[:, None].to(tl.int64) * stride_qn + dims[None, :] * stride_qd)
    q = tl.load(ptrs, mask=row_ok[:, None] & (dims[None, :] < HEAD_DIM), other=0.0)
    return q, head, query, row_ok


@triton.jit
def _online_softmax_step(s, v, m, l, acc, IEEE: tl.constexpr):
    """Fold one tile of log2-domain scores s [BLOCK_M, BLOCK_N] (-inf where masked) and values v
    [BLOCK_N, BLOCK_D] into the running max m, sum l [BLOCK_M] and accumulator acc [BLOCK_M, BLOCK_D]
    (FlashAttention-2's online softmax, Dao 2023, Algorithm 1). Rows that have seen no key stay m -inf, l 0."""
    m_new = tl.maximum(m, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # exp2(-inf - -inf) would be NaN
    alpha = tl.exp2(m - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l = l * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
    return m_new, l, acc


@triton.jit
def _store_rows(o_ptr, lse_ptr, acc, m, l, b, head, query, split, row_ok,
                stride_ob, stride_oh, stride_on, stride_os, stride_od,
                stride_lb, stride_lh, stride_ln, stride_ls,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """Normalise and store a program's rows: O = acc / l and LSE = ln(sum exp) (natural log); a row that saw
    no key stores O 0 and LSE -inf. The split strides are 0 where O and LSE are the final outputs."""
    empty = l == 0.0
    o = acc / tl.where(empty, 1.0, l)[:, None]
    lse = tl.where(empty, float("-inf"), (m + tl.log2(tl.where(empty, 1.0, l))) * LN2)
    b64 = b.to(tl.int64)
    query64 = query.to(tl.int64)
    split64 = split.to(tl.int64)
    dims = tl.arange(0, BLOCK_D)
    o_ptrs = (o_ptr + b64 * stride_ob + head[:, None] * stride_oh + query64[:, None] * stride_on
              + split64 * stride_os + dims[None, :] * stride_od)
    tl.store(o_ptrs, o.to(o_ptr.dtype.element_ty), mask=row_ok[:, None] & (dims[None, :] < HEAD_DIM))
    lse_ptrs = lse_ptr + b64 * stride_lb + head * stride_lh + query64 * stride_ln + split64 * stride_ls
    tl.store(lse_ptrs, lse, mask=row_ok)


@triton.jit
def _split_range(split, kv_len, keys_per_split):
    """[start, end) of one split's keys; empty (start >= end) when there are more splits than key blocks."""
    start = split * keys_per_split
    end = tl.minimum(start + keys_per_split, kv_len)
    return start, end


@triton.jit
def _split_program(q_ptr, kv_heads, q_len, stride_qb, stride_qh, stride_qn, stride_qd,
                   GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Who a split program is, from its ids (batch x kv head, row block, split): its batch b, kv head and split,
    and its query rows as _query_rows gives them (q, head, query, row_ok)."""
    b = tl.program_id(0) // kv_heads
    kv_head = tl.program_id(0) % kv_heads
    q, head, query, row_ok = _query_rows(q_ptr, b, kv_head, tl.program_id(1), q_len,
                                         stride_qb, stride_qh, stride_qn, stride_qd,
                                         GROUP, HEAD_DIM, BLOCK_M, BLOCK_D)
    return b, kv_head, tl.program_id(2), q, head, query, row_ok


@triton.jit
def _empty_rows(BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Online-softmax state of rows that have seen no key: max -inf [BLOCK_M], sum 0 [BLOCK_M], fp32
    accumulator 0 [BLOCK_M, BLOCK_D]."""
    m = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    return m, tl.zeros((BLOCK_M,), tl.float32), tl.zeros((BLOCK_M, BLOCK_D), tl.float32)


@triton.jit
def _kv_heads(k_ptr, v_ptr, b, kv_head, stride_kb, stride_kh, stride_vb, stride_vh):
    """Where K and V of (batch b, kv head) start, int64 offsets."""
    b64, h64 = b.to(tl.int64), kv_head.to(tl.int64)
    return k_ptr + b64 * stride_kb + h64 * stride_kh, v_ptr + b64 * stride_vb + h64 * stride_vh


@triton.jit
def _kv_tiles(k_head, v_head, keys, end, stride_kn, stride_kd, stride_vn, stride_vd,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """The K and V tiles [BLOCK_N, BLOCK_D] of rows `keys` of one head; 0 for keys at or past `end` and for
    padding dims."""
    dims = tl.arange(0, BLOCK_D)
    keys64 = keys.to(tl.int64)
    tile_ok = (keys < end)[:, None] & (dims < HEAD_DIM)[None, :]
    k = tl.load(k_head + keys64[:, None] * stride_kn + dims[None, :] * stride_kd, mask=tile_ok, other=0.0)
    v = tl.load(v_head + keys64[:, None] * stride_vn + dims[None, :] * stride_vd, mask=tile_ok, other=0.0)
    return k, v


@triton.jit
def _visible_scores(q, k, keys, end, last_key, qk_scale_log2, CAUSAL: tl.constexpr, IEEE: tl.constexpr):
    """log2-domain scores q k^T [BLOCK_M, BLOCK_N] of one key tile; -inf for keys at or past `end` and, when
    CAUSAL, for keys past each row's last_key [BLOCK_M]."""
    s = _dot(q, tl.trans(k), IEEE) * qk_scale_log2
    seen = keys[None, :] < end
    if CAUSAL:
        seen = seen & (keys[None, :] <= last_key[:, None])
    return tl.where(seen, s, float("-inf"))


# ---- kernels ----------------------------------------------------------------------------------------

@triton.jit
def decode_split(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr,
                 stride_qb, stride_qh, stride_qn, stride_qd,
                 stride_kb, stride_kh, stride_kn, stride_kd,
                 stride_vb, stride_vh, stride_vn, stride_vd,
                 stride_ob, stride_oh, stride_on, stride_os, stride_od,
                 stride_lb, stride_lh, stride_ln, stride_ls,
                 kv_heads, q_len, kv_len, keys_per_split, qk_scale_log2,
                 GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr):
    """Partial attention of one (batch, kv head, row block) over one split of the keys."""
    b, kv_head, split, q, head, query, row_ok = _split_program(q_ptr, kv_heads, q_len, stride_qb, stride_qh,
                                                               stride_qn, stride_qd, GROUP, HEAD_DIM, BLOCK_M,
                                                               BLOCK_D)
    last_key = query + kv_len - q_len  # causal limit of each row
    k_head, v_head = _kv_heads(k_ptr, v_ptr, b, kv_head, stride_kb, stride_kh, stride_vb, stride_vh)
    m, l, acc = _empty_rows(BLOCK_M, BLOCK_D)
    start, end = _split_range(split, kv_len, keys_per_split)
    for n0 in range(start, end, BLOCK_N):
        keys = n0 + tl.arange(0, BLOCK_N)
        k, v = _kv_tiles(k_head, v_head, keys, end, stride_kn, stride_kd, stride_vn, stride_vd, HEAD_DIM, BLOCK_D)
        s = _visible_scores(q, k, keys, end, last_key, qk_scale_log2, CAUSAL, IEEE)
        m, l, acc = _online_softmax_step(s, v, m, l, acc, IEEE)
    _store_rows(o_ptr, lse_ptr, acc, m, l, b, head, query, split, row_ok,
                stride_ob, stride_oh, stride_on, stride_os, stride_od,
                stride_lb, stride_lh, stride_ln, stride_ls, HEAD_DIM, BLOCK_D)


@triton.jit
def decode_combine(o_part_ptr, lse_part_ptr, o_ptr, lse_ptr,
                   stride_pb, stride_ph, stride_pn, stride_ps, stride_pd,
                   stride_xb, stride_xh, stride_xn, stride_xs,
                   stride_ob, stride_oh, stride_on, stride_od,
                   stride_lb, stride_lh, stride_ln,
                   q_heads, q_len, num_splits,
                   HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """One (batch, q head, query) row: O = sum_s exp(LSE_s - LSE) O_s, LSE = ln sum_s exp(LSE_s)
    (Flash-Decoding's reduction). Splits with LSE -inf weigh nothing; a row with no key gets O 0, LSE -inf."""
    row = tl.program_id(0)
    b = (row // (q_heads * q_len)).to(tl.int64)
    head = (row // q_len % q_heads).to(tl.int64)
    query = (row % q_len).to(tl.int64)
    splits = tl.arange(0, BLOCK_S)
    split_ok = splits < num_splits
    dims = tl.arange(0, BLOCK_D)
    lse_parts = tl.load(lse_part_ptr + b * stride_xb + head * stride_xh + query * stride_xn + splits * stride_xs,
                        mask=split_ok, other=float("-inf"))
    top = tl.max(lse_parts, 0)
    top_safe = tl.where(top == float("-inf"), 0.0, top)
    weights = tl.exp(lse_parts - top_safe)
    total = tl.sum(weights, 0)
    parts = tl.load(o_part_ptr + b * stride_pb + head * stride_ph + query * stride_pn
                    + splits[:, None] * stride_ps + dims[None, :] * stride_pd,
                    mask=split_ok[:, None] & (dims[None, :] < HEAD_DIM), other=0.0)
    o = tl.sum(weights[:, None] * parts, 0) / tl.where(total == 0.0, 1.0, total)
    tl.store(o_ptr + b * stride_ob + head * stride_oh + query * stride_on + dims * stride_od,
             o.to(o_ptr.dtype.element_ty), mask=dims < HEAD_DIM)
    lse = tl.where(total == 0.0, float("-inf"), top_safe + tl.log(tl.where(total == 0.0, 1.0, total)))
    tl.store(lse_ptr + b * stride_lb + head * stride_lh + query * stride_ln, lse)


# ---- tiles, splits and launch configs ---------------------------------------------------------------

def key_block(head_dim: int, tile_element_bytes: float) -> int:
    """BLOCK_N: keys per tile such that one K tile and one V tile take KV_STAGE_BYTES, in [16, 128]."""
    if INTERPRETING:
        return INTERPRETER_BLOCK_N
    keys = KV_STAGE_BYTES / (2 * head_block(head_dim) * tile_element_bytes)
    return int(min(128, max(MIN_DOT, 2 ** math.floor(math.log2(keys)))))


def row_block(rows: int) -> int:
    """BLOCK_M for `rows` = group x Nq query rows per kv head: a power of two in [16, ROW_BLOCK_MAX]."""
    return min(ROW_BLOCK_MAX, max(MIN_DOT, triton.next_power_of_2(rows)))


def choose_num_splits(batch: int, kv_heads: int, kv_len: int, sm_count: int, *, block_n: int = 64,
                      row_blocks: int = 1, ctas_per_sm: int = CTAS_PER_SM, max_splits: int = MAX_SPLITS) -> int:
    """How many splits of the keys fill the GPU: FlashAttention-2's num_splits_heuristic (flash-attention
    csrc/flash_attn/flash_api.cpp). With P = batch x kv_heads x row_blocks programs and sm_count x ctas_per_sm
    slots: one split if P already fills 80% of the slots; else, over the split counts s that change the
    key blocks per split, the wave efficiency e(s) = (P s / slots) / ceil(P s / slots), and the smallest s
    reaching 85% of the best e (more splits cost more partial-result traffic)."""
    for name, value in (("batch", batch), ("kv_heads", kv_heads), ("sm_count", sm_count), ("block_n", block_n),
                        ("row_blocks", row_blocks), ("ctas_per_sm", ctas_per_sm), ("max_splits", max_splits)):
        if value < 1:
            raise ValueError(f"{name} = {value}; expected >= 1")
    if kv_len < 0:
        raise ValueError(f"kv_len = {kv_len}; expected >= 0")
    programs, slots = batch * kv_heads * row_blocks, sm_count * ctas_per_sm
    key_blocks = ceil_div(kv_len, block_n)
    if programs >= 0.8 * slots or key_blocks <= 1:
        return 1
    candidates = [s for s in range(1, min(max_splits, slots, key_blocks) + 1)
                  if s == 1 or ceil_div(key_blocks, s) != ceil_div(key_blocks, s - 1)]
    efficiency = {s: (programs * s / slots) / math.ceil(programs * s / slots) for s in candidates}
    best = max(efficiency.values())
    return next(s for s in candidates if efficiency[s] >= 0.85 * best)


def keys_per_split(kv_len: int, num_splits: int, block_n: int) -> int:
    """Keys of one split: whole key blocks, the blocks shared out as evenly as ceil allows."""
    return max(1, ceil_div(ceil_div(kv_len, block_n), num_splits)) * block_n


def device_sm_count(device: torch.device) -> int:
    """SMs of the CUDA device the tensors live on; an H100's count elsewhere (meta, CPU interpreter)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return H100_SM_COUNT


def combine_config(batch: int, q_heads: int, q_len: int, head_dim: int, num_splits: int) -> LaunchConfig:
    """decode_combine: one program per output row; it reads its S partial rows once."""
    block_s = triton.next_power_of_2(num_splits)
    return LaunchConfig("decode_combine", 1, block_s, 4 if head_dim > 64 else 2, 1,
                        (batch * q_heads * q_len,), 0)


def split_warps(block_m: int, register_element_bytes: int) -> int:
    """4 warps for 16-bit tiles of up to 32 rows; 8 where 4 would spill (fp32 tiles, 64-row blocks: above)."""
    return 8 if register_element_bytes >= 4 or block_m >= 64 else 4


def split_config(name: str, grid: tuple[int, int, int], block_m: int, block_n: int, head_dim: int,
                 tile_element_bytes: float, query_element_bytes: int, num_warps: int) -> LaunchConfig:
    """A split kernel's config; shared memory estimated as the num_stages - 1 K and V tiles in flight
    (tile_element_bytes each element) plus the query rows."""
    d = head_block(head_dim)
    shared = int((SPLIT_STAGES - 1) * 2 * block_n * d * tile_element_bytes + block_m * d * query_element_bytes)
    return LaunchConfig(name, block_m, block_n, num_warps, SPLIT_STAGES, grid, shared)


def check_decode_inputs(q: Tensor, k_shape: tuple, kv_dtype: torch.dtype | None, device: torch.device,
                        num_splits: int | None) -> None:
    """q [B, Hq, Nq, D] against K/V of shape [B, Hkv, Nk, D]; kv_dtype None where K/V are not plain tensors."""
    if q.dim() != 4:
        raise ValueError(f"q has shape {tuple(q.shape)}; expected 4 dims [B, Hq, Nq, D]")
    if q.dtype not in DTYPES:
        raise ValueError(f"q.dtype = {q.dtype}; expected one of float16, bfloat16, float32")
    if kv_dtype is not None and kv_dtype != q.dtype:
        raise ValueError(f"k/v dtype {kv_dtype} differs from q dtype {q.dtype}; pass one dtype")
    if q.device != device:
        raise ValueError(f"q is on {q.device} and k/v on {device}; pass one device")
    if len(k_shape) != 4 or k_shape[0] != q.shape[0] or k_shape[3] != q.shape[3]:
        raise ValueError(f"k/v shape {tuple(k_shape)} does not match q {tuple(q.shape)}; expected [B, Hkv, Nk, D] "
                         f"with q's B and D")
    if k_shape[1] < 1 or q.shape[1] % k_shape[1]:
        raise ValueError(f"q heads = {q.shape[1]} must be a multiple of kv heads = {k_shape[1]}")
    if not 1 <= q.shape[3] <= MAX_HEAD_DIM:
        raise ValueError(f"head dim = {q.shape[3]}; expected 1..{MAX_HEAD_DIM}")
    if num_splits is not None and (not isinstance(num_splits, int) or num_splits < 1):
        raise ValueError(f"num_splits = {num_splits!r}; expected None or an int >= 1")


def launch_configs(q: Tensor, k: Tensor, v: Tensor, *, num_splits: int | None = None,
                   sm_count: int | None = None) -> list[LaunchConfig]:
    """The launches of flash_decode for these inputs (meta tensors will do), in order: decode_split, then
    decode_combine when there is more than one split. num_splits None: choose_num_splits for sm_count SMs
    (default: the tensors' GPU, else an H100)."""
    if k.shape != v.shape or k.dtype != v.dtype:
        raise ValueError(f"k {tuple(k.shape)} {k.dtype} and v {tuple(v.shape)} {v.dtype} differ; they must match")
    check_decode_inputs(q, tuple(k.shape), k.dtype, k.device, num_splits)
    batch, q_heads, q_len, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    e = element_bytes(q.dtype)
    block_m, block_n = row_block(q_heads // kv_heads * q_len), key_block(head_dim, e)
    row_blocks = triton.cdiv(q_heads // kv_heads * q_len, block_m)
    if num_splits is None:
        sm_count = device_sm_count(q.device) if sm_count is None else sm_count
        num_splits = choose_num_splits(batch, kv_heads, kv_len, sm_count, block_n=block_n, row_blocks=row_blocks)
    configs = [split_config("decode_split", (batch * kv_heads, row_blocks, num_splits), block_m, block_n,
                            head_dim, e, e, split_warps(block_m, e))]
    if num_splits > 1:
        configs.append(combine_config(batch, q_heads, q_len, head_dim, num_splits))
    return configs


# ---- launching --------------------------------------------------------------------------------------

def partial_buffers(batch: int, q_heads: int, q_len: int, num_splits: int, head_dim: int,
                    device: torch.device) -> tuple[Tensor, Tensor]:
    """Per-split partial O [B, Hq, Nq, S, D] and LSE [B, Hq, Nq, S], fp32, written by the splits."""
    o = torch.empty((batch, q_heads, q_len, num_splits, head_dim), dtype=torch.float32, device=device)
    lse = torch.empty((batch, q_heads, q_len, num_splits), dtype=torch.float32, device=device)
    return o, lse


def split_targets(out: Tensor, lse: Tensor, num_splits: int) -> tuple[Tensor, Tensor, tuple, tuple]:
    """Where the split kernel writes: the outputs themselves for one split (split stride 0), else fresh
    partial buffers. Returns (o target, lse target, o strides [b, h, n, s, d], lse strides [b, h, n, s])."""
    if num_splits == 1:
        so, sl = out.stride(), lse.stride()
        return out, lse, (so[0], so[1], so[2], 0, so[3]), (sl[0], sl[1], sl[2], 0)
    o_part, lse_part = partial_buffers(*out.shape[:3], num_splits, out.shape[3], out.device)
    return o_part, lse_part, o_part.stride(), lse_part.stride()


def combine(config: LaunchConfig, o_part: Tensor, lse_part: Tensor, out: Tensor, lse: Tensor,
            launched: list | None) -> None:
    """Run decode_combine: partials [B, Hq, Nq, S, D] and [B, Hq, Nq, S] -> out [B, Hq, Nq, D], lse [B, Hq, Nq]."""
    batch, q_heads, q_len, num_splits, head_dim = o_part.shape
    launch(decode_combine, config, o_part, lse_part, out, lse, *o_part.stride(), *lse_part.stride(), *out.stride(),
           *lse.stride(), q_heads, q_len, num_splits, launched=launched, HEAD_DIM=head_dim, BLOCK_S=config.block_n,
           BLOCK_D=head_block(head_dim))


def decode_outputs(q: Tensor, out: Tensor | None, lse_out: Tensor | None) -> tuple[Tensor, Tensor]:
    """Checked or fresh outputs: O [B, Hq, Nq, D] in q's dtype, LSE [B, Hq, Nq] fp32."""
    check_output("out", out, q.shape, q.dtype, q.device)
    check_output("lse_out", lse_out, q.shape[:3], torch.float32, q.device)
    out = torch.empty_like(q) if out is None else out
    lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device) if lse_out is None else lse_out
    return out, lse


# ---- the op -----------------------------------------------------------------------------------------

def flash_decode(q: Tensor, k: Tensor, v: Tensor, *, num_splits: int | None = None, scale: float | None = None,
                 causal: bool = False, return_lse: bool = False, out: Tensor | None = None,
                 lse_out: Tensor | None = None, launched: list | None = None):
    """softmax(scale * Q K^T) V by Flash-Decoding: split the keys, attend each split, merge by LSE.

    q [B, Hq, Nq, D] (Nq small, usually 1), k and v [B, Hkv, Nk, D], Hq a multiple of Hkv, one dtype
    (fp16, bf16, fp32). num_splits: None picks choose_num_splits for the GPU. causal aligned to the end.
    out [B, Hq, Nq, D] in q's dtype and lse_out [B, Hq, Nq] fp32 (natural log) may be preallocated.
    `launched`, if a list, receives each launch's LaunchConfig. Returns O, or (O, LSE) with return_lse."""
    configs = launch_configs(q, k, v, num_splits=num_splits)
    out, lse = decode_outputs(q, out, lse_out)
    if q.numel() == 0:
        return (out, lse) if return_lse else out
    scale = q.shape[3] ** -0.5 if scale is None else scale
    split = configs[0]
    num_splits = split.grid[2]
    o_target, lse_target, o_strides, lse_strides = split_targets(out, lse, num_splits)
    launch(decode_split, split, q, k, v, o_target, lse_target, *q.stride(), *k.stride(), *v.stride(), *o_strides,
           *lse_strides, k.shape[1], q.shape[2], k.shape[2], keys_per_split(k.shape[2], num_splits, split.block_n),
           scale * LOG2E, launched=launched, GROUP=q.shape[1] // k.shape[1], HEAD_DIM=q.shape[3],
           BLOCK_M=split.block_m, BLOCK_N=split.block_n, BLOCK_D=head_block(q.shape[3]), CAUSAL=causal,
           IEEE=q.dtype == torch.float32)
    if num_splits > 1:
        combine(configs[1], o_target, lse_target, out, lse, launched)
    return (out, lse) if return_lse else out
