"""MoBA, Mixture of Block Attention (Lu et al. 2025), in Triton: each query attends to the top_k key blocks
its gate chooses, the current block always among them, causal inside the current block.

Gate (moba_select, torch): keys split into blocks of block_size; a query at position p scores block b by
q . mean(k over block b) among the blocks that start at or before p; its own block (p // block_size) is
always chosen (Lu et al. 2025, sec. 2.2-2.3), then the best top_k - 1 of the others. Same rule as
kernels.reference.moba_block_mask; queries are aligned to the end of the keys.

Attention (moba_attention_kernel): FlashAttention-2's program (Dao 2023: one Q tile per program, online
softmax, O and LSE written once), one per (q tile, batch, q head), q tile fastest. Before the launch
(tile_blocks, torch) the per-row mask is reduced to the union of the blocks any row of a tile chose, in
ascending order, and to the number of BLOCK_N key steps over them that end before the tile's last row
(the causal cut). The program walks those steps only, so blocks no row of the tile chose, and the keys
after its last row, are never loaded (the saving); inside it masks per row (the row chose the block)
and per key (causal, end of the keys).
"""

import math

import torch
import triton
import triton.language as tl

from kernels.checks import (LN2, LOG2E, MIN_DOT, check_head_offsets, check_qkv, dot_precision, head_block,
                            output_like)
from kernels.launch import INTERPRETING, LaunchConfig, element_bytes, launch


@triton.jit
def moba_attention_kernel(Q, K, V, O, LSE, MASK, BLOCKS, STEPS, scale_log2, q_len, k_len, head_dim, q_heads,
                          group, block_size, num_blocks, tiles, steps_per_block,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                          PRECISION: tl.constexpr):
    """Q, O [B, Hq, Nq, D], K, V [B, Hkv, Nk, D], LSE [B, Hq, Nq] fp32, MASK [B, Hq, Nq, num_blocks] uint8,
    BLOCKS [B, Hq, tiles, num_blocks] int32 (the tile's chosen blocks first, ascending), STEPS [B, Hq, tiles]
    int32 (key steps of BLOCK_N to take over them); all contiguous."""
    pid = tl.program_id(0)
    tile = pid % tiles
    bh = pid // tiles
    kv_bh = (bh // q_heads) * (q_heads // group) + (bh % q_heads) // group
    q_base = bh.to(tl.int64) * q_len * head_dim  # int64: B * H * N * D may pass 2^31
    kv_base = kv_bh.to(tl.int64) * k_len * head_dim

    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    row_ok = rows < q_len
    dim_ok = dims < head_dim
    position = rows + (k_len - q_len)  # queries aligned to the end of the keys
    q = tl.load(Q + q_base + rows[:, None] * head_dim + dims[None, :],
                mask=row_ok[:, None] & dim_ok[None, :], other=0.0)  # stays on chip for the whole loop

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    list_at = (bh.to(tl.int64) * tiles + tile) * num_blocks
    mask_rows = (bh.to(tl.int64) * q_len + rows) * num_blocks
    steps = tl.load(STEPS + bh.to(tl.int64) * tiles + tile)
    # One flat loop over the key steps of the chosen blocks, steps_per_block per block (the last block the rows
    # can see may stop early): a single loop the compiler can software-pipeline, as FlexAttention walks its
    # kv_indices (Dong et al. 2024, FlexAttention: BlockMask's kv_num_blocks and kv_indices).
    for j in range(0, steps):
        slot = j // steps_per_block
        block = tl.load(BLOCKS + list_at + slot)
        chose = tl.load(MASK + mask_rows + block, mask=row_ok, other=0) != 0  # [BLOCK_M]: which rows chose it
        keys = block * block_size + (j - slot * steps_per_block) * BLOCK_N + offs_n
        key_ok = keys < tl.minimum(block * block_size + block_size, k_len)
        kv_at = keys[:, None] * head_dim + dims[None, :]
        kv_ok = key_ok[:, None] & dim_ok[None, :]
        k = tl.load(K + kv_base + kv_at, mask=kv_ok, other=0.0)
        v = tl.load(V + kv_base + kv_at, mask=kv_ok, other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
        keep = chose[:, None] & key_ok[None, :] & (keys[None, :] <= position[:, None])
        scores = tl.where(keep, scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet: exp2(-inf) = 0, no NaN
        p = tl.exp2(scores - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc=acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new

    seen = l_i > 0.0  # a row that saw no key: O 0, LSE -inf
    out = tl.where(seen[:, None], acc / tl.where(seen, l_i, 1.0)[:, None], 0.0)
    lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0))) * LN2, float("-inf"))
    tl.store(O + q_base + rows[:, None] * head_dim + dims[None, :], out.to(O.dtype.element_ty),
             mask=row_ok[:, None] & dim_ok[None, :])
    tl.store(LSE + bh.to(tl.int64) * q_len + rows, lse, mask=row_ok)


# ---- the gate -----------------------------------------------------------------------------------------------------

def check_moba(block_size: int, top_k: int) -> None:
    if block_size <= 0 or top_k <= 0:
        raise ValueError(f"block_size = {block_size} and top_k = {top_k}; expected both >= 1")


