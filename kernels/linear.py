"""Linear attention without feature map or normaliser in Triton (kernels.reference.linear_attention):

    o_i = sum_j (q_i . k_j) v_j         over every j (non-causal) or j <= i (causal)

Non-causal, two launches (the grids memsim.schedules.linear models):
  1. linear_state_kernel, one program per (batch, kv head, value split, key split), key split fastest:
     walks its contiguous share of the key tiles of BLOCK_N and accumulates KV = K^T V (d x BLOCK_DV,
     fp32) in registers, then adds it into an fp32 workspace [B, Hkv, D, D] with atomics (red.add
     resolves in L2), or stores it when there is one key split. Key splits fill the SMs: one program
     per (batch, kv head) alone would leave most of them idle for small batches.
  2. linear_output_kernel, one program per (q tile, value split, batch, q head), q tile fastest: loads
     its Q tile and its kv head's state columns, O = Q KV.
Associativity (Q K^T) V = Q (K^T V) turns N^2 d work into N d^2 (Katharopoulos et al. 2020, sec. 3.2).

Causal, one launch: the chunked scan of kernels.lightning without decay: within a chunk the masked
quadratic form (Q K^T * tril) V, across chunks a running state Q KV kept on chip.
"""

import torch
import triton
import triton.language as tl

from kernels.checks import check_head_offsets, check_qkv, check_tile, dot_precision, head_block, output_like
from kernels.launch import INTERPRETING, LaunchConfig, element_bytes, launch
from kernels.lightning import default_block, launch_scan, scan_config
from kernels.lightning import recent_launches as recent_scan_launches

# Keys per state step: 64 (flash-linear-attention's BT = 64); query rows per output tile: 128, with 8 warps
# to hold a d x d state of d = 128 (memsim.algorithms.linear.default_tiles). Value columns per program: the
# whole d up to 128 (a 128 x 128 fp32 state is 64 registers per thread over 8 warps). The interpreter runs
# 16-row tiles and 32 value columns, so that CPU tests split the value dim from d = 33.
BLOCK_KEYS = 16 if INTERPRETING else 64
BLOCK_ROWS = 16 if INTERPRETING else 128
VALUE_COLUMNS = 32 if INTERPRETING else 128
INTERPRETER_SMS = 4  # "SMs" the key split fills under the interpreter: CPU tests run 1 to 4 key splits


