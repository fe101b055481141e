"""Lightning Attention-2 (Qin et al. 2024, Algorithm 1) in Triton: causal linear attention with an optional
exponential decay per head, computed block by block with the KV state kept on chip.

    o_i = sum_{j <= i} exp(-s_h (i - j)) (q_i . k_j) v_j      (no feature map, no normaliser)

as kernels.reference.linear_attention(q, k, v, causal=True, decay=s). With no decay this is causal
linear attention, and kernels.linear launches the same kernel for it.

One program per (batch, q head, value split), the split fastest, walks the blocks of B rows in order
(memsim.schedules.lightning models the same grid). Its state KV_t (d x BLOCK_DV value columns, fp32)
lives in registers for the whole loop; it is never loaded or stored. With KV_t decayed to the first row
of block t, KV_t = sum_{j < tB} exp(-s (tB - j)) k_j^T v_j, block t computes
    intra   O_intra = [(Q_t K_t^T) * M] V_t,  M_ij = exp(-s (i - j)) for i >= j, else 0   left product
    inter   O_inter = Lambda Q_t KV_t,        Lambda = diag(exp(-s i)), i = 0 .. B-1       right product
    update  KV_{t+1} = exp(-s B) KV_t + (exp(-s (B - j)) K_t)^T V_t
(the paper decays KV to the previous block's last row, so its Lambda runs lambda^1 .. lambda^B: the
same products shifted by one row). M, Lambda and the key weights depend only on positions inside a
block, so each program computes them once before the loop.

Precision of the right product: KV_t sums every earlier row, so it is kept in fp32; with 16-bit inputs it
enters the tensor cores as two 16-bit parts, hi = KV_t rounded and lo = KV_t - hi rounded, and
Q KV_t = Q hi + Q lo keeps about 16 bits of its mantissa instead of bf16's 8 (the bf16x2 split of Henry,
Tang, Heinecke 2019, "Leveraging the bfloat16 Artificial Intelligence Datatype For Higher-Precision
Computations"). fp32 inputs take the state as it is, in exact fp32 dots.
"""

import torch
import triton
import triton.language as tl

from kernels.checks import check_head_offsets, check_qkv, check_tile, dot_precision, head_block, output_like
from kernels.launch import INTERPRETING, LaunchConfig, element_bytes, launch

# Head dims up to kernels.checks.MAX_HEAD_DIM = 256: Q and K tiles of 64 x 256 fp16 (32 KiB each) still fit an
# H100's shared memory.
# Value columns per program: 64, where the paper's kernel takes BLOCK_MODEL = min(next_pow2(d), 32). With 32 columns
# the 64-row wgmma build on sm_90 (triton 3.6) gave wrong rows and illegal memory accesses with decay; with 64 every
# H100 test passes (validation/results/h100/lightning-probe-2026-11-22.txt, kernel-tests-gpu-lightning-*.log).
VALUE_COLUMNS = 64
# Rows per block: 64 in the paper's Triton kernel (lightning_attn2, BLOCK = 64); 16 under the interpreter, and
# for fp32 on a GPU, whose exact (FMA) dots need far more registers per tile than tensor cores.
BLOCK_ROWS = 16 if INTERPRETING else 64
BLOCK_ROWS_FP32 = 16


@triton.jit
def _times_state(x, state, SPLIT_STATE: tl.constexpr, PRECISION: tl.constexpr):
    """x [M, D] in the input dtype times the fp32 state [D, DV] -> [M, DV] fp32. SPLIT_STATE (16-bit x): the
    state as hi + lo 16-bit parts, two tensor-core dots (module docstring); else one dot on the fp32 state."""
    if SPLIT_STATE:
        hi = state.to(x.dtype)
        lo = (state - hi.to(tl.float32)).to(x.dtype)
        out = tl.dot(x, hi, input_precision=PRECISION)
        out = tl.dot(x, lo, acc=out, input_precision=PRECISION)
    else:
        out = tl.dot(x, state, input_precision=PRECISION)
    return out