def block_means(k: torch.Tensor, block_size: int) -> torch.Tensor:
    """k [B, Hkv, Nk, D] -> mean key of each block [B, Hkv, num_blocks, D] in fp32 (the last block may be short)."""
    b, heads, n, d = k.shape
    blocks = math.ceil(n / block_size)
    padded = k.new_zeros(b, heads, blocks * block_size, d, dtype=torch.float32)
    padded[:, :, :n] = k
    sizes = torch.full((blocks,), block_size, dtype=torch.float32, device=k.device)
    sizes[-1] = n - (blocks - 1) * block_size
    return padded.view(b, heads, blocks, block_size, d).sum(dim=3) / sizes.view(blocks, 1)


def moba_select(q: torch.Tensor, k: torch.Tensor, *, block_size: int, top_k: int) -> torch.Tensor:
    """MoBA's gate: q [B, Hq, Nq, D], k [B, Hkv, Nk, D] -> block_mask [B, Hq, Nq, ceil(Nk / block_size)] bool.

    Each query keeps its own block and the top_k - 1 best earlier blocks by q . mean(k over the block), scored
    in fp32; queries sit at positions Nk - Nq .. Nk - 1."""
    check_moba(block_size, top_k)
    check_attention_inputs(q, k, k)
    b, heads, n_q, d = q.shape
    kv_heads, n_k = k.shape[1], k.shape[2]
    means = block_means(k, block_size)  # [B, Hkv, blocks, D]
    blocks = means.shape[2]
    grouped = q.float().reshape(b, kv_heads, heads // kv_heads * n_q, d)  # q head h reads kv head h // G
    gate = (grouped @ means.transpose(-1, -2)).view(b, heads, n_q, blocks)
    position = torch.arange(n_q, device=q.device) + (n_k - n_q)
    block_ids = torch.arange(blocks, device=q.device)
    eligible = (block_ids * block_size).unsqueeze(0) <= position.unsqueeze(1)  # [Nq, blocks]: starts at or before
    own = block_ids.unsqueeze(0) == torch.div(position, block_size, rounding_mode="floor").unsqueeze(1)
    gate = gate.masked_fill(~eligible, -math.inf).masked_fill(own, math.inf)  # own block first
    chosen = gate.topk(min(top_k, blocks), dim=-1).indices
    mask = torch.zeros_like(gate, dtype=torch.bool).scatter_(-1, chosen, True)
    return mask & eligible


# ---- the attention ------------------------------------------------------------------------------------------------

def check_attention_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """q [B, Hq, Nq, D], k and v [B, Hkv, Nk, D] as kernels.checks.check_qkv; int32 offsets inside a head."""
    check_qkv(q, k, v)
    check_head_offsets(q, k)


def check_block_mask(block_mask: torch.Tensor, q: torch.Tensor, k: torch.Tensor, block_size: int) -> None:
    expected = (*q.shape[:3], math.ceil(k.shape[2] / block_size))
    if block_mask.shape != expected or block_mask.dtype != torch.bool or block_mask.device != q.device:
        raise ValueError(f"block_mask is {tuple(block_mask.shape)} {block_mask.dtype} on {block_mask.device}; "
                         f"expected {expected} torch.bool on {q.device} ([B, Hq, Nq, num_blocks])")


def tile_blocks(block_mask: torch.Tensor, block_m: int, block_n: int, block_size: int,
                k_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What each q tile of block_m rows walks: block_mask [B, H, Nq, nb] -> (block ids [B, H, tiles, nb] int32, the
    union of its rows' chosen blocks first in ascending order; steps [B, H, tiles] int32, the key steps of block_n
    over those blocks, cdiv(block_size, block_n) per block, stopping after the tile's last row's position).

    Ascending order puts the blocks the causal limit cuts at the end of the list, so step j is step
    j % steps_per_block of listed block j // steps_per_block."""
    b, heads, n_q, blocks = block_mask.shape
    tiles = triton.cdiv(n_q, block_m)
    padded = block_mask.new_zeros(b, heads, tiles * block_m, blocks)
    padded[:, :, :n_q] = block_mask
    union = padded.view(b, heads, tiles, block_m, blocks).any(dim=3)  # [B, H, tiles, nb]
    order = torch.argsort((~union).to(torch.int8), dim=-1, stable=True)
    device = block_mask.device
    last_row = torch.clamp((torch.arange(tiles, device=device) + 1) * block_m, max=n_q) - 1
    limit = last_row + (k_len - n_q) + 1  # keys below this may be visible to some row of the tile
    starts = torch.arange(blocks, device=device) * block_size
    ends = torch.clamp(starts + block_size, max=k_len)
    useful = torch.clamp(torch.minimum(ends.unsqueeze(0), limit.unsqueeze(1)) - starts.unsqueeze(0), min=0)
    steps_per = torch.div(useful + block_n - 1, block_n, rounding_mode="floor")  # [tiles, nb]
    steps = (union * steps_per).sum(dim=-1, dtype=torch.int32)
    return order.to(torch.int32).contiguous(), steps.contiguous()


def key_block(block_size: int) -> int:
    """Keys per inner step: the largest power of two <= the cap that divides block_size (no step straddles a
    block end), at least 16 for tl.dot."""
    cap = 16 if INTERPRETING else 64
    step = cap
    while step > MIN_DOT and block_size % step:
        step //= 2
    return step


def tile_config(head_dim: int, dtype: torch.dtype, block_size: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for an H100, FlashAttention-2's choices (Dao 2023; the Triton
    fused-attention tutorial): 128 x 64 tiles, 8 warps from d = 128; fp32 (exact FMA dots) and d = 256 halve
    BLOCK_M to fit shared memory and registers. Under the interpreter 16 x 16.

    Compiled offline for sm_90 (triton 3.9, fp16): d = 64, 128, 256 use 254, 216, 230 registers, no spills, and
    64, 128, 160 KiB of shared memory (K and V in num_stages buffers)."""
    block_n = key_block(block_size)
    if INTERPRETING:
        return 16, block_n, 4, 1
    block_d = head_block(head_dim)
    if dtype == torch.float32:  # exact (FMA) dots: 8 warps keep d <= 64 free of register spills on sm_90
        return 64, min(32, block_n), 8, 2
    if block_d > 128:
        return 64, block_n, 8, 2
    return 128, block_n, 8 if block_d > 64 else 4, 3


_recent: list[LaunchConfig] = []


def recent_launches() -> list[LaunchConfig]:
    """The configs the most recent moba_attention call launched, shared memory as compiled where known."""
    return list(_recent)


def launch_configs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, block_size: int,
                   top_k: int) -> list[LaunchConfig]:
    """Every Triton kernel moba_attention launches for these tensors (one; the gate and the tile lists are torch)."""
    check_moba(block_size, top_k)
    check_attention_inputs(q, k, v)
    b, heads, n_q, d = q.shape
    block_m, block_n, warps, stages = tile_config(d, q.dtype, block_size)
    block_d, e = head_block(d), element_bytes(q.dtype)
    smem = (block_m * block_d + stages * 2 * block_n * block_d) * e  # Q, then K and V per stage (P stays in registers)
    return [LaunchConfig("moba_attention_kernel", block_m, block_n, num_warps=warps, num_stages=stages,
                         grid=(triton.cdiv(n_q, block_m) * b * heads,), shared_mem_bytes=smem)]


def moba_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, block_size: int, top_k: int,
                   block_mask: torch.Tensor | None = None, scale: float | None = None, out: torch.Tensor | None = None,
                   lse_out: torch.Tensor | None = None, return_lse: bool = False):
    """Causal attention of each query over the key blocks its gate chose (MoBA).

    q [B, Hq, Nq, D], k and v [B, Hkv, Nk, D] (q head h reads kv head h // (Hq / Hkv)); block_mask
    [B, Hq, Nq, ceil(Nk / block_size)] bool, or None for moba_select(q, k, block_size=, top_k=) (top_k is not read
    when a mask is given); scale defaults to D^-0.5. Returns O [B, Hq, Nq, D] in q's dtype, and with return_lse
    (O, LSE [B, Hq, Nq] fp32, natural log); a row that sees no key gets O 0 and LSE -inf."""
    config = launch_configs(q, k, v, block_size=block_size, top_k=top_k)[0]
    if block_mask is None:
        block_mask = moba_select(q, k, block_size=block_size, top_k=top_k)
    check_block_mask(block_mask, q, k, block_size)
    out = output_like(out, q)
    lse_out = output_like(lse_out, torch.empty(q.shape[:3], dtype=torch.float32, device=q.device), "lse_out")
    launch_attention(q, k, v, block_mask, out, lse_out, block_size, scale, config)
    return (out, lse_out) if return_lse else out


def launch_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: torch.Tensor, out: torch.Tensor,
                     lse_out: torch.Tensor, block_size: int, scale: float | None, config: LaunchConfig) -> None:
    """Run moba_attention_kernel from `config`, writing out [B, Hq, Nq, D] and lse_out [B, Hq, Nq]."""
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    b, heads, n_q, d = q.shape
    n_k = k.shape[2]
    mask = block_mask.contiguous().view(torch.uint8)
    blocks, steps = tile_blocks(block_mask, config.block_m, config.block_n, block_size, n_k)
    o_target = out if out.is_contiguous() else torch.empty_like(q)
    lse_target = lse_out if lse_out.is_contiguous() else torch.empty_like(lse_out)
    scale = d ** -0.5 if scale is None else scale
    _recent[:] = [launch(moba_attention_kernel, config, q, k, v, o_target, lse_target, mask, blocks, steps,
                         scale * LOG2E, n_q, n_k, d, heads, heads // k.shape[1], block_size, mask.shape[-1],
                         steps.shape[-1], triton.cdiv(block_size, config.block_n), BLOCK_M=config.block_m,
                         BLOCK_N=config.block_n, BLOCK_D=head_block(d), PRECISION=dot_precision(q.dtype))]
    if o_target is not out:
        out.copy_(o_target)
    if lse_target is not lse_out:
        lse_out.copy_(lse_target)
