"""The float64 reference for every kernel of the matched set: the math, nothing clever.

Every function computes in `dtype` (float64 by default, on the CPU). Called with a low precision
(`dtype=torch.float16`) the same function is "PyTorch math in that precision", the peer whose
error bounds a kernel's error in the tests (shared/DESIGN.md, correctness conventions).

Conventions (shared/DESIGN.md):
- layout [B, H, N, D]; GQA/MQA: q head h reads kv head h // (Hq // Hkv);
- positions: query i sits at q_start + i, key j at k_start + j; q_start=None aligns the queries
  to the end of the keys (q_start = k_start + Nk - Nq), as a KV cache does;
- causal: a key is visible iff its position <= the query's; window=(left, right): iff
  query - left <= key <= query + right;
- a row that sees no key has output 0 and log-sum-exp -inf, never NaN; LSE is natural log.
"""

import math

import torch
from torch import Tensor


def _cast(dtype: torch.dtype, *tensors: Tensor) -> list[Tensor]:
    return [t.to(device="cpu", dtype=dtype) for t in tensors]


def _expand_kv(x: Tensor, q_heads: int) -> Tensor:
    """[B, Hkv, N, D] -> [B, Hq, N, D]: each kv head serves Hq // Hkv consecutive q heads."""
    kv_heads = x.shape[1]
    if q_heads % kv_heads:
        raise ValueError(f"q heads = {q_heads} must be a multiple of kv heads = {kv_heads}")
    return x.repeat_interleave(q_heads // kv_heads, dim=1)


def visible(q_len: int, k_len: int, *, causal: bool = False, window: tuple[int, int] | None = None,
            q_start: int | None = None, k_start: int = 0) -> Tensor:
    """[Nq, Nk] bool: which keys each query may see."""
    if q_start is None:
        q_start = k_start + k_len - q_len
    query = torch.arange(q_len).unsqueeze(1) + q_start
    key = torch.arange(k_len).unsqueeze(0) + k_start
    mask = torch.ones(q_len, k_len, dtype=torch.bool)
    if causal:
        mask &= key <= query
    if window is not None:
        left, right = window
        mask &= (key >= query - left) & (key <= query + right)
    return mask


def _distance(q_len: int, k_len: int, q_start: int | None, k_start: int) -> Tensor:
    if q_start is None:
        q_start = k_start + k_len - q_len
    return ((torch.arange(q_len).unsqueeze(1) + q_start) - (torch.arange(k_len).unsqueeze(0) + k_start)).abs()


def masked_softmax(scores: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Row softmax of scores [..., Nq, Nk] over the visible keys: (P, LSE); rows with no key give P 0, LSE -inf."""
    empty = ~mask.any(dim=-1)
    # Empty rows are given finite scores before logsumexp so that no NaN reaches a gradient.
    scores = scores.masked_fill(~mask & ~empty.unsqueeze(-1), -math.inf)
    lse = torch.logsumexp(scores, dim=-1)
    p = torch.exp(scores - lse.unsqueeze(-1)).masked_fill(~mask, 0.0)
    return p, lse.masked_fill(empty, -math.inf)


def attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False, window: tuple[int, int] | None = None,
              alibi_slopes: Tensor | None = None, scale: float | None = None, q_start: int | None = None,
              k_start: int = 0, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """softmax(scale * Q K^T + bias) V with the mask above.

    q [B, Hq, Nq, D], k [B, Hkv, Nk, D], v [B, Hkv, Nk, Dv], alibi_slopes [Hq] (bias = -slope * |query - key|).
    Returns (O [B, Hq, Nq, Dv], LSE [B, Hq, Nq])."""
    q, k, v = _cast(dtype, q, k, v)
    heads = q.shape[1]
    k, v = _expand_kv(k, heads), _expand_kv(v, heads)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = scale * (q @ k.transpose(-1, -2))
    if alibi_slopes is not None:
        slopes = alibi_slopes.detach().to("cpu", dtype).view(1, heads, 1, 1)
        scores = scores - slopes * _distance(q.shape[2], k.shape[2], q_start, k_start).to(dtype)
    mask = visible(q.shape[2], k.shape[2], causal=causal, window=window, q_start=q_start, k_start=k_start)
    p, lse = masked_softmax(scores, mask)
    return p @ v, lse


def attention_backward(q: Tensor, k: Tensor, v: Tensor, do: Tensor, *, dtype: torch.dtype = torch.float64,
                       **keywords) -> tuple[Tensor, Tensor, Tensor]:
    """(dQ, dK, dV) of sum(O * dO) for attention(q, k, v, **keywords); GQA gradients summed over each group."""
    q, k, v, do = (t.detach().requires_grad_(True) for t in _cast(dtype, q, k, v, do))
    o, _ = attention(q, k, v, dtype=dtype, **keywords)
    dq, dk, dv = torch.autograd.grad(o, (q, k, v), grad_outputs=do.detach())
    return dq, dk, dv


def merge_partials(o_parts: Tensor, lse_parts: Tensor, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """Exact merge of partial attentions over disjoint key sets (Flash-Decoding's combine, a ring step's merge).

    o_parts [S, ..., D], lse_parts [S, ...] -> (O [..., D], LSE [...]); parts with LSE -inf weigh nothing."""
    o_parts, lse_parts = _cast(dtype, o_parts, lse_parts)
    lse = torch.logsumexp(lse_parts, dim=0)
    empty = torch.isneginf(lse)
    weights = torch.exp(lse_parts - lse.masked_fill(empty, 0.0)).masked_fill(empty, 0.0)
    return (weights.unsqueeze(-1) * o_parts).sum(dim=0), lse


def gather_pages(cache: Tensor, block_table: Tensor, seq_len: int) -> Tensor:
    """One sequence's K or V from a paged cache [num_blocks, Hkv, page, D] -> [Hkv, seq_len, D]."""
    page = cache.shape[2]
    pages = [cache[int(block_table[i])] for i in range(math.ceil(seq_len / page))]
    if not pages:
        return cache.new_zeros(cache.shape[1], 0, cache.shape[3])
    return torch.cat(pages, dim=1)[:, :seq_len]


def paged_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_table: Tensor, seq_lens: Tensor, *,
                    scale: float | None = None, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """Decode over a paged KV cache: q [B, Hq, D], k/v_cache [num_blocks, Hkv, page, D], block_table [B, max_pages],
    seq_lens [B]. Returns (O [B, Hq, D], LSE [B, Hq]); a sequence of length 0 gives O 0, LSE -inf."""
    q, k_cache, v_cache = _cast(dtype, q, k_cache, v_cache)
    outs, lses = [], []
    for b in range(q.shape[0]):
        length = int(seq_lens[b])
        k = gather_pages(k_cache, block_table[b], length).unsqueeze(0)
        v = gather_pages(v_cache, block_table[b], length).unsqueeze(0)
        o, lse = attention(q[b:b + 1].unsqueeze(2), k, v, scale=scale, dtype=dtype)
        outs.append(o[0, :, 0])
        lses.append(lse[0, :, 0])
    return torch.stack(outs), torch.stack(lses)


def linear_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False, decay: Tensor | None = None,
                     dtype: torch.dtype = torch.float64) -> Tensor:
    """o_i = sum_j w_ij (q_i . k_j) v_j, no feature map and no normaliser (Lightning Attention-2, Qin et al. 2024).

    w_ij = 1 (non-causal), [j <= i] (causal), [j <= i] exp(-s_h (i - j)) with decay s [H] >= 0 (causal only).
    q, k [B, H, N, D], v [B, H, N, Dv] -> o [B, H, N, Dv]."""
    if decay is not None and not causal:
        raise ValueError("decay applies to causal linear attention only: pass causal=True")
    q, k, v = _cast(dtype, q, k, v)
    n = q.shape[2]
    weights = torch.ones(n, n, dtype=dtype)
    if causal:
        weights = torch.tril(weights)
    weights = weights.expand(q.shape[1], n, n)
    if decay is not None:
        distance = (torch.arange(n).unsqueeze(1) - torch.arange(n).unsqueeze(0)).clamp(min=0).to(dtype)
        rates = decay.detach().to("cpu", dtype).view(-1, 1, 1)
        weights = weights * torch.exp(-rates * distance)
    return ((q @ k.transpose(-1, -2)) * weights) @ v


def moba_block_mask(q: Tensor, k: Tensor, *, block_size: int, top_k: int,
                    dtype: torch.dtype = torch.float64) -> Tensor:
    """MoBA gating (Lu et al. 2025): each query keeps the top_k key blocks by q . mean(k over the block) among the
    blocks that start at or before its position, always including its own block. Queries aligned to the end.

    q [B, H, Nq, D], k [B, Hkv, Nk, D] -> block mask [B, H, Nq, ceil(Nk / block_size)] bool."""
    if block_size <= 0 or top_k <= 0:
        raise ValueError(f"block_size = {block_size} and top_k = {top_k} must both be positive")
    q, k = _cast(dtype, q, k)
    k = _expand_kv(k, q.shape[1])
    n_q, n_k = q.shape[2], k.shape[2]
    blocks = math.ceil(n_k / block_size)
    means = torch.stack([k[:, :, b * block_size:(b + 1) * block_size].mean(dim=2) for b in range(blocks)], dim=2)
    gate = q @ means.transpose(-1, -2)  # [B, H, Nq, blocks]
    position = torch.arange(n_q) + (n_k - n_q)
    own = torch.div(position, block_size, rounding_mode="floor")  # [Nq]
    starts = torch.arange(blocks) * block_size
    eligible = starts.unsqueeze(0) <= position.unsqueeze(1)  # [Nq, blocks]
    gate = gate.masked_fill(~eligible, -math.inf)
    gate = gate.masked_fill(torch.arange(blocks).unsqueeze(0) == own.unsqueeze(1), math.inf)  # own block first
    chosen = gate.topk(min(top_k, blocks), dim=-1).indices
    mask = torch.zeros_like(gate, dtype=torch.bool).scatter_(-1, chosen, True)
    return mask & eligible


def block_sparse_attention(q: Tensor, k: Tensor, v: Tensor, block_mask: Tensor, *, block_size: int,
                           causal: bool = True, scale: float | None = None,
                           dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """Attention over the key blocks each query's block_mask [B, H, Nq, num_blocks] selects (and the causal mask).
    Returns (O [B, H, Nq, D], LSE [B, H, Nq])."""
    q, k, v = _cast(dtype, q, k, v)
    heads, n_q, n_k = q.shape[1], q.shape[2], k.shape[2]
    k, v = _expand_kv(k, heads), _expand_kv(v, heads)
    keys = block_mask.to("cpu").repeat_interleave(block_size, dim=-1)[..., :n_k]
    mask = keys & visible(n_q, n_k, causal=causal)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    p, lse = masked_softmax(scale * (q @ k.transpose(-1, -2)), mask)
    return p @ v, lse