@triton.jit
def lightning_scan_kernel(Q, K, V, O, RATES, n_rows, head_dim, q_heads, group, splits,
                          BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                          DECAY: tl.constexpr, SPLIT_STATE: tl.constexpr, PRECISION: tl.constexpr):
    """Q, O [B, Hq, N, D], K, V [B, Hkv, N, D], contiguous; RATES [Hq] fp32 (read only with DECAY)."""
    pid = tl.program_id(0)
    split = pid % splits
    bh = pid // splits
    head = bh % q_heads
    kv_bh = (bh // q_heads) * (q_heads // group) + head // group
    q_base = bh.to(tl.int64) * n_rows * head_dim  # int64: B * H * N * D may pass 2^31
    kv_base = kv_bh.to(tl.int64) * n_rows * head_dim

    offs = tl.arange(0, BLOCK)
    dims = tl.arange(0, BLOCK_D)
    cols = split * BLOCK_DV + tl.arange(0, BLOCK_DV)
    dim_ok = dims < head_dim
    col_ok = cols < head_dim

    if DECAY:  # decay weights of positions inside a block, fp32, once per program
        rate = tl.load(RATES + head)
        i = offs.to(tl.float32)
        gap = i[:, None] - i[None, :]
        intra_w = tl.where(gap >= 0, tl.exp(-rate * tl.maximum(gap, 0.0)), 0.0)  # M
        inter_w = tl.exp(-rate * i)  # diagonal of Lambda
        key_w = tl.exp(-rate * (BLOCK - i))
        block_w = tl.exp(-rate * BLOCK)
    else:
        intra_w = tl.where(offs[:, None] >= offs[None, :], 1.0, 0.0)

    state = tl.zeros([BLOCK_D, BLOCK_DV], dtype=tl.float32)  # KV_t: on chip for the whole loop
    for start in range(0, n_rows, BLOCK):
        rows = start + offs
        row_ok = rows < n_rows
        qk_at = rows[:, None] * head_dim + dims[None, :]
        qk_ok = row_ok[:, None] & dim_ok[None, :]
        v_at = rows[:, None] * head_dim + cols[None, :]
        v_ok = row_ok[:, None] & col_ok[None, :]
        q = tl.load(Q + q_base + qk_at, mask=qk_ok, other=0.0)
        k = tl.load(K + kv_base + qk_at, mask=qk_ok, other=0.0)  # rows past N load 0: no effect on KV
        v = tl.load(V + kv_base + v_at, mask=v_ok, other=0.0)

        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * intra_w
        out = _times_state(q, state, SPLIT_STATE, PRECISION)
        if DECAY:
            out = out * inter_w[:, None]
        out = tl.dot(scores.to(v.dtype), v, acc=out, input_precision=PRECISION)
        tl.store(O + q_base + v_at, out.to(O.dtype.element_ty), mask=v_ok)

        if DECAY:
            k_decayed = (k.to(tl.float32) * key_w[:, None]).to(k.dtype)
            state = state * block_w + tl.dot(tl.trans(k_decayed), v, input_precision=PRECISION)
        else:
            state = tl.dot(tl.trans(k), v, acc=state, input_precision=PRECISION)


# ---- launch -------------------------------------------------------------------------------------------------------

def default_block(dtype: torch.dtype) -> int:
    return BLOCK_ROWS_FP32 if dtype == torch.float32 and not INTERPRETING else BLOCK_ROWS


def scan_value_block(head_dim: int) -> int:
    """Value columns per scan program: min(next_pow2(d), VALUE_COLUMNS)."""
    return min(head_block(head_dim), VALUE_COLUMNS)


def check_decay(decay: torch.Tensor | None, q: torch.Tensor) -> torch.Tensor | None:
    """decay [Hq] of rates s >= 0 -> fp32 on q's device, or None."""
    if decay is None:
        return None
    heads = q.shape[1]
    if decay.shape != (heads,):
        raise ValueError(f"decay has shape {tuple(decay.shape)}; expected [{heads}] (one rate per q head)")
    rates = decay.detach().to(device=q.device, dtype=torch.float32).contiguous()
    if not bool(torch.isfinite(rates).all()) or bool((rates < 0).any()):
        raise ValueError(f"decay = {decay.tolist()}; expected finite rates s >= 0")
    return rates


_recent: list[LaunchConfig] = []


def recent_launches() -> list[LaunchConfig]:
    """The configs the most recent lightning_attention (or causal linear_attention) call launched."""
    return list(_recent)


def scan_config(q: torch.Tensor, block: int) -> LaunchConfig:
    """The scan's launch for q [B, Hq, N, D] in blocks of `block` rows."""
    b, heads, _, d = q.shape
    block_d, block_dv = head_block(d), scan_value_block(d)
    splits = triton.cdiv(d, block_dv)
    e = element_bytes(q.dtype)
    stages = 2
    # Q, K, V tiles per stage. The compiler may add buffers for the state's hi and lo parts as tensor-core operands
    # (an sm_90 build, triton 3.6, 16-bit, d = 128, 32 value columns: exactly this with decay, 16 KiB more without).
    smem = stages * block * (2 * block_d + block_dv) * e
    # d = 256 and fp32: tiles spread over more threads (fewer registers each; sm_90 builds spilled with 4 warps)
    warps = 8 if block_d > 128 or q.dtype == torch.float32 else 4
    return LaunchConfig("lightning_scan_kernel", block, block, num_warps=warps, num_stages=stages,
                        grid=(b * heads * splits,), shared_mem_bytes=smem)


def launch_configs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, decay: torch.Tensor | None = None,
                   block_size: int | None = None) -> list[LaunchConfig]:
    """Every kernel lightning_attention launches for these tensors (one)."""
    check_qkv(q, k, v, same_length=True)
    check_head_offsets(q, k)
    block = default_block(q.dtype) if block_size is None else block_size
    check_tile(block, "block_size")
    return [scan_config(q, block)]


def launch_scan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, rates: torch.Tensor | None,
                config: LaunchConfig) -> torch.Tensor:
    """Run the scan from `config` into `out` (any layout); returns `out`."""
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    target = out if out.is_contiguous() else torch.empty_like(q)
    _, heads, n, d = q.shape
    block_dv = scan_value_block(d)
    dummy = q if rates is None else rates  # RATES is not read without DECAY
    _recent[:] = [launch(lightning_scan_kernel, config, q, k, v, target, dummy, n, d, heads, heads // k.shape[1],
                         triton.cdiv(d, block_dv), BLOCK=config.block_m, BLOCK_D=head_block(d), BLOCK_DV=block_dv,
                         DECAY=rates is not None, SPLIT_STATE=q.dtype != torch.float32,
                         PRECISION=dot_precision(q.dtype))]
    if target is not out:
        out.copy_(target)
    return out


def lightning_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, decay: torch.Tensor | None = None,
                        block_size: int | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Causal linear attention with decay, Lightning Attention-2's block scan.

    q [B, Hq, N, D], k and v [B, Hkv, N, D] (q head h reads kv head h // (Hq / Hkv)), decay [Hq] rates s >= 0
    or None (no decay), block_size: rows per block, a power of two >= 16. Returns o [B, Hq, N, D] in q's dtype
    (written into `out` when given)."""
    config = launch_configs(q, k, v, decay=decay, block_size=block_size)[0]
    out = output_like(out, q)
    return launch_scan(q, k, v, out, check_decay(decay, q), config)
