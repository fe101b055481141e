"""Group-quantised KV cache and a decode kernel that reads it.

Quantisation (symmetric, per group along the head dim): the D elements of one key or value row are cut
into D / group_size contiguous groups; group g of a row has one scale s = max |x| / q_max over its
elements (q_max = 127 for 8 bits, 7 for 4 bits) and each element is stored as the integer code
round(x / s) in [-q_max, q_max], so that x ~ s * code with |x - s * code| <= s / 2. Scales are stored in
fp16 for fp16 inputs and fp32 otherwise (bf16 and fp32 values can exceed fp16's range), rounded up to
that dtype so that no code is clipped. 8-bit codes are int8, one per element; 4-bit codes are packed two
per byte along D: element 2j in the low nibble of byte j, element 2j + 1 in the high nibble.

quantized_decode is Flash-Decoding (kernels/flash_decoding.py) over such a cache: each split program
loads the codes and scales of a BLOCK_N-key tile, dequantises it on the CUDA cores into q's dtype and
runs the same tensor-core dots and online softmax; HBM traffic for K/V shrinks to 1 (or 1/2) byte per
element plus the scales.
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels import flash_decoding as fd
from kernels.checks import DTYPES, LOG2E, head_block
from kernels.flash_decoding import (_empty_rows, _online_softmax_step, _split_program, _split_range, _store_rows,
                                    _visible_scores)
from kernels.launch import LaunchConfig, element_bytes, launch

CODE_MAX = {8: 127, 4: 7}  # symmetric ranges: -q_max..q_max, so that -x quantises to -code
CODE_BYTES = {8: 1.0, 4: 0.5}


@dataclass(frozen=True)
class QuantizedKV:
    """A quantised K or V of logical shape [..., N, D].

    codes  [..., N, D] int8 (8 bits) or [..., N, D // 2] uint8 (4 bits, two per byte, low nibble first);
    scales [..., N, D // group_size] fp16 or fp32: element d of a row uses scales[..., d // group_size];
    dtype  the dtype the tensor had, which dequantize_kv returns by default."""

    codes: Tensor
    scales: Tensor
    bits: int
    group_size: int
    dtype: torch.dtype

    @property
    def head_dim(self) -> int:
        return self.scales.shape[-1] * self.group_size

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self.scales.shape[:-1], self.head_dim)

    @property
    def device(self) -> torch.device:
        return self.codes.device


def check_quantization(x: Tensor, bits: int, group_size: int) -> None:
    if x.dim() < 2 or x.dtype not in DTYPES:
        raise ValueError(f"x is {tuple(x.shape)} {x.dtype}; expected [..., N, D] in float16, bfloat16 or float32")
    if bits not in CODE_MAX:
        raise ValueError(f"bits = {bits}; expected 8 or 4")
    head_dim = x.shape[-1]
    if group_size < 1 or group_size & (group_size - 1) or head_dim % group_size:
        raise ValueError(f"group_size = {group_size}: expected a power of two that divides head dim {head_dim} "
                         f"(32, 64 or 128 for the usual head dims)")
    if bits == 4 and head_dim % 2:
        raise ValueError(f"head dim = {head_dim} is odd; 4-bit codes pack pairs along D, so it must be even")


def group_scales(x: Tensor, bits: int, group_size: int, scale_dtype: torch.dtype) -> Tensor:
    """[..., N, D] -> [..., N, D // group_size]: max |x| / q_max per group, rounded up to scale_dtype."""
    groups = x.to(torch.float64).unflatten(-1, (-1, group_size))
    exact = groups.abs().amax(dim=-1) / CODE_MAX[bits]
    stored = exact.to(scale_dtype)
    too_small = stored.to(torch.float64) < exact
    return torch.where(too_small, torch.nextafter(stored, torch.full_like(stored, float("inf"))), stored)


def pack_nibbles(codes: Tensor) -> Tensor:
    """int8 codes in [-8, 7], [..., D] -> uint8 [..., D // 2]: element 2j low nibble, 2j + 1 high nibble."""
    nibbles = (codes.to(torch.int16) & 0xF).to(torch.uint8)
    return nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)


def unpack_nibbles(packed: Tensor) -> Tensor:
    """uint8 [..., D // 2] -> int8 codes [..., D], the two's complement of each 4-bit nibble."""
    low, high = (packed & 0xF).to(torch.int16), (packed >> 4).to(torch.int16)
    codes = torch.stack((low, high), dim=-1).flatten(-2)
    return torch.where(codes >= 8, codes - 16, codes).to(torch.int8)


def quantize_kv(x: Tensor, bits: int = 8, group_size: int = 32, scale_dtype: torch.dtype | None = None) -> QuantizedKV:
    """Symmetric group quantisation of x [..., N, D] along D (module docstring). group_size must divide D
    (typically 32..128); scale_dtype defaults to fp16 for fp16 x, else fp32. The codes are computed in fp64
    so that |x - dequantize_kv(q)| <= scale / 2 holds per element."""
    check_quantization(x, bits, group_size)
    if scale_dtype is None:
        scale_dtype = torch.float16 if x.dtype == torch.float16 else torch.float32
    if scale_dtype not in (torch.float16, torch.float32):
        raise ValueError(f"scale_dtype = {scale_dtype}; expected torch.float16 or torch.float32")
    scales = group_scales(x, bits, group_size, scale_dtype)
    divisor = scales.to(torch.float64).repeat_interleave(group_size, dim=-1)
    ratio = torch.where(divisor > 0, x.to(torch.float64) / torch.where(divisor > 0, divisor, 1.0), 0.0)
    codes = ratio.round().clamp(-CODE_MAX[bits], CODE_MAX[bits]).to(torch.int8)
    return QuantizedKV(codes if bits == 8 else pack_nibbles(codes), scales, bits, group_size, x.dtype)


def dequantize_kv(kv: QuantizedKV, dtype: torch.dtype | None = None) -> Tensor:
    """codes x scales -> [..., N, D] in dtype (default: the quantised tensor's dtype); computed in fp32,
    or in fp64 when dtype is fp64."""
    dtype = kv.dtype if dtype is None else dtype
    work = torch.float64 if dtype == torch.float64 else torch.float32
    codes = kv.codes if kv.bits == 8 else unpack_nibbles(kv.codes)
    scales = kv.scales.to(work).repeat_interleave(kv.group_size, dim=-1)
    return (codes.to(work) * scales).to(dtype)


# ---- the decode kernel ------------------------------------------------------------------------------

@triton.jit
def _dequantized_tile(codes_ptr, scales_ptr, keys64, key_ok, tile_ok, dims,
                      stride_cn, stride_cd, stride_sn, stride_sg,
                      BITS: tl.constexpr, GROUP_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """[BLOCK_N, BLOCK_D] fp32 values code x scale of the keys keys64 (int64) of one head; 0 where masked.

    Each key's D / GROUP_SIZE scales are loaded once and broadcast over their groups (GROUP_SIZE a power of two,
    kernels.kv_quant.check_quantization). Gathering one scale per element instead took 16 scalar loads for every
    vectorised load of codes and held the int8 decode at 15% of the H100's copy bandwidth at 32K context (52%
    now: validation/results/h100/kernel-bench-decode-2026-11-22.txt)."""
    if BITS == 8:
        codes = tl.load(codes_ptr + keys64[:, None] * stride_cn + dims[None, :] * stride_cd,
                        mask=tile_ok, other=0).to(tl.float32)
    else:
        packed = tl.load(codes_ptr + keys64[:, None] * stride_cn + (dims // 2)[None, :] * stride_cd,
                         mask=tile_ok, other=0).to(tl.int32)
        nibble = (packed >> ((dims % 2) * 4)[None, :]) & 0xF
        codes = tl.where(nibble >= 8, nibble - 16, nibble).to(tl.float32)
    GROUPS: tl.constexpr = BLOCK_D // GROUP_SIZE
    groups = tl.arange(0, GROUPS)
    scales = tl.load(scales_ptr + keys64[:, None] * stride_sn + groups[None, :] * stride_sg,
                     mask=key_ok[:, None] & (groups * GROUP_SIZE < HEAD_DIM)[None, :], other=0.0).to(tl.float32)
    values = tl.reshape(codes, (codes.shape[0], GROUPS, GROUP_SIZE)) * scales[:, :, None]
    return tl.reshape(values, (codes.shape[0], BLOCK_D))


@triton.jit
def quant_decode_split(q_ptr, kc_ptr, ks_ptr, vc_ptr, vs_ptr, o_ptr, lse_ptr,
                       stride_qb, stride_qh, stride_qn, stride_qd,
                       stride_kcb, stride_kch, stride_kcn, stride_kcd,
                       stride_ksb, stride_ksh, stride_ksn, stride_ksg,
                       stride_vcb, stride_vch, stride_vcn, stride_vcd,
                       stride_vsb, stride_vsh, stride_vsn, stride_vsg,
                       stride_ob, stride_oh, stride_on, stride_os, stride_od,
                       stride_lb, stride_lh, stride_ln, stride_ls,
                       kv_heads, q_len, kv_len, keys_per_split, qk_scale_log2,
                       GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, K_BITS: tl.constexpr, K_GROUP: tl.constexpr,
                       V_BITS: tl.constexpr, V_GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr):
    """decode_split (kernels/flash_decoding.py) with K and V dequantised from codes and scales in the loop."""
    b, kv_head, split, q, head, query, row_ok = _split_program(q_ptr, kv_heads, q_len, stride_qb, stride_qh,
                                                               stride_qn, stride_qd, GROUP, HEAD_DIM, BLOCK_M,
                                                               BLOCK_D)
    last_key = query + kv_len - q_len
    b64, h64 = b.to(tl.int64), kv_head.to(tl.int64)
    kc_head = kc_ptr + b64 * stride_kcb + h64 * stride_kch
    ks_head = ks_ptr + b64 * stride_ksb + h64 * stride_ksh
    vc_head = vc_ptr + b64 * stride_vcb + h64 * stride_vch
    vs_head = vs_ptr + b64 * stride_vsb + h64 * stride_vsh
    dims = tl.arange(0, BLOCK_D)
    m, l, acc = _empty_rows(BLOCK_M, BLOCK_D)
    start, end = _split_range(split, kv_len, keys_per_split)
    for n0 in range(start, end, BLOCK_N):
        keys = n0 + tl.arange(0, BLOCK_N)
        key_ok = keys < end
        tile_ok = key_ok[:, None] & (dims[None, :] < HEAD_DIM)
        keys64 = keys.to(tl.int64)
        k = _dequantized_tile(kc_head, ks_head, keys64, key_ok, tile_ok, dims, stride_kcn, stride_kcd, stride_ksn,
                              stride_ksg, K_BITS, K_GROUP, HEAD_DIM, BLOCK_D).to(q.dtype)
        v = _dequantized_tile(vc_head, vs_head, keys64, key_ok, tile_ok, dims, stride_vcn, stride_vcd, stride_vsn,
                              stride_vsg, V_BITS, V_GROUP, HEAD_DIM, BLOCK_D).to(q.dtype)
        s = _visible_scores(q, k, keys, end, last_key, qk_scale_log2, CAUSAL, IEEE)
        m, l, acc = _online_softmax_step(s, v, m, l, acc, IEEE)
    _store_rows(o_ptr, lse_ptr, acc, m, l, b, head, query, split, row_ok,
                stride_ob, stride_oh, stride_on, stride_os, stride_od,
                stride_lb, stride_lh, stride_ln, stride_ls, HEAD_DIM, BLOCK_D)


def check_quantized_pair(q: Tensor, k: QuantizedKV, v: QuantizedKV, num_splits: int | None) -> None:
    for name, kv in (("k", k), ("v", v)):
        if not isinstance(kv, QuantizedKV):
            raise ValueError(f"{name} is a {type(kv).__name__}; expected a QuantizedKV from quantize_kv")
        if kv.codes.dim() != 4:
            raise ValueError(f"{name} has shape {kv.shape}; expected [B, Hkv, Nk, D]")
        code_cols = kv.head_dim if kv.bits == 8 else kv.head_dim // 2
        if kv.codes.shape != (*kv.shape[:3], code_cols) or kv.scales.device != kv.codes.device:
            raise ValueError(f"{name}.codes is {tuple(kv.codes.shape)} on {kv.codes.device}; expected "
                             f"{(*kv.shape[:3], code_cols)} for {kv.bits}-bit codes on the scales' device")
    if k.shape != v.shape or k.device != v.device:
        raise ValueError(f"k {k.shape} on {k.device} and v {v.shape} on {v.device}; expected one shape and device")
    fd.check_decode_inputs(q, k.shape, None, k.device, num_splits)


def launch_configs(q: Tensor, k: QuantizedKV, v: QuantizedKV, *, num_splits: int | None = None,
                   sm_count: int | None = None) -> list[LaunchConfig]:
    """The launches of quantized_decode, in order: quant_decode_split, then decode_combine when there is more
    than one split. Shared memory estimated from the code bytes of the pipelined K and V tiles."""
    check_quantized_pair(q, k, v, num_splits)
    batch, q_heads, q_len, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    code_bytes = (CODE_BYTES[k.bits] + CODE_BYTES[v.bits]) / 2
    group_rows = q_heads // kv_heads * q_len
    block_m, block_n = fd.row_block(group_rows), fd.key_block(head_dim, 2)  # registers hold 16-bit tiles
    row_blocks = triton.cdiv(group_rows, block_m)
    if num_splits is None:
        sm_count = fd.device_sm_count(q.device) if sm_count is None else sm_count
        num_splits = fd.choose_num_splits(batch, kv_heads, kv_len, sm_count, block_n=block_n, row_blocks=row_blocks)
    # the dequantised tiles live in fp32 registers: 8 warps (compiled for sm_90 at d = 128, BLOCK_N 64: 4-bit
    # codes need 255 registers and spill at 4 warps, 176 at 8; 8-bit 185 at 4 warps, 128 at 8)
    configs = [fd.split_config("quant_decode_split", (batch * kv_heads, row_blocks, num_splits), block_m, block_n,
                               head_dim, code_bytes, element_bytes(q.dtype), fd.split_warps(block_m, 4))]
    if num_splits > 1:
        configs.append(fd.combine_config(batch, q_heads, q_len, head_dim, num_splits))
    return configs


def quantized_decode(q: Tensor, k: QuantizedKV, v: QuantizedKV, *, num_splits: int | None = None,
                     scale: float | None = None, causal: bool = False, return_lse: bool = False,
                     out: Tensor | None = None, lse_out: Tensor | None = None, launched: list | None = None):
    """flash_decode over quantised K and V, dequantised inside the kernel into q's dtype.

    q [B, Hq, Nq, D] (fp16, bf16, fp32); k, v QuantizedKV of shape [B, Hkv, Nk, D] (any bits and group
    sizes, each its own). Equal to attention over dequantize_kv(k), dequantize_kv(v) in q's dtype.
    out [B, Hq, Nq, D], lse_out [B, Hq, Nq] fp32 may be preallocated. Returns O, or (O, LSE) with return_lse."""
    configs = launch_configs(q, k, v, num_splits=num_splits)
    out, lse = fd.decode_outputs(q, out, lse_out)
    if q.numel() == 0:
        return (out, lse) if return_lse else out
    split = configs[0]
    num_splits = split.grid[2]
    kv_len = k.shape[2]
    scale = q.shape[3] ** -0.5 if scale is None else scale
    o_target, lse_target, o_strides, lse_strides = fd.split_targets(out, lse, num_splits)
    launch(quant_decode_split, split, q, k.codes, k.scales, v.codes, v.scales, o_target, lse_target, *q.stride(),
           *k.codes.stride(), *k.scales.stride(), *v.codes.stride(), *v.scales.stride(), *o_strides, *lse_strides,
           k.shape[1], q.shape[2], kv_len, fd.keys_per_split(kv_len, num_splits, split.block_n), scale * LOG2E,
           launched=launched, GROUP=q.shape[1] // k.shape[1], HEAD_DIM=q.shape[3], K_BITS=k.bits,
           K_GROUP=k.group_size, V_BITS=v.bits, V_GROUP=v.group_size, BLOCK_M=split.block_m, BLOCK_N=split.block_n,
           BLOCK_D=head_block(q.shape[3]), CAUSAL=causal, IEEE=q.dtype == torch.float32)
    if num_splits > 1:
        fd.combine(configs[1], o_target, lse_target, out, lse, launched)
    return (out, lse) if return_lse else out
