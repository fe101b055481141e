"""Measure on a real NVIDIA GPU the achievable ceilings that memsim's roofline divides by.

Run from the repository root on the GPU machine:

    python3 validation/microbench.py --out DIR

and it writes DIR/calibration.json and prints a short table. This file imports only the
standard library, numpy, torch and triton (the GPU machine has no memsim, no simpy), and its
Triton kernels use plain pointer arithmetic with masks so they build on triton 3.6 and newer.

Each measurement is one small function returning one record: the median of several timed
repeats ("value", unit in the key), the smallest and largest repeat ("spread"), and a line
saying how it was measured ("method"). A measurement that raises is recorded as its error
string and the run goes on. Timing uses CUDA events around the timed region, after warm-up.

The card is measured as found: the only outside command run is
`nvidia-smi --query-gpu=driver_version --format=csv,noheader`, which reads and changes nothing.
"""

import argparse
import datetime
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
import time

import numpy as np
import torch
import triton
import triton.language as tl

GIB = 1 << 30
MIB = 1 << 20

HBM_COPY_BYTES = 4 * GIB  # one tensor; the copy reads it and writes as many bytes
HBM_READ_BYTES = 4 * GIB  # far beyond any L2 (50 MiB on H100 SXM, DESIGN.md)
L2_BUFFER_BYTES = 8 * MIB  # well under the 50 MiB L2, so re-reads hit in L2
CHASE_HBM_BYTES = 1 * GIB  # 20x the L2: every hop misses L2
CHASE_HBM_SMALL_BYTES = 256 * MIB  # still 5x the L2, fewer pages: the gap to 1 GiB shows TLB misses
CHASE_L2_BYTES = 4 * MIB  # fits in L2 after one warm lap
CHASE_STRIDE_BYTES = 128  # one L2 line between hops, so no two hops share a line
MATMUL_SIZE = 8192  # M = N = K
FLUSH_L2_MULTIPLE = 4  # writing 4x the L2 evicts all it held
LAUNCHES_PER_REPEAT = 1000

# Limits of one SM when the device properties do not give them:
# CUDA C++ Programming Guide, Technical Specifications, compute capability 9.0.
DEFAULT_REGS_PER_SM = 65536
DEFAULT_THREADS_PER_SM = 2048
MAX_PROGRAMS_PER_SM = 32
REG_ALLOC_UNIT_PER_WARP = 256  # registers are given to a warp in blocks of 256 (8 per thread)

DRIVER_QUERY = ("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader")


# ---------------------------------------------------------------------------------------------
# Pure helpers: accounting, summaries, the random cycle. No GPU needed; tests call these.
# ---------------------------------------------------------------------------------------------


def copy_bytes(tensor_bytes: int) -> int:
    """A device-to-device copy reads the tensor once and writes it once."""
    return 2 * tensor_bytes


def matmul_flops(m: int, n: int, k: int) -> int:
    """C[m, n] = A[m, k] @ B[k, n]: one multiply and one add per (m, n, k)."""
    return 2 * m * n * k


def reread_bytes(n_programs: int, n_steps: int, unroll: int, block: int, element_bytes: int) -> int:
    """Bytes the L2 kernel delivers to the SMs: each program loads one block per step and unroll."""
    return n_programs * n_steps * unroll * block * element_bytes


def chain_ops(n_programs: int, n_steps: int, unroll: int, block: int) -> int:
    """Operations of a chain kernel: each of a program's block elements goes through n_steps x unroll ops."""
    return n_programs * n_steps * unroll * block


def fma_flops(n_fma: int) -> int:
    """An FMA counts two FLOPs (a multiply and an add), as datasheets count it."""
    return 2 * n_fma


def rates(work: float, times_s: list[float]) -> list[float]:
    """Work per second for each timed repeat."""
    return [work / t for t in times_s]


def per_item_s(times_s: list[float], n_items: int) -> list[float]:
    """Seconds per item (hop, launch) for each timed repeat."""
    return [t / n_items for t in times_s]


def build_record(values: list[float], method: str, **extra) -> dict:
    """One measurement: the median of its repeats, their min and max, and how it was taken."""
    if not values:
        raise ValueError("build_record: values is empty; pass at least one timed repeat")
    record = {
        "value": statistics.median(values),
        "spread": {"min": min(values), "max": max(values)},
        "repeats": len(values),
        "method": method,
    }
    record.update(extra)
    return record