@triton.jit
def linear_state_kernel(K, V, KV, n_rows, head_dim, value_splits, key_splits, tiles_per_split,
                        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                        ATOMIC: tl.constexpr, PRECISION: tl.constexpr):
    """K, V [B, Hkv, N, D] contiguous -> KV [B, Hkv, D, D] fp32 (zeroed before when ATOMIC), columns
    split * BLOCK_DV onwards, key tiles [key_split * tiles_per_split, + tiles_per_split)."""
    pid = tl.program_id(0)
    key_split = pid % key_splits
    split = (pid // key_splits) % value_splits
    bh = (pid // (key_splits * value_splits)).to(tl.int64)
    base = bh * n_rows * head_dim  # int64: B * H * N * D may pass 2^31
    offs = tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    cols = split * BLOCK_DV + tl.arange(0, BLOCK_DV)
    dim_ok = dims < head_dim
    col_ok = cols < head_dim

    state = tl.zeros([BLOCK_D, BLOCK_DV], dtype=tl.float32)  # in registers for the whole loop
    first = key_split * tiles_per_split * BLOCK_N
    last = tl.minimum(first + tiles_per_split * BLOCK_N, n_rows)
    for start in range(first, last, BLOCK_N):
        rows = start + offs
        row_ok = rows < last
        k = tl.load(K + base + rows[:, None] * head_dim + dims[None, :],
                    mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
        v = tl.load(V + base + rows[:, None] * head_dim + cols[None, :],
                    mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        state = tl.dot(tl.trans(k), v, acc=state, input_precision=PRECISION)
    at = KV + bh * head_dim * head_dim + dims[:, None] * head_dim + cols[None, :]
    if ATOMIC:
        tl.atomic_add(at, state, mask=dim_ok[:, None] & col_ok[None, :])
    else:
        tl.store(at, state, mask=dim_ok[:, None] & col_ok[None, :])


@triton.jit
def linear_output_kernel(Q, KV, O, n_rows, head_dim, q_heads, group, splits, tiles,
                         BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                         PRECISION: tl.constexpr):
    """Q, O [B, Hq, N, D] contiguous, KV [B, Hkv, D, D] fp32: O = Q KV for one tile of rows and columns."""
    pid = tl.program_id(0)
    tile = pid % tiles
    split = (pid // tiles) % splits
    bh = pid // (tiles * splits)
    kv_bh = (bh // q_heads) * (q_heads // group) + (bh % q_heads) // group
    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    cols = split * BLOCK_DV + tl.arange(0, BLOCK_DV)
    row_ok = rows < n_rows
    dim_ok = dims < head_dim
    col_ok = cols < head_dim

    q_base = bh.to(tl.int64) * n_rows * head_dim
    q = tl.load(Q + q_base + rows[:, None] * head_dim + dims[None, :],
                mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
    kv = tl.load(KV + kv_bh.to(tl.int64) * head_dim * head_dim + dims[:, None] * head_dim + cols[None, :],
                 mask=dim_ok[:, None] & col_ok[None, :], other=0.0)
    out = tl.dot(q, kv.to(q.dtype), input_precision=PRECISION)
    tl.store(O + q_base + rows[:, None] * head_dim + cols[None, :], out.to(O.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


# ---- launch -------------------------------------------------------------------------------------------------------

_recent: list[LaunchConfig] = []


def recent_launches() -> list[LaunchConfig]:
    """The configs the most recent linear_attention call launched, shared memory as compiled where known."""
    return list(_recent)


def value_block(head_dim: int) -> int:
    return min(head_block(head_dim), VALUE_COLUMNS)


def sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return INTERPRETER_SMS


def share_keys(key_tiles: int, programs: int, sms: int) -> tuple[int, int]:
    """(key splits, key tiles per split): enough programs for one per SM, no more (each adds its state with
    atomics), and no more than the key tiles (memsim.algorithms.linear.state_splits); no split without keys."""
    wanted = max(1, min(key_tiles, triton.cdiv(sms, programs)))
    per_split = triton.cdiv(key_tiles, wanted)
    return triton.cdiv(key_tiles, per_split), per_split


def key_splits(k: torch.Tensor) -> tuple[int, int]:
    """share_keys for k [B, Hkv, N, D] on its device."""
    b, kv_heads, n, d = k.shape
    programs = b * kv_heads * triton.cdiv(d, value_block(d))
    return share_keys(triton.cdiv(n, BLOCK_KEYS), programs, sm_count(k.device))


def state_config(k: torch.Tensor) -> LaunchConfig:
    b, kv_heads, _, d = k.shape
    block_d, block_dv = head_block(d), value_block(d)
    stages = 1 if INTERPRETING else 3
    smem = stages * BLOCK_KEYS * (block_d + block_dv) * element_bytes(k.dtype)  # K and V tiles per stage
    grid = (b * kv_heads * triton.cdiv(d, block_dv) * key_splits(k)[0],)
    return LaunchConfig("linear_state_kernel", 1, BLOCK_KEYS, num_warps=4 if block_d * block_dv <= 64 * 64 else 8,
                        num_stages=stages, grid=grid, shared_mem_bytes=smem)


def output_tile(head_dim: int, dtype: torch.dtype) -> tuple[int, int]:
    """(rows, value columns) per output program. fp32 on a GPU halves both: exact (FMA) dots of 128 x 128
    spilled registers in an sm_90 build, 64 x 64 did not."""
    if dtype == torch.float32 and not INTERPRETING:
        return BLOCK_ROWS // 2, min(head_block(head_dim), VALUE_COLUMNS // 2)
    return BLOCK_ROWS, value_block(head_dim)


def output_config(q: torch.Tensor) -> LaunchConfig:
    b, heads, n, d = q.shape
    rows, block_dv = output_tile(d, q.dtype)
    block_d = head_block(d)
    grid = (triton.cdiv(n, rows) * triton.cdiv(d, block_dv) * b * heads,)
    smem = (rows * block_d + block_d * block_dv) * element_bytes(q.dtype)  # Q tile and state as operands
    warps = 4 if block_d * block_dv <= 64 * 64 and q.dtype != torch.float32 else 8
    return LaunchConfig("linear_output_kernel", rows, 1, num_warps=warps, num_stages=1, grid=grid,
                        shared_mem_bytes=smem)


def launch_configs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                   chunk_size: int | None = None) -> list[LaunchConfig]:
    """Every kernel linear_attention launches for these tensors, in order."""
    check_qkv(q, k, v, same_length=True)
    check_head_offsets(q, k)
    if causal:
        chunk = default_block(q.dtype) if chunk_size is None else chunk_size
        check_tile(chunk, "chunk_size")
        return [scan_config(q, chunk)]
    if chunk_size is not None:
        raise ValueError(f"chunk_size = {chunk_size} applies to causal=True only; pass chunk_size=None")
    return [state_config(k), output_config(q)]


def launch_state(k: torch.Tensor, v: torch.Tensor, config: LaunchConfig) -> torch.Tensor:
    """KV = K^T V per (batch, kv head): k, v [B, Hkv, N, D] -> [B, Hkv, D, D] fp32."""
    b, kv_heads, n, d = k.shape
    splits, per_split = key_splits(k)
    allocate = torch.zeros if splits > 1 else torch.empty  # atomics add into zeros
    kv = allocate(b, kv_heads, d, d, dtype=torch.float32, device=k.device)
    launch(linear_state_kernel, config, k, v, kv, n, d, triton.cdiv(d, value_block(d)), splits, per_split,
           launched=_recent, BLOCK_N=config.block_n, BLOCK_D=head_block(d), BLOCK_DV=value_block(d),
           ATOMIC=splits > 1, PRECISION=dot_precision(k.dtype))
    return kv


def launch_output(q: torch.Tensor, kv: torch.Tensor, out: torch.Tensor, config: LaunchConfig) -> torch.Tensor:
    """O = Q KV: q [B, Hq, N, D] contiguous, kv [B, Hkv, D, D] fp32, into out [B, Hq, N, D] (any layout)."""
    _, heads, n, d = q.shape
    block_dv = output_tile(d, q.dtype)[1]
    target = out if out.is_contiguous() else torch.empty_like(q)
    launch(linear_output_kernel, config, q, kv, target, n, d, heads, heads // kv.shape[1], triton.cdiv(d, block_dv),
           triton.cdiv(n, config.block_m), launched=_recent, BLOCK_M=config.block_m, BLOCK_D=head_block(d),
           BLOCK_DV=block_dv, PRECISION=dot_precision(q.dtype))
    if target is not out:
        out.copy_(target)
    return out


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                     chunk_size: int | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """o_i = sum_j (q_i . k_j) v_j over all keys, or keys j <= i when causal.

    q [B, Hq, N, D], k and v [B, Hkv, N, D] (q head h reads kv head h // (Hq / Hkv)); chunk_size: rows per chunk
    of the causal scan, a power of two >= 16 (causal only). Returns o [B, Hq, N, D] in q's dtype (written into
    `out` when given)."""
    configs = launch_configs(q, k, v, causal=causal, chunk_size=chunk_size)
    out = output_like(out, q)
    _recent.clear()
    if causal:
        launch_scan(q, k, v, out, None, configs[0])
        _recent.extend(recent_scan_launches())
        return out
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    return launch_output(q, launch_state(k, v, configs[0]), out, configs[1])
