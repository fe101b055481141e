"""How long the host takes to issue each case's call: the part of a call's time that memsim's GPU model leaves out.

    python3 -m validation.host_time --suite full --ours flash2,... --out DIR

A call from Python issues its launches one after another; the GPU runs them as they come. When the host is
slower than the kernels, the call's time is the host's. `triton.testing.do_bench` times each call with
events, after clearing the L2 with a kernel of its own: the host issues the call while that clear runs, so
a call shows its host time less the clear's (when that is the larger) and its kernels' time otherwise.

For each case, on the GPU machine (torch, triton, rich; no memsim):
- host_s: seconds the host spends on one repeat of do_bench's loop (clear, event, the call, event) at the case's
  shape: 20 repeats issued back to back with no synchronisation, timed with the host clock (far fewer launches
  than the GPU's queue holds, so the host never waits for the GPU unless the call itself synchronises), the
  median over 5 such batches; wall_s: the same repeats until the GPU had run them;
- host_tiny_s (--tiny): the same at a small shape of the same kernel and flags (`tiny`), whose kernels take a few
  microseconds: whether the host's time depends on the shape;
- idle_s, gpu_s, stall_s (gpu_stall): the call timed with events from an idle GPU, and with the GPU kept busy
  until the host has issued it all; their difference is how long the GPU waits on the host within the call,
  which do_bench's clear hides up to its own length;
- call_s: do_bench's median, as validation.measure takes it, today, on this host (the recorded rows were
  measured on another day, perhaps another host: the two say whether the host changed).
And once: clear_s, the GPU time of do_bench's L2 clear (events around it, median of 50), and the host's CPU.
Inputs are drawn on the GPU (the values do not change the host's work). Writes DIR/host-time.json.
"""

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from validation.cases import Case
from validation.measure import add_case_arguments, environment, gpu_cases
from validation.runners import DRAWN_AS, DTYPES, kernel_call, rotating

CALLS = 20  # repeats issued back to back per batch: with their clears and events, far under the GPU queue's 1024
BATCHES = 5  # the host's time wanders from batch to batch: their median
SETS = 2  # input sets rotated, as the suite's calls are
MOBA_TINY_LEN = 2048  # MoBA's smallest suite length: 4 blocks of 512 keys for its top 3
TINY_LEN = 256
STALL_CALLS = 20  # calls timed with events for gpu_stall, each way: their median
SLEEP_CYCLES = 8_000_000  # about 4 ms at Hopper's 1.98 GHz: longer than any suite call's host side (under 1.5 ms)


def tiny(case: Case) -> Case:
    """The same kernel, flags, head dim and head grouping at one batch, one kv head and a short sequence."""
    group = case.q_heads // case.kv_heads
    if case.is_decode:
        q_len, kv_len = 1, min(case.kv_len, 1024)
    else:
        q_len = min(case.q_len, MOBA_TINY_LEN if case.kernel == "moba" else TINY_LEN)
        kv_len = q_len
    return replace(case, batch=1, q_heads=group, kv_heads=1, q_len=q_len, kv_len=kv_len)


def device_sets(case: Case, count: int = SETS) -> list[tuple[torch.Tensor, ...]]:
    """(q, k, v) sets drawn on the GPU, in the case's dtype (fp8: drawn in bf16, as the runners expect)."""
    dtype = DRAWN_AS.get(case.dtype, DTYPES[case.dtype])
    generator = torch.Generator(device="cuda").manual_seed(0)
    q_shape = (case.batch, case.q_heads, case.q_len, case.head_dim)
    kv_shape = (case.batch, case.kv_heads, case.kv_len, case.head_dim)
    return [tuple(torch.randn(s, generator=generator, device="cuda", dtype=torch.float32).to(dtype)
                  for s in (q_shape, kv_shape, kv_shape)) for _ in range(count)]


def l2_clear() -> Callable[[], None]:
    """do_bench's L2 clear: triton's own buffer and clear where it has them."""
    from triton import runtime

    driver = runtime.driver.active
    cache = driver.get_empty_cache_for_benchmark()
    clear = getattr(driver, "clear_cache", None) or (lambda c: c.zero_())
    return lambda: clear(cache)


def issue_time(case: Case) -> dict:
    """Host seconds per repeat of do_bench's loop (clear the L2, record an event, call, record an event), issued
    `CALLS` at a time with no synchronisation: the median over `BATCHES` batches; and wall seconds per repeat
    until the GPU had run a batch (its median)."""
    clear = l2_clear()
    run = rotating(device_sets(case), kernel_call(case))
    for _ in range(3):  # compile, autotune, allocate outside the timing
        run()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(CALLS)]
    host, wall = [], []
    for _ in range(BATCHES):
        start = time.perf_counter()
        for begin, end in events:
            clear()
            begin.record()
            run()
            end.record()
        issued = time.perf_counter()
        torch.cuda.synchronize()
        host.append((issued - start) / CALLS)
        wall.append((time.perf_counter() - start) / CALLS)
    return {"host_s": statistics.median(host), "wall_s": statistics.median(wall), "run": run}