def error_record(exc: BaseException) -> dict:
    """What a failed measurement leaves in the JSON: its error on one line."""
    text = f"{type(exc).__name__}: {exc}"
    return {"error": " ".join(text.split())}


def random_cycle_order(n_slots: int, rng: np.random.Generator) -> np.ndarray:
    """A random order of all slots, int64: the chase visits order[0], order[1], ... and wraps."""
    if n_slots < 2:
        raise ValueError(f"random_cycle_order: n_slots is {n_slots}; a chase needs at least 2 slots")
    return rng.permutation(n_slots).astype(np.int64)


def next_slot_table(order: np.ndarray) -> np.ndarray:
    """next[s] = the slot visited after s; following it from any slot visits every slot once per lap."""
    nxt = np.empty_like(order)
    nxt[order] = np.roll(order, -1)
    return nxt


def walk_end_slot(order: np.ndarray, start_slot: int, hops: int) -> int:
    """Where a chase that starts at start_slot stands after `hops` hops (O(1) given the order)."""
    position = int(np.flatnonzero(order == start_slot)[0])
    return int(order[(position + hops) % len(order)])


def cycle_length(nxt: np.ndarray, start_slot: int = 0) -> int:
    """Hops to return to start_slot by following nxt (equals len(nxt) exactly when nxt is one cycle)."""
    slot, hops = int(nxt[start_slot]), 1
    while slot != start_slot and hops <= len(nxt):
        slot, hops = int(nxt[slot]), hops + 1
    return hops


def chase_elements(order: np.ndarray, stride_elems: int) -> np.ndarray:
    """The chase buffer as a [n_slots, stride_elems] int64 array: column 0 of slot s holds the
    element index (not the slot) of the next slot; the other columns pad hops apart and hold 0."""
    table = np.zeros((len(order), stride_elems), dtype=np.int64)
    table[:, 0] = next_slot_table(order) * stride_elems
    return table


