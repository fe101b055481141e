"""Probe: why kernels.lightning's scan was wrong on the H100 at 64-row blocks with 32 value columns per program.

The recorded case of tests/test_kernel_lightning.py::test_recorded_h100_bf16_case (q [1, 4, 12, 40], k, v
[1, 2, 12, 40], decay [5, .01, 5, 5]) failed on the H100 at the default block of 64 rows and passed at 16, when
the kernel took 32 value columns per program. This script runs the shipped kernel and copies of it (32 value
columns, the layout that failed, unless a variant says otherwise) that each change ONE thing, for fp16 and bf16 at block 64 and
16 (the control), and prints one line per run: variant, dtype, block, max |error| against the float64
reference, the test's error ratio (<= 1 passes), whether two runs gave the same bits, and where the bad
elements lie (head: rows, cols, count, max error per row) with the wrong model that fits each bad head best.
With the state zero, an error that falls off down the rows as Lambda = exp(-s i) (rates 5: row 0 only) comes
from the state product; one spread over every row of a head, from the intra-block product.

    python3 validation/lightning_probe.py                       # on the GPU: all runs, 4 worker processes
    TRITON_INTERPRET=1 python3 validation/lightning_probe.py    # on a CPU: fp16 and fp32 (no bf16 there)

Its output on the H100 is validation/results/h100/lightning-probe-2026-11-22.txt (the shipped kernel had 32
columns then): only the copies that dropped the state update, ran the products in fp32, took 64 value columns
(dv64) or mma.sync (mma_v2) were right. kernels/lightning.py now takes 64 value columns.

Runs go to worker processes (a variant that faults cannot take the CUDA context of the others down, and
compiles run side by side); the variant mma_v2 runs in its own worker with DISABLE_MMA_V3=1 (Triton's switch
back to Ampere-style mma.sync). Block-64 runs go first; block-16 controls are skipped once the time budget
(PROBE_BUDGET_S, default 100 s) is spent. With $OUT (or PROBE_ASM_DIR) set, the TTGIR and PTX of the copy at
block 64 are written there.
"""

import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton.jit runs and before kernels.launch reads it

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from kernel_checks import DEVICE, FLOOR, error_ratio, expand_kv, linear_inputs, poisoned  # noqa: E402
from kernels import reference  # noqa: E402
from kernels.checks import head_block  # noqa: E402
from kernels.lightning import lightning_attention  # noqa: E402

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
FAILED_VALUE_COLUMNS = 32  # value columns per program of the kernel that failed
BUDGET_S = float(os.environ.get("PROBE_BUDGET_S", "100"))
WORKER_TIMEOUT_S = BUDGET_S + 15.0

# The recorded case (tests/test_kernel_lightning.py::test_recorded_h100_bf16_case).
CASE = dict(batch=1, q_heads=4, kv_heads=2, n=12, d=40, magnitude=0.1, seed=6107044)
RATES = [5.0, 0.01, 5.0, 5.0]
BLOCKS = (64, 16)  # 64: the failing default; 16: the control that passes
DTYPES = ("float16", "float32") if INTERPRETING else ("float16", "bfloat16")  # interpreter: no bf16 (DESIGN.md)


# ---- the kernel copy: the shipped scan with one switch per suspect ----------------------------------------------

@triton.jit
def _times_state(x, state, SPLIT_STATE: tl.constexpr, PRECISION: tl.constexpr, ONE_DOT_STATE: tl.constexpr):
    """As kernels.lightning._times_state; ONE_DOT_STATE: one dot on the state rounded to x's dtype (no hi/lo)."""
    if SPLIT_STATE:
        if ONE_DOT_STATE:
            out = tl.dot(x, state.to(x.dtype), input_precision=PRECISION)
        else:
            hi = state.to(x.dtype)
            lo = (state - hi.to(tl.float32)).to(x.dtype)
            out = tl.dot(x, hi, input_precision=PRECISION)
            out = tl.dot(x, lo, acc=out, input_precision=PRECISION)
    else:
        out = tl.dot(x, state, input_precision=PRECISION)
    return out