def gpu_stall(run) -> dict:
    """How long the GPU waits on the host within one call: events around the call, the L2 cleared first, once
    with the GPU idle when the call begins (idle_s: the host's time to reach each launch shows as GPU time) and
    once with the GPU kept busy by a sleep of SLEEP_CYCLES first, so that the host has issued everything before
    the GPU reaches the call (gpu_s); each the median of STALL_CALLS calls. stall_s = idle_s - gpu_s. Only the
    host's work before and between launches counts: what it does after the last launch (freeing, returning
    outputs) delays the next call, not this one's events, which is where the host-loop time (host_s) says too
    much."""
    clear = l2_clear()
    idle, busy = [], []
    for seconds, sleep_cycles in ((idle, 0), (busy, SLEEP_CYCLES)):
        for _ in range(STALL_CALLS):
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            clear()
            if sleep_cycles:
                torch.cuda._sleep(sleep_cycles)
            else:
                torch.cuda.synchronize()
            begin.record()
            run()
            end.record()
            torch.cuda.synchronize()
            seconds.append(begin.elapsed_time(end) * 1e-3)
    idle_s, gpu_s = statistics.median(idle), statistics.median(busy)
    return {"idle_s": idle_s, "gpu_s": gpu_s, "stall_s": max(0.0, idle_s - gpu_s)}


def call_time(run) -> float:
    import triton.testing

    return triton.testing.do_bench(run, warmup=25, rep=200, return_mode="median") * 1e-3


def clear_time() -> float:
    """GPU seconds of do_bench's L2 clear (triton's own buffer and clear where it has them)."""
    clear = l2_clear()
    seconds = []
    for _ in range(50):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        clear()
        end.record()
        torch.cuda.synchronize()
        seconds.append(start.elapsed_time(end) * 1e-3)
    return statistics.median(seconds)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def measure(case: Case, with_tiny: bool) -> dict:
    at_shape = issue_time(case)
    row = {k: at_shape[k] for k in ("host_s", "wall_s")}
    row.update(gpu_stall(at_shape["run"]))
    row["call_s"] = call_time(at_shape["run"])
    del at_shape
    torch.cuda.empty_cache()
    small = tiny(case)
    if with_tiny and small != case and case.kernel != "flex_attention":  # flex compiles per shape: tens of seconds
        at_tiny = issue_time(small)
        row.update(tiny=small.id, host_tiny_s=at_tiny["host_s"], wall_tiny_s=at_tiny["wall_s"])
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_case_arguments(parser, "folder for host-time.json", out_required=True)
    parser.add_argument("--tiny", action="store_true", help="also each case's kernel at a small shape")
    args = parser.parse_args(argv)
    cases = gpu_cases(args, "host_time")
    if isinstance(cases, int):
        return cases
    from rich.progress import Progress

    out = {**environment(), "cpu": cpu_name(), "calls": CALLS, "batches": BATCHES, "loop": "do_bench's",
           "clear_s": clear_time(), "cases": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "host-time.json"
    with Progress(transient=False) as bar:
        task = bar.add_task(f"host time of {len(cases)} cases", total=len(cases))
        for case in cases:
            try:
                out["cases"][case.id] = measure(case, args.tiny)
            except Exception as err:  # a backend that refuses a shape: say why, go on
                out["cases"][case.id] = {"error": str(err).splitlines()[0] if str(err) else type(err).__name__}
            torch.cuda.empty_cache()
            path.write_text(json.dumps(out, indent=1))  # after each case: a run cut short keeps what it measured
            bar.advance(task)
    timed = [r for r in out["cases"].values() if "host_s" in r]
    print(f"host_time: {len(timed)} of {len(cases)} cases on {out['cpu']}; do_bench's clear "
          f"{out['clear_s'] * 1e6:.1f} us -> {path}")
    for case_id, r in list(out["cases"].items()):
        if "host_s" in r:
            print(f"{case_id:55s} host {r['host_s'] * 1e6:8.1f} us  tiny {r.get('host_tiny_s', 0) * 1e6:8.1f} us  "
                  f"stall {r['stall_s'] * 1e6:8.1f} us  gpu {r['gpu_s'] * 1e6:9.1f} us  call {r['call_s'] * 1e6:9.1f} us")
        else:
            print(f"{case_id:55s} {r['error']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