def resident_programs_per_sm(n_regs: int, num_warps: int, regs_per_sm: int, threads_per_sm: int) -> int:
    """How many programs (CTAs) of a kernel fit on one SM at once, by registers and threads.

    Register allocation is per warp in units of 256 (CUDA Occupancy Calculator, cc 9.0)."""
    threads = num_warps * 32
    regs_per_warp = math.ceil(max(n_regs, 1) * 32 / REG_ALLOC_UNIT_PER_WARP) * REG_ALLOC_UNIT_PER_WARP
    by_regs = (regs_per_sm // regs_per_warp) // num_warps
    by_threads = threads_per_sm // threads
    return max(1, min(by_regs, by_threads, MAX_PROGRAMS_PER_SM))


def human(key: str, value: float) -> str:
    """A value in the unit a person reads it in, chosen by the unit at the end of its key."""
    if key.endswith("_bytes_per_s"):
        return f"{value / 1e12:.3f} TB/s"
    if key.endswith("_flops_per_s"):
        return f"{value / 1e12:.1f} TFLOP/s"
    if key.endswith("_per_s"):
        return f"{value / 1e12:.3f} T/s"
    if key.endswith("_s"):
        return f"{value * 1e6:.3f} us" if value >= 1e-6 else f"{value * 1e9:.1f} ns"
    return f"{value:g}"


def driver_version() -> str | None:
    """The driver version, read with the one nvidia-smi query this script ever runs."""
    if shutil.which(DRIVER_QUERY[0]) is None:
        return None
    try:
        done = subprocess.run(list(DRIVER_QUERY), capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else None


# ---------------------------------------------------------------------------------------------
# Triton kernels. Each reads top to bottom; comments say where the data lives.
# ---------------------------------------------------------------------------------------------


@triton.jit
def stream_read_kernel(x_ptr, out_ptr, n_elements, BLOCK: tl.constexpr, UNROLL: tl.constexpr):
    """Each program reads BLOCK * UNROLL contiguous elements from HBM once and stores their sum."""
    pid = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float32)  # registers
    for u in tl.static_range(UNROLL):  # unrolled: the UNROLL loads are independent, all in flight
        idx = (pid * UNROLL + u) * BLOCK + offs
        acc += tl.load(x_ptr + idx, mask=idx < n_elements, other=0.0)
    tl.store(out_ptr + pid, tl.sum(acc, axis=0))


@triton.jit(do_not_specialize=["n_steps"])
def l2_reread_kernel(x_ptr, out_ptr, n_steps, N_BLOCKS: tl.constexpr, BLOCK: tl.constexpr, UNROLL: tl.constexpr):
    """Each program reads blocks (pid + j) mod N_BLOCKS for j = 0 .. n_steps * UNROLL - 1.

    The buffer (N_BLOCKS * BLOCK elements) stays in L2; `.cg` loads skip L1, so every load is
    served by L2. N_BLOCKS is a power of two, so the modulo is a mask."""
    pid = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for step in range(n_steps):
        for u in tl.static_range(UNROLL):
            blk = (pid + step * UNROLL + u) % N_BLOCKS
            idx = blk.to(tl.int64) * BLOCK + offs
            acc += tl.load(x_ptr + idx, mask=idx < N_BLOCKS * BLOCK, other=0.0, cache_modifier=".cg")
    tl.store(out_ptr + pid, tl.sum(acc, axis=0))


@triton.jit(do_not_specialize=["n_hops"])
def chase_kernel(buf_ptr, state_ptr, n_hops):
    """Follow the chain n_hops times from the element index in state_ptr[0]; write where it ends.

    Each load's address is the previous load's value, so exactly one load is in flight.
    `.cg` skips L1: a hop costs an L2 hit or an L2 miss to HBM. Launched with num_warps=1."""
    idx = tl.load(state_ptr)  # int64 element index
    for _ in range(n_hops):
        idx = tl.load(buf_ptr + idx, cache_modifier=".cg")
    tl.store(state_ptr, idx)


@triton.jit
def one_store_kernel(out_ptr):
    """The least a kernel can do: one store, so launch cost is all there is to time."""
    tl.store(out_ptr + tl.program_id(0), 1.0)


@triton.jit(do_not_specialize=["n_steps"])
def exp2_chain_kernel(out_ptr, n_steps, BLOCK: tl.constexpr, UNROLL: tl.constexpr):
    """Each of BLOCK register elements goes through n_steps * UNROLL exp2 (x <- 2^-x, stays in
    [0.5, 1]); elements are independent of one another, so the SFU has work from every lane."""
    offs = tl.arange(0, BLOCK)
    x = (offs.to(tl.float32) + 0.5) / BLOCK  # registers, in (0, 1)
    for _ in range(n_steps):
        for _u in tl.static_range(UNROLL):
            x = tl.exp2(-x)
    tl.store(out_ptr + tl.program_id(0), tl.sum(x, axis=0))


@triton.jit(do_not_specialize=["n_steps"])
def fma_chain_kernel(out_ptr, n_steps, BLOCK: tl.constexpr, UNROLL: tl.constexpr):
    """Each of BLOCK register elements goes through n_steps * UNROLL fp32 FMAs (x <- x * a + b,
    converging to 1, never overflowing); elements are independent of one another."""
    offs = tl.arange(0, BLOCK)
    x = (offs.to(tl.float32) + 0.5) / BLOCK
    for _ in range(n_steps):
        for _u in tl.static_range(UNROLL):
            x = tl.fma(x, 0.9990234375, 0.0009765625)  # a = 1 - 2^-10, b = 2^-10: exact in fp32
    tl.store(out_ptr + tl.program_id(0), tl.sum(x, axis=0))


# Launchers: the shapes each kernel runs with. They take tensors on any device, so the Triton
# interpreter can check them on the CPU with tiny sizes.

READ_BLOCK, READ_UNROLL, READ_WARPS = 4096, 4, 8  # 16 fp32 per thread per load, 4 loads in flight
L2_BLOCK, L2_UNROLL, L2_WARPS = 2048, 4, 8  # 8 fp32 per thread per load, 4 loads in flight
CHAIN_BLOCK, CHAIN_WARPS = 1024, 4  # 8 independent chains per thread
EXP2_UNROLL, FMA_UNROLL = 16, 32  # ops per loop trip per element, to keep loop overhead small


def launch_stream_read(x, out, block=READ_BLOCK, unroll=READ_UNROLL, num_warps=READ_WARPS):
    grid = (triton.cdiv(x.numel(), block * unroll),)
    return stream_read_kernel[grid](x, out, x.numel(), BLOCK=block, UNROLL=unroll, num_warps=num_warps, num_stages=1)


def launch_l2_reread(x, out, n_programs, n_steps, block=L2_BLOCK, unroll=L2_UNROLL, num_warps=L2_WARPS):
    n_blocks = x.numel() // block
    if n_blocks * block != x.numel() or n_blocks & (n_blocks - 1):
        raise ValueError(f"l2 buffer has {x.numel()} elements; need a power-of-two number of {block}-element blocks")
    return l2_reread_kernel[(n_programs,)](
        x, out, n_steps, N_BLOCKS=n_blocks, BLOCK=block, UNROLL=unroll, num_warps=num_warps, num_stages=1
    )


def launch_chase(buf, state, n_hops):
    return chase_kernel[(1,)](buf, state, n_hops, num_warps=1, num_stages=1)


def launch_chain(kernel, out, n_programs, n_steps, unroll, block=CHAIN_BLOCK, num_warps=CHAIN_WARPS):
    return kernel[(n_programs,)](out, n_steps, BLOCK=block, UNROLL=unroll, num_warps=num_warps, num_stages=1)


# ---------------------------------------------------------------------------------------------
# Timing on the GPU.
# ---------------------------------------------------------------------------------------------


def time_gpu_s(fn, *, warmup: int, repeats: int, before=None) -> list[float]:
    """Seconds of each of `repeats` calls of fn, timed with CUDA events, after `warmup` calls.

    `before` (a cache flush, say) runs ahead of each repeat, outside the timed region. The host
    does not wait between repeats, so no launch gap falls inside a timed region."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    pairs = []
    for _ in range(repeats):
        if before is not None:
            before()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        pairs.append((start, end))
    torch.cuda.synchronize()
    return [start.elapsed_time(end) * 1e-3 for start, end in pairs]


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; NaN anywhere gives NaN, which fails every check."""
    out64, ref64 = out.double(), ref.double()
    return float(torch.linalg.vector_norm(out64 - ref64) / torch.linalg.vector_norm(ref64))


def require_close(what: str, out: torch.Tensor, ref: torch.Tensor, tol: float) -> float:
    err = relative_error(out, ref)
    if not err <= tol:
        raise RuntimeError(f"{what}: relative error {err:.3g} against the reference; expected at most {tol:g}")
    return err


class Device:
    """What the measurements need to know about the card, read off its properties."""

    def __init__(self):
        props = torch.cuda.get_device_properties(0)
        self.name = torch.cuda.get_device_name(0)
        self.sm_count = props.multi_processor_count
        self.l2_bytes = getattr(props, "L2_cache_size", None)
        self.regs_per_sm = getattr(props, "regs_per_multiprocessor", None) or DEFAULT_REGS_PER_SM
        self.threads_per_sm = getattr(props, "max_threads_per_multi_processor", None) or DEFAULT_THREADS_PER_SM
        self.capability = (props.major, props.minor)

    def programs(self, compiled, num_warps: int, at_most: int) -> int:
        """A grid that fills every SM once: sm_count x the programs of `compiled` that fit on an SM."""
        n_regs = getattr(compiled, "n_regs", None) or 64
        per_sm = resident_programs_per_sm(n_regs, num_warps, self.regs_per_sm, self.threads_per_sm)
        return self.sm_count * min(per_sm, at_most)


# ---------------------------------------------------------------------------------------------
# The measurements: one function each, returning one record.
# ---------------------------------------------------------------------------------------------


def measure_hbm_copy(dev: Device) -> dict:
    n = HBM_COPY_BYTES // 4
    src = torch.rand(n, device="cuda", dtype=torch.float32)
    dst = torch.full_like(src, float("nan"))
    times = time_gpu_s(lambda: dst.copy_(src), warmup=3, repeats=20)
    if not torch.equal(dst[:: 1 << 16], src[:: 1 << 16]):
        raise RuntimeError("hbm copy: destination differs from source")
    values = rates(copy_bytes(HBM_COPY_BYTES), times)
    method = "torch dst.copy_(src), 4 GiB fp32 on one device; bytes read + written / time; CUDA events"
    return build_record(values, method, tensor_bytes=HBM_COPY_BYTES)


def measure_hbm_read(dev: Device) -> dict:
    n = HBM_READ_BYTES // 4
    x = torch.rand(n, device="cuda", dtype=torch.float32)
    n_programs = triton.cdiv(n, READ_BLOCK * READ_UNROLL)
    out = torch.full((n_programs,), float("nan"), device="cuda", dtype=torch.float32)
    compiled = launch_stream_read(x, out)
    ref = x.view(n_programs, READ_BLOCK * READ_UNROLL).sum(dim=1)
    err = require_close("hbm read kernel", out, ref, 1e-4)
    times = time_gpu_s(lambda: launch_stream_read(x, out), warmup=3, repeats=20)
    method = (
        f"Triton: {n_programs} programs x {READ_UNROLL} loads of {READ_BLOCK} fp32 (num_warps={READ_WARPS}), "
        "the 4 GiB buffer read once, one sum stored per program; bytes read / time"
    )
    return build_record(rates(n * 4, times), method, check_rel_err=err, n_regs=getattr(compiled, "n_regs", None))


def l2_reference_sums(block_sums: np.ndarray, n_programs: int, n_steps: int, unroll: int) -> np.ndarray:
    """What l2_reread_kernel stores: program p sums blocks (p + j) mod n_blocks, j < n_steps * unroll."""
    n_blocks, loads = len(block_sums), n_steps * unroll
    prefix = np.concatenate([[0.0], np.cumsum(np.tile(block_sums.astype(np.float64), 2))])
    laps, rest = divmod(loads, n_blocks)
    first = np.arange(n_programs) % n_blocks
    return laps * block_sums.astype(np.float64).sum() + prefix[first + rest] - prefix[first]


def measure_l2_read(dev: Device) -> dict:
    n = L2_BUFFER_BYTES // 4
    x = torch.rand(n, device="cuda", dtype=torch.float32)
    probe = torch.empty(1, device="cuda", dtype=torch.float32)
    compiled = launch_l2_reread(x, probe, n_programs=1, n_steps=1)  # compiles; grid size is not specialised
    n_programs = dev.programs(compiled, L2_WARPS, at_most=8)
    n_steps = 4096
    out = torch.full((n_programs,), float("nan"), device="cuda", dtype=torch.float32)
    launch_l2_reread(x, out, n_programs, n_steps)
    block_sums = x.view(-1, L2_BLOCK).double().sum(dim=1).cpu().numpy()
    ref = torch.from_numpy(l2_reference_sums(block_sums, n_programs, n_steps, L2_UNROLL))
    err = require_close("l2 kernel", out.cpu(), ref, 1e-3)
    times = time_gpu_s(lambda: launch_l2_reread(x, out, n_programs, n_steps), warmup=3, repeats=15)
    work = reread_bytes(n_programs, n_steps, L2_UNROLL, L2_BLOCK, 4)
    method = (
        f"Triton: {n_programs} programs (all resident) each re-read {n_steps * L2_UNROLL} blocks of "
        f"{L2_BLOCK} fp32 from an {L2_BUFFER_BYTES // MIB} MiB buffer with .cg loads (L1 skipped); "
        "bytes delivered to SMs / time"
    )
    return build_record(rates(work, times), method, check_rel_err=err, n_regs=getattr(compiled, "n_regs", None))


def build_chase(total_bytes: int, seed: int):
    """A chase buffer on the GPU and the visiting order that made it."""
    stride = CHASE_STRIDE_BYTES // 8
    order = random_cycle_order(total_bytes // CHASE_STRIDE_BYTES, np.random.default_rng(seed))
    buf = torch.from_numpy(chase_elements(order, stride)).reshape(-1).to("cuda")
    state = torch.tensor([int(order[0]) * stride], device="cuda", dtype=torch.int64)
    return buf, state, order


def check_chase_end(state: torch.Tensor, order: np.ndarray, hops_done: int) -> None:
    stride = CHASE_STRIDE_BYTES // 8
    got = int(state.item())
    want = walk_end_slot(order, int(order[0]), hops_done) * stride
    if got != want:
        raise RuntimeError(f"pointer chase ended at element {got}; following the cycle gives {want}")


def measure_hbm_latency(dev: Device, total_bytes: int = CHASE_HBM_BYTES) -> dict:
    buf, state, order = build_chase(total_bytes, seed=1)
    flush = torch.empty(FLUSH_L2_MULTIPLE * (dev.l2_bytes or 50 * MIB) // 4, device="cuda", dtype=torch.float32)
    warm_hops, hops, repeats = 1000, 50_000, 5
    if warm_hops + repeats * hops > len(order):
        total = warm_hops + repeats * hops
        raise ValueError(f"chase over {total_bytes} B has {len(order)} slots; {total} hops would revisit some")
    launch_chase(buf, state, warm_hops)  # compiles; n_hops is not specialised, so no recompile below
    # Each repeat goes on from where the last stopped, so no line is visited twice, and the
    # flush evicts whatever the buffer's upload left in L2.
    times = time_gpu_s(lambda: launch_chase(buf, state, hops), warmup=0, repeats=repeats, before=flush.zero_)
    check_chase_end(state, order, warm_hops + repeats * hops)
    method = (
        f"Triton pointer chase, 1 program num_warps=1, int64 .cg loads, random single cycle over "
        f"{total_bytes // MIB} MiB with hops {CHASE_STRIDE_BYTES} B apart, L2 flushed, no line revisited "
        "(random pages: TLB misses included); time / hops"
    )
    return build_record(per_item_s(times, hops), method, hops_per_repeat=hops)


def measure_l2_latency(dev: Device) -> dict:
    buf, state, order = build_chase(CHASE_L2_BYTES, seed=2)
    hops = 4 * len(order) + 1  # four laps and one hop, so each repeat ends somewhere new (checked below)
    warmup, repeats = 1, 5  # the warm-up's laps bring every line into L2
    times = time_gpu_s(lambda: launch_chase(buf, state, hops), warmup=warmup, repeats=repeats)
    check_chase_end(state, order, (warmup + repeats) * hops)
    method = (
        f"Triton pointer chase, 1 program num_warps=1, int64 .cg loads (L1 skipped), random single cycle over "
        f"{CHASE_L2_BYTES // MIB} MiB with hops {CHASE_STRIDE_BYTES} B apart, after warm laps; time / hops "
        "(an average over near and far L2 partitions)"
    )
    return build_record(per_item_s(times, hops), method, hops_per_repeat=hops)


def launch_many(out, n):
    for _ in range(n):
        one_store_kernel[(1,)](out, num_warps=1)


def measure_launch(dev: Device) -> dict:
    out = torch.zeros(1, device="cuda", dtype=torch.float32)
    times = time_gpu_s(lambda: launch_many(out, LAUNCHES_PER_REPEAT), warmup=1, repeats=7)
    method = (
        f"{LAUNCHES_PER_REPEAT} launches of a one-store Triton kernel back to back from Python on one stream, "
        "CUDA events around them; time / launches (host launch path included)"
    )
    return build_record(per_item_s(times, LAUNCHES_PER_REPEAT), method)


def measure_launch_graph(dev: Device) -> dict:
    out = torch.zeros(1, device="cuda", dtype=torch.float32)
    launch_many(out, 3)  # compile before capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        launch_many(out, LAUNCHES_PER_REPEAT)
    times = time_gpu_s(graph.replay, warmup=2, repeats=7)
    method = (
        f"the same {LAUNCHES_PER_REPEAT} one-store launches captured in one CUDA graph and replayed; "
        "time / launches"
    )
    return build_record(per_item_s(times, LAUNCHES_PER_REPEAT), method)


def random_matrix(rows: int, cols: int, dtype) -> torch.Tensor:
    """Random normal data (never zeros: they can run faster than real data, METHOD.md)."""
    return torch.randn(rows, cols, device="cuda", dtype=torch.float32).to(dtype)


def corner_reference(a: torch.Tensor, b: torch.Tensor, size: int = 256) -> torch.Tensor:
    """(a @ b)[:size, :size] in float64, from the same low-precision inputs."""
    return a[:size].float().double() @ b[:, :size].float().double()


def measure_matmul(dtype) -> dict:
    s = MATMUL_SIZE
    a, b = random_matrix(s, s, dtype), random_matrix(s, s, dtype)
    c = torch.full((s, s), float("nan"), device="cuda", dtype=dtype)
    torch.matmul(a, b, out=c)
    err = require_close("matmul", c[:256, :256], corner_reference(a, b), 2e-2)
    times = time_gpu_s(lambda: torch.matmul(a, b, out=c), warmup=10, repeats=20)
    name = str(dtype).removeprefix("torch.")
    method = f"torch.matmul {s}x{s}x{s} {name}, random normal data; 2 M N K / time"
    return build_record(rates(matmul_flops(s, s, s), times), method, check_rel_err=err)


def measure_fp8(dev: Device, fast_accum: bool) -> dict:
    """fp8 e4m3 through torch._scaled_mm; skipped with the reason where the card or torch lacks it."""
    if not hasattr(torch, "float8_e4m3fn") or not hasattr(torch, "_scaled_mm"):
        return {"skipped": f"torch {torch.__version__} has no float8_e4m3fn or _scaled_mm"}
    if dev.capability < (8, 9):
        return {"skipped": f"compute capability {dev.capability} has no fp8 tensor cores (needs 8.9 or newer)"}
    s = MATMUL_SIZE
    a = random_matrix(s, s, torch.float8_e4m3fn)
    b = random_matrix(s, s, torch.float8_e4m3fn).t()  # column-major, as _scaled_mm wants its second operand
    one = torch.ones((), device="cuda", dtype=torch.float32)

    def product():
        return torch._scaled_mm(a, b, one, one, out_dtype=torch.bfloat16, use_fast_accum=fast_accum)

    try:
        c = product()
        torch.cuda.synchronize()
    except Exception as exc:  # a private API: its arguments move between torch releases
        return {"skipped": f"torch._scaled_mm failed: {error_record(exc)['error']}"}
    err = require_close("fp8 matmul", c[:256, :256], corner_reference(a, b), 2e-2)
    times = time_gpu_s(product, warmup=10, repeats=20)
    method = (
        f"torch._scaled_mm {s}x{s}x{s} fp8 e4m3 (unit scales, bf16 out, use_fast_accum={fast_accum}), "
        "random normal data; 2 M N K / time"
    )
    return build_record(rates(matmul_flops(s, s, s), times), method, check_rel_err=err)


def measure_chain(dev: Device, kernel, unroll: int, n_steps: int, what: str) -> tuple[list[float], str, dict]:
    """Time a chain kernel on a grid that fills every SM once; returns ops/s per repeat."""
    probe = torch.empty(1, device="cuda", dtype=torch.float32)
    compiled = launch_chain(kernel, probe, 1, 1, unroll)
    n_programs = dev.programs(compiled, CHAIN_WARPS, at_most=16)
    out = torch.full((n_programs,), float("nan"), device="cuda", dtype=torch.float32)
    times = time_gpu_s(lambda: launch_chain(kernel, out, n_programs, n_steps, unroll), warmup=2, repeats=7)
    if not bool(torch.isfinite(out).all()):
        raise RuntimeError(f"{what} kernel left non-finite or unwritten outputs")
    ops = chain_ops(n_programs, n_steps, unroll, CHAIN_BLOCK)
    method = (
        f"Triton: {n_programs} programs (all resident), {CHAIN_BLOCK} independent fp32 elements each "
        f"(num_warps={CHAIN_WARPS}), each through {n_steps * unroll} {what}"
    )
    return rates(ops, times), method, {"n_regs": getattr(compiled, "n_regs", None)}


def measure_exp2(dev: Device) -> dict:
    values, method, extra = measure_chain(dev, exp2_chain_kernel, EXP2_UNROLL, 2048, "tl.exp2 (x <- 2^-x)")
    return build_record(values, method + "; exp2 results / time", **extra)


def measure_fma(dev: Device) -> dict:
    values, method, extra = measure_chain(dev, fma_chain_kernel, FMA_UNROLL, 8192, "tl.fma (x <- x a + b)")
    return build_record([fma_flops(v) for v in values], method + "; 2 FLOPs per FMA / time", **extra)


MEASUREMENTS = (
    ("hbm_copy_bandwidth_bytes_per_s", measure_hbm_copy),
    ("hbm_read_bandwidth_bytes_per_s", measure_hbm_read),
    ("l2_read_bandwidth_bytes_per_s", measure_l2_read),
    ("hbm_load_latency_s", measure_hbm_latency),
    ("hbm_load_latency_256mib_s", lambda dev: measure_hbm_latency(dev, CHASE_HBM_SMALL_BYTES)),
    ("l2_hit_latency_s", measure_l2_latency),
    ("launch_overhead_s", measure_launch),
    ("launch_overhead_graph_s", measure_launch_graph),
    ("tensor_bf16_flops_per_s", lambda dev: measure_matmul(torch.bfloat16)),
    ("tensor_fp16_flops_per_s", lambda dev: measure_matmul(torch.float16)),
    ("tensor_fp8_e4m3_flops_per_s", lambda dev: measure_fp8(dev, fast_accum=False)),
    ("tensor_fp8_e4m3_fast_accum_flops_per_s", lambda dev: measure_fp8(dev, fast_accum=True)),
    ("sfu_exp2_ops_per_s", measure_exp2),
    ("cuda_core_fp32_flops_per_s", measure_fma),
)


# ---------------------------------------------------------------------------------------------
# The run: header, each measurement guarded, checks, JSON, table.
# ---------------------------------------------------------------------------------------------


def probe_out_dir(name: str, description: str, argv=None) -> "Path | None":
    """A probe's command line (--out DIR, created): the folder, or None, said on stderr, where there is no GPU."""
    parser = argparse.ArgumentParser(prog=name, description=description)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"{name}: no CUDA device; run this on the GPU machine", file=sys.stderr)
        return None
    args.out.mkdir(parents=True, exist_ok=True)
    return args.out


def header(dev: Device) -> dict:
    return {
        "device": dev.name,
        "sm_count": dev.sm_count,
        "l2_bytes": dev.l2_bytes,
        "driver": driver_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def l2_over_hbm_check(results: dict) -> dict | None:
    """Says whether the L2 figure is well above the HBM read figure, as it must be to mean L2."""
    l2 = results.get("l2_read_bandwidth_bytes_per_s", {}).get("value")
    hbm = results.get("hbm_read_bandwidth_bytes_per_s", {}).get("value")
    if l2 is None or hbm is None:
        return None
    ratio = l2 / hbm
    if ratio >= 1.5:
        return {"l2_over_hbm_read": ratio, "verdict": "ok"}
    verdict = "L2 figure not well above HBM: the L2 kernel may be issue- or latency-bound, or missing L2"
    return {"l2_over_hbm_read": ratio, "verdict": verdict}


def run_one(fn, dev: Device) -> dict:
    """One measurement, never fatal: a failure becomes its error string."""
    try:
        record = fn(dev)
        torch.cuda.synchronize()
    except Exception as exc:  # a failed measurement must not stop the others
        record = error_record(exc)
    torch.cuda.empty_cache()
    return record


def run_all(dev: Device, names: list[str], budget_s: float, write) -> dict:
    results, started = {}, time.monotonic()
    for key, fn in MEASUREMENTS:
        if key not in names:
            continue
        spent = time.monotonic() - started
        if spent > budget_s:
            results[key] = {"skipped": f"time budget of {budget_s:g} s spent ({spent:.0f} s)"}
        else:
            results[key] = run_one(fn, dev)
            results[key]["seconds_taken"] = round(time.monotonic() - started - spent, 2)
        print(f"  {key}: {table_cell(key, results[key])}", flush=True)
        write(results)
    return results


def table_cell(key: str, record: dict) -> str:
    if "value" in record:
        lo, hi = record["spread"]["min"], record["spread"]["max"]
        return f"{human(key, record['value'])}  [{human(key, lo)} .. {human(key, hi)}]"
    return record.get("error") or record.get("skipped") or "?"


def print_table(results: dict) -> None:
    width = max(len(k) for k in results) if results else 10
    print(f"\n{'measurement':<{width}}  median  [min .. max]")
    for key, record in results.items():
        print(f"{key:<{width}}  {table_cell(key, record)}")


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Measure achievable GPU ceilings; write DIR/calibration.json.")
    parser.add_argument("--out", required=True, help="folder for calibration.json (made if missing)")
    parser.add_argument("--only", default="", help="comma-separated measurement keys to run (default: all)")
    parser.add_argument("--budget-s", type=float, default=200.0, help="skip measurements not started by then")
    args = parser.parse_args(argv)
    known = [key for key, _ in MEASUREMENTS]
    names = [n.strip() for n in args.only.split(",") if n.strip()] or known
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"--only names {unknown}; known measurements are {known}")
    return args, names


def main(argv=None) -> int:
    args, names = parse_args(argv)
    if not torch.cuda.is_available():
        print("microbench: no CUDA GPU visible to torch (torch.cuda.is_available() is False); "
              "run this on the GPU machine", file=sys.stderr)
        return 1
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "calibration.json")
    dev = Device()
    doc = header(dev)
    print(f"microbench on {doc['device']} ({doc['sm_count']} SMs, L2 {doc['l2_bytes']} B), "
          f"torch {doc['torch']}, triton {doc['triton']}, driver {doc['driver']}", flush=True)

    def write(results):
        doc["measurements"] = results
        doc["checks"] = {"l2_vs_hbm": l2_over_hbm_check(results)}
        with open(path, "w") as f:
            json.dump(doc, f, indent=2)

    results = run_all(dev, names, args.budget_s, write)
    print_table(results)
    print(f"checks: {doc['checks']}\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