@triton.jit
def _intra_weights(offs, rate, DECAY: tl.constexpr):
    """M [BLOCK, BLOCK] from positions inside a block, as the shipped kernel builds it."""
    if DECAY:
        i = offs.to(tl.float32)
        gap = i[:, None] - i[None, :]
        w = tl.where(gap >= 0, tl.exp(-rate * tl.maximum(gap, 0.0)), 0.0)
    else:
        w = tl.where(offs[:, None] >= offs[None, :], 1.0, 0.0)
    return w


@triton.jit
def probe_scan_kernel(Q, K, V, O, RATES, WEIGHTS_M, WEIGHTS_L, STATE0, n_rows, head_dim, q_heads, group, splits,
                      BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                      DECAY: tl.constexpr, SPLIT_STATE: tl.constexpr, PRECISION: tl.constexpr,
                      NO_CHAIN: tl.constexpr, NO_STATE: tl.constexpr, NO_UPDATE: tl.constexpr,
                      ONE_DOT_STATE: tl.constexpr, FP32_PV: tl.constexpr, FP32_QK: tl.constexpr,
                      KT_LOAD: tl.constexpr, WEIGHTS: tl.constexpr, PV_PRECISION: tl.constexpr,
                      INTER_ONLY: tl.constexpr, STATE_LOAD: tl.constexpr):
    """kernels.lightning.lightning_scan_kernel with every switch off. WEIGHTS: 0 M built before the loop
    (shipped), 1 built inside the loop, 2 tl.where applied to the scores, 3 M and Lambda loaded from
    WEIGHTS_M [Hq, BLOCK, BLOCK] and WEIGHTS_L [Hq, BLOCK] (built on the host). INTER_ONLY: store only the
    state product Lambda Q KV_t (zero here). STATE_LOAD: the state starts from STATE0 [BLOCK_D, BLOCK_DV] (zeros
    in memory) instead of tl.zeros."""
    pid = tl.program_id(0)
    split = pid % splits
    bh = pid // splits
    head = bh % q_heads
    kv_bh = (bh // q_heads) * (q_heads // group) + head // group
    q_base = bh.to(tl.int64) * n_rows * head_dim
    kv_base = kv_bh.to(tl.int64) * n_rows * head_dim

    offs = tl.arange(0, BLOCK)
    dims = tl.arange(0, BLOCK_D)
    cols = split * BLOCK_DV + tl.arange(0, BLOCK_DV)
    dim_ok = dims < head_dim
    col_ok = cols < head_dim

    rate = 0.0
    if DECAY:
        rate = tl.load(RATES + head)
        i = offs.to(tl.float32)
        if WEIGHTS == 3:
            inter_w = tl.load(WEIGHTS_L + head * BLOCK + offs)
        else:
            inter_w = tl.exp(-rate * i)
        key_w = tl.exp(-rate * (BLOCK - i))
        block_w = tl.exp(-rate * BLOCK)
    if WEIGHTS == 0:
        intra_w = _intra_weights(offs, rate, DECAY)
    if WEIGHTS == 3:
        intra_w = tl.load(WEIGHTS_M + head * BLOCK * BLOCK + offs[:, None] * BLOCK + offs[None, :])

    if STATE_LOAD:
        state = tl.load(STATE0 + dims[:, None] * BLOCK_DV + tl.arange(0, BLOCK_DV)[None, :])
    else:
        state = tl.zeros([BLOCK_D, BLOCK_DV], dtype=tl.float32)
    for start in range(0, n_rows, BLOCK):
        rows = start + offs
        row_ok = rows < n_rows
        qk_at = rows[:, None] * head_dim + dims[None, :]
        qk_ok = row_ok[:, None] & dim_ok[None, :]
        v_at = rows[:, None] * head_dim + cols[None, :]
        v_ok = row_ok[:, None] & col_ok[None, :]
        q = tl.load(Q + q_base + qk_at, mask=qk_ok, other=0.0)
        k = tl.load(K + kv_base + qk_at, mask=qk_ok, other=0.0)
        v = tl.load(V + kv_base + v_at, mask=v_ok, other=0.0)

        if KT_LOAD:  # k^T read from memory transposed instead of tl.trans of the loaded tile
            kt = tl.load(K + kv_base + rows[None, :] * head_dim + dims[:, None],
                         mask=row_ok[None, :] & dim_ok[:, None], other=0.0)
        else:
            kt = tl.trans(k)
        if FP32_QK:
            raw = tl.dot(q.to(tl.float32), kt.to(tl.float32), input_precision="ieee")
        else:
            raw = tl.dot(q, kt, input_precision=PRECISION)
        if WEIGHTS == 1:
            scores = raw * _intra_weights(offs, rate, DECAY)
        elif WEIGHTS == 2:
            if DECAY:
                gap = offs.to(tl.float32)[:, None] - offs.to(tl.float32)[None, :]
                scores = tl.where(gap >= 0, raw * tl.exp(-rate * tl.maximum(gap, 0.0)), 0.0)
            else:
                scores = tl.where(offs[:, None] >= offs[None, :], raw, 0.0)
        else:
            scores = raw * intra_w

        if FP32_PV:  # PV_PRECISION is then "ieee"
            p = scores
            vv = v.to(tl.float32)
        else:
            p = scores.to(v.dtype)
            vv = v

        if INTER_ONLY:
            out = _times_state(q, state, SPLIT_STATE, PRECISION, ONE_DOT_STATE)
            if DECAY:
                out = out * inter_w[:, None]
        elif NO_STATE:  # valid while the state is zero (one block)
            out = tl.dot(p, vv, input_precision=PV_PRECISION)
        elif NO_CHAIN:
            inter = _times_state(q, state, SPLIT_STATE, PRECISION, ONE_DOT_STATE)
            if DECAY:
                inter = inter * inter_w[:, None]
            out = inter + tl.dot(p, vv, input_precision=PV_PRECISION)
        else:
            out = _times_state(q, state, SPLIT_STATE, PRECISION, ONE_DOT_STATE)
            if DECAY:
                out = out * inter_w[:, None]
            out = tl.dot(p, vv, acc=out, input_precision=PV_PRECISION)
        tl.store(O + q_base + v_at, out.to(O.dtype.element_ty), mask=v_ok)

        if not NO_UPDATE:
            if DECAY:
                k_decayed = (k.to(tl.float32) * key_w[:, None]).to(k.dtype)
                state = state * block_w + tl.dot(tl.trans(k_decayed), v, input_precision=PRECISION)
            else:
                state = tl.dot(tl.trans(k), v, acc=state, input_precision=PRECISION)


# ---- variants -------------------------------------------------------------------------------------------------

SWITCHES = dict(NO_CHAIN=False, NO_STATE=False, NO_UPDATE=False, ONE_DOT_STATE=False, FP32_PV=False,
                FP32_QK=False, KT_LOAD=False, WEIGHTS=0, INTER_ONLY=False, STATE_LOAD=False)

# name -> (what it changes, kernel switches, host options). Host options: warps, stages, dv (value columns per
# program), pad ("n", "d", "nd": zero-pad rows to the block / columns to 64 so no mask is partial), expand
# (k, v repeated to q heads, no GQA mapping), decay (False: no decay, reference without), fp32_inputs, fp_fusion.
VARIANTS = {
    "shipped": ("kernels.lightning.lightning_attention as in the repo", {}, {"shipped": True}),
    "copy": ("this script's copy, no change (must match shipped)", {}, {}),
    "no_chain": ("(b) state product and intra product as separate dots, added", {"NO_CHAIN": True}, {}),
    "no_state": ("(c) no state product at all (state is zero here)", {"NO_STATE": True}, {}),
    "inter_only": ("store only the state product (must be 0: the state is zero)", {"INTER_ONLY": True},
                   {"ref": "zero"}),
    "state_loaded": ("state starts from zeros loaded from memory, not tl.zeros", {"STATE_LOAD": True}, {}),
    "no_update": ("state update after the store removed", {"NO_UPDATE": True}, {}),
    "one_dot_state": ("(d) one dot on the state in x's dtype, no hi/lo", {"ONE_DOT_STATE": True}, {}),
    "fp32_pv": ("(e) scores fp32, v -> fp32, P.V dot ieee", {"FP32_PV": True}, {}),
    "fp32_qk": ("q, k -> fp32, Q.K^T dot ieee", {"FP32_QK": True}, {}),
    "fp32_inputs": ("q, k, v fp32 into the fp32 kernel path (no tensor cores)", {}, {"fp32_inputs": True}),
    "kt_load": ("k^T loaded transposed, no tl.trans", {"KT_LOAD": True}, {}),
    "w_in_loop": ("M built inside the loop, not hoisted", {"WEIGHTS": 1}, {}),
    "w_where": ("tl.where on the scores instead of * M", {"WEIGHTS": 2}, {}),
    "w_memory": ("M and Lambda loaded from host-built tensors", {"WEIGHTS": 3}, {}),
    "warps8": ("(f) num_warps 8", {}, {"warps": 8}),
    "stages1": ("num_stages 1", {}, {"stages": 1}),
    "dv64": ("(g) BLOCK_DV 64: one value split", {}, {"dv": 64}),
    "pad_nd": ("inputs zero-padded to N=block, d=64: no partial mask", {}, {"pad": "nd"}),
    "pad_d": ("inputs zero-padded to d=64 only", {}, {"pad": "d"}),
    "pad_n": ("inputs zero-padded to N=block only", {}, {"pad": "n"}),
    "gqa_expanded": ("k, v expanded to 4 heads on the host: group 1", {}, {"expand": True}),
    "nodecay": ("no decay (reference without decay too)", {}, {"decay": False}),
    "no_fp_fusion": ("enable_fp_fusion=False", {}, {"fp_fusion": False}),
    "mma_v2": ("DISABLE_MMA_V3=1: mma.sync instead of wgmma", {},
               {"env": {"DISABLE_MMA_V3": "1", "TRITON_ALWAYS_COMPILE": "1"}}),
}


def jobs() -> list[tuple[int, str, str, int]]:
    """(order, variant, dtype, block): every block-64 run first, then the block-16 controls."""
    out = []
    for block in BLOCKS:
        for name in VARIANTS:
            for dtype in DTYPES:
                out.append((len(out), name, dtype, block))
    return out


# ---- one run ----------------------------------------------------------------------------------------------------

def case_inputs(dtype: torch.dtype):
    q, k, v = linear_inputs(CASE["batch"], CASE["q_heads"], CASE["kv_heads"], CASE["n"], CASE["d"], dtype,
                            CASE["magnitude"], seed=CASE["seed"])
    return q, k, v, torch.tensor(RATES, device=DEVICE)


def reference_pair(q, k, v, decay, dtype):
    """(float64 reference, same math in dtype), k and v expanded to q's heads (as the test's reference_pair)."""
    k, v = expand_kv(k, q.shape[1]), expand_kv(v, q.shape[1])
    return (reference.linear_attention(q, k, v, causal=True, decay=decay),
            reference.linear_attention(q, k, v, causal=True, decay=decay, dtype=dtype))


def host_weights(rates: torch.Tensor, block: int):
    """M [Hq, block, block] and Lambda [Hq, block] in fp32, from float64 on the host."""
    i = torch.arange(block, dtype=torch.float64)
    gap = i[:, None] - i[None, :]
    s = rates.detach().to("cpu", torch.float64).view(-1, 1, 1)
    m = torch.where(gap >= 0, torch.exp(-s * gap.clamp(min=0)), torch.zeros(()))
    lam = torch.exp(-s.view(-1, 1) * i)
    return m.to(DEVICE, torch.float32).contiguous(), lam.to(DEVICE, torch.float32).contiguous()


def pad_to(x: torch.Tensor, n: int, d: int) -> torch.Tensor:
    out = torch.zeros(*x.shape[:2], n, d, dtype=x.dtype, device=x.device)
    out[:, :, :x.shape[2], :x.shape[3]] = x
    return out


def run_copy(q, k, v, rates, block, switches, opts):
    """Launch probe_scan_kernel on the case; returns (out [B, Hq, N, D], compiled kernel or None)."""
    n, d = q.shape[2], q.shape[3]
    if opts.get("expand"):
        k, v = expand_kv(k, q.shape[1]).contiguous(), expand_kv(v, q.shape[1]).contiguous()
    pad = opts.get("pad", "")
    pn = max(n, block) if "n" in pad else n
    pd = head_block(d) if "d" in pad else d
    if pad:
        q, k, v = (pad_to(x, pn, pd) for x in (q, k, v))
    out = poisoned(q.shape, q.dtype)
    heads = q.shape[1]
    dv = opts.get("dv", min(head_block(pd), FAILED_VALUE_COLUMNS))
    splits = triton.cdiv(pd, dv)
    wm, wl = host_weights(rates if rates is not None else torch.zeros(heads), block)
    fp32 = q.dtype == torch.float32
    kernel_switches = {**SWITCHES, **switches}
    launch_opts = {}
    if "fp_fusion" in opts:
        launch_opts["enable_fp_fusion"] = opts["fp_fusion"]
    state0 = torch.zeros(head_block(pd), dv, dtype=torch.float32, device=q.device)
    compiled = probe_scan_kernel[(q.shape[0] * heads * splits,)](
        q, k, v, out, rates if rates is not None else wl, wm, wl, state0, pn, pd, heads, heads // k.shape[1], splits,
        BLOCK=block, BLOCK_D=head_block(pd), BLOCK_DV=dv, DECAY=rates is not None, SPLIT_STATE=not fp32,
        PRECISION="ieee" if fp32 else "tf32", **kernel_switches,
        PV_PRECISION="ieee" if fp32 or kernel_switches["FP32_PV"] else "tf32",
        num_warps=opts.get("warps", 4), num_stages=opts.get("stages", 2), **launch_opts)
    return out[:, :, :n, :d], compiled


def run_variant(name: str, dtype: torch.dtype, block: int):
    """(kernel output, float64 reference, same-dtype peer, compiled or None) for one variant."""
    _, switches, opts = VARIANTS[name]
    q, k, v, rates = case_inputs(dtype)
    decay = rates if opts.get("decay", True) else None
    ref, peer = reference_pair(q, k, v, decay, dtype)
    if opts.get("ref") == "zero":
        ref, peer = torch.zeros_like(ref), torch.zeros_like(peer)
    if opts.get("shipped"):
        out = lightning_attention(q, k, v, decay=decay, block_size=block, out=poisoned(q.shape, dtype))
        return out, ref, peer, None
    if opts.get("fp32_inputs"):
        out, compiled = run_copy(q.float(), k.float(), v.float(), decay, block, switches, opts)
        return out.to(dtype), ref, peer, compiled
    out, compiled = run_copy(q, k, v, decay, block, switches, opts)
    return out, ref, peer, compiled


# ---- what is wrong where ----------------------------------------------------------------------------------------

def ranges(values) -> str:
    """Sorted ints as compact ranges: [0, 1, 2, 5] -> '0-2,5'."""
    values = sorted(set(values))
    parts, start = [], None
    for i, x in enumerate(values):
        if start is None:
            start = x
        if i + 1 == len(values) or values[i + 1] != x + 1:
            parts.append(f"{start}" if start == x else f"{start}-{x}")
            start = None
    return ",".join(parts)


def wrong_models(q, k, v, rates) -> dict[str, torch.Tensor]:
    """Float64 outputs of plausible miscomputations, to name what a wrong head computed."""
    q64, k64, v64 = (x.detach().to("cpu", torch.float64) for x in (q, k, v))
    heads, n = q64.shape[1], q64.shape[2]
    k_ex, v_ex = expand_kv(k64, heads), expand_kv(v64, heads)
    i = torch.arange(n, dtype=torch.float64)
    gap = i[:, None] - i[None, :]
    s = rates.detach().to("cpu", torch.float64).view(-1, 1, 1)
    decayed = torch.exp(-s * gap.clamp(min=0))

    def attend(w, kk=k_ex, vv=v_ex):
        return ((q64 @ kk.transpose(-1, -2)) * w) @ vv

    causal = (gap >= 0).to(torch.float64)
    interleaved = [h % k64.shape[1] for h in range(heads)]  # q head h on kv head h % Hkv instead of h // group
    return {
        "correct": attend(decayed * causal),
        "mask lost (w=exp(-s*max(i-j,0)) everywhere)": attend(decayed),
        "weights transposed": attend((decayed * causal).transpose(-1, -2)),
        "no weights (w=1)": attend(torch.ones_like(decayed)),
        "causal, no decay": attend(causal.expand_as(decayed)),
        "diagonal only": attend(torch.eye(n, dtype=torch.float64).expand_as(decayed)),
        "kv head h % Hkv": attend(decayed * causal, k64[:, interleaved], v64[:, interleaved]),
        "zero": torch.zeros_like(q64),
    }


def where_bad(out, ref, peer, dtype, models) -> str:
    """Bad elements (error above the test's tolerance) per head as rows/cols ranges, and the best-fitting model."""
    out64, ref64, peer64 = (x.detach().to("cpu", torch.float64) for x in (out, ref, peer))
    scale = ref64.abs().max().item()
    tol = 2.0 * (peer64 - ref64).abs().max().item() + FLOOR.get(dtype, 1e-2) * max(scale, 1.0)
    err = (out64 - ref64).abs()
    bad = (err > tol) | torch.isnan(out64)
    parts = []
    for h in range(out64.shape[1]):
        idx = bad[0, h].nonzero()
        if len(idx) == 0:
            continue
        fit = ""
        if models:
            gaps = {m: (out64[0, h] - o[0, h]).abs().nan_to_num(float("inf")).max().item() for m, o in models.items()}
            best = min(gaps, key=gaps.get)
            verb = "fits" if gaps[best] <= tol else "closest (none fits)"
            fit = f" {verb} '{best}' ({gaps[best]:.1e})"
        row_err = ",".join(f"{e:.0e}" for e in err[0, h].nan_to_num(float("inf")).amax(dim=1).tolist())
        parts.append(f"h{h}: r{ranges(idx[:, 0].tolist())} c{ranges(idx[:, 1].tolist())} n={len(idx)}{fit} "
                     f"row max err [{row_err}]")
    return "; ".join(parts) if parts else "none bad"


def asm_summary(compiled, tag: str) -> str:
    """Which MMA the compiled kernel uses; writes its TTGIR and PTX where $OUT / PROBE_ASM_DIR points."""
    asm = getattr(compiled, "asm", None)
    if not asm:
        return ""
    ptx = asm.get("ptx", "")
    counts = {key: ptx.count(key) for key in ("wgmma.mma_async", "wgmma.wait_group", "mma.sync", "ldmatrix",
                                              "bar.sync")}
    folder = os.environ.get("PROBE_ASM_DIR") or os.environ.get("OUT")
    if folder:
        for kind in ("ttgir", "ptx"):
            if kind in asm:
                Path(folder, f"lightning_probe_{tag}.{kind}").write_text(str(asm[kind]))
    shared = getattr(getattr(compiled, "metadata", None), "shared", "?")
    return " ptx[" + " ".join(f"{k}={v}" for k, v in counts.items()) + f" smem={shared}]"


def one_run(order: int, name: str, dtype_name: str, block: int) -> dict:
    dtype = getattr(torch, dtype_name)
    start = time.time()
    try:
        out, ref, peer, compiled = run_variant(name, dtype, block)
        again, _, _, _ = run_variant(name, dtype, block)
        same_bits = torch.equal(torch.nan_to_num(out, 7.0), torch.nan_to_num(again, 7.0))
        err = (out.detach().to("cpu", torch.float64) - ref).abs().nan_to_num(float("inf")).max().item()
        ratio = error_ratio(out, ref, peer, dtype)
        q, k, v, rates = case_inputs(dtype)
        opts = VARIANTS[name][2]
        models = wrong_models(q, k, v, rates) if ratio > 1 and opts.get("decay", True) and "ref" not in opts else {}
        tag = f"{name}_{dtype_name}_{block}"
        asm = asm_summary(compiled, tag) if name in ("copy", "mma_v2") and block == 64 else ""
        line = (f"{name:14s} {dtype_name:8s} B{block:<3d} err {err:9.3e} ratio {ratio:7.2f} "
                f"{'PASS' if ratio <= 1 else 'FAIL'} {'det' if same_bits else 'NONDET'} | "
                f"{where_bad(out, ref, peer, dtype, models)}{asm}")
    except Exception as exc:  # one variant failing to compile must not stop the others
        last = traceback.format_exception_only(type(exc), exc)[-1].strip().replace("\n", " ")
        line = f"{name:14s} {dtype_name:8s} B{block:<3d} ERROR {last[:300]}"
    return {"order": order, "line": line + f"  [{time.time() - start:.1f}s]"}


# ---- workers ----------------------------------------------------------------------------------------------------

def worker(orders: list[int], deadline: float) -> None:
    """Run the listed jobs in order, one JSON line each; block-16 controls stop at the deadline."""
    table = {job[0]: job for job in jobs()}
    for order in orders:
        _, name, dtype_name, block = table[order]
        if block != 64 and time.time() > deadline:
            print(json.dumps({"order": order, "line": f"{name:14s} {dtype_name:8s} B{block:<3d} skipped "
                                                      f"(time budget)"}), flush=True)
            continue
        print(json.dumps(one_run(order, name, dtype_name, block)), flush=True)


def header() -> str:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (TRITON_INTERPRET=1)"
    return (f"torch {torch.__version__}, triton {triton.__version__}, python {sys.version.split()[0]}, "
            f"device {device}, interpreter {INTERPRETING}\n"
            f"case: q [1,4,12,40], k/v [1,2,12,40], rates {RATES}, dtypes {DTYPES}, blocks {BLOCKS}")


def plan(workers: int) -> list[tuple[dict, list[int]]]:
    """(extra environment, job orders) per worker: variants with their own environment apart, the rest dealt
    round-robin so each worker gets block-64 runs first."""
    groups: dict[str, list[int]] = {}
    shared = []
    for order, name, _, _ in jobs():
        env = VARIANTS[name][2].get("env")
        if env:
            groups.setdefault(name, []).append(order)
        else:
            shared.append(order)
    out = [({}, shared[i::workers]) for i in range(workers)]
    out += [(VARIANTS[name][2]["env"], orders) for name, orders in groups.items()]
    return [(env, orders) for env, orders in out if orders]


def main() -> None:
    print(header(), flush=True)
    for name, (what, _, _) in VARIANTS.items():
        print(f"  {name:14s} {what}")
    workers = int(os.environ.get("PROBE_WORKERS", "1" if INTERPRETING else "4"))
    deadline = time.time() + BUDGET_S
    procs = []
    for env, orders in plan(workers):
        cmd = [sys.executable, __file__, "--worker", ",".join(map(str, orders)), str(deadline)]
        procs.append((orders, subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.PIPE,
                                               stderr=subprocess.PIPE, text=True)))
    results = {}
    for orders, proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=max(1.0, deadline + 15.0 - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        for raw in stdout.splitlines():
            if raw.startswith("{"):
                item = json.loads(raw)
                results[item["order"]] = item["line"]
        missing = [o for o in orders if o not in results]
        if missing:
            tail = " | ".join(stderr.strip().splitlines()[-3:])
            for order in missing:
                results[order] = f"{jobs()[order][1]:14s} {jobs()[order][2]:8s} B{jobs()[order][3]:<3d} NO RESULT " \
                                 f"(worker rc {proc.returncode}: {tail[:300]})"
    for order in sorted(results):
        print(results[order])


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "--worker":
        worker([int(x) for x in sys.argv[2].split(",")], float(sys.argv[3]))
    else:
        main()
