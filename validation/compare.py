"""Re-predict every recorded case with the current model and measure how far off it is.

    memsim validate --results validation/results/h100 [--engine des] [--plots DIR] [--report FILE] [--json]

Relative error = predicted / measured - 1 per field: HBM bytes read and written (dram__bytes_*),
L2 -> SM bytes read and SM -> L2 bytes written (what the SMs received from and sent to L2 over the
crossbar: l1tex__m_xbar2l1tex_read_bytes, l1tex__m_l1tex2xbar_write_bytes), time (do_bench median) and
kernel time (ncu's gpu__time_duration). The L2's own sector lookups (lts__t_sectors_srcunit_tex_op_read)
are kept beside them as `l2_read_lookups`, not compared: the L2 looks a sector up once for several SMs
that ask for it at nearly the same time, while each of them receives it (validation/l2_read_probe.py).
Summaries use |error|: median, 90th percentile, worst. Where a case was profiled again (validation/repeat_counters.py,
repeats-*.jsonl beside the rows), its DRAM bytes and kernel time are the median of its row and those repeats.

HBM writes under HBM_WRITE_FLOOR_BYTES are below what ncu resolves: a kernel that stores nothing still shows
0.04-0.67 MB of dram__bytes_write (validation/cta_spread_probe.py). Where memsim and the counter both say less
than that, the row agrees as far as can be measured: it is counted as below the floor, not scored.

Calibration: memsim's ceilings (achievable HBM and L2 bandwidth, tensor-core and CUDA-core rates,
latencies, launch overhead) come from the microbenchmarks (validation/microbench.py,
calibration-*.json), as do the L2's dirty lifetime and shared-tile weight (validation/l2_dirty_lifetime.py,
validation/fit_l2_dirty_lifetime.py). One parameter no microbenchmark gives is fitted on a named calibration
subset (CALIBRATION_KERNELS): the H100's dependent_step_latency_s (validation/fit_step_latency.py). Summaries
report that subset apart; every other case is held out.
"""

import json
import statistics
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from memsim.errors import MemsimError
from memsim.predict import predict
from memsim.sectors import SECTOR_BYTES
from validation.mapping import Mapped, Unmapped, map_case

# time: the do_bench median of the whole call, host included; kernel_time: the GPU time of its launches under
# ncu (gpu__time_duration, cold L2), which is what memsim models. A call whose host side is slower than its
# kernels (short launches from Python, a host sync) shows in time and not in kernel_time. Where the results hold
# the host's time to issue the case's call (validation/host_time.py: do_bench's loop issued without waiting, in the
# same run as a do_bench median of the call), time is that run's median, predicted as the larger of memsim's
# kernel time and the host's issue time less do_bench's L2 clear (which the GPU runs while the host issues the
# call): the host's time is an input, like a kernel's launch config, and it differs from host to host and run
# to run (the same call 23-76 us on two H100 machines the same day: results/h100/host-time-*-2026-11-24.json).
# hbm_bytes: HBM read and written together, the bytes that set a memory-bound kernel's time (the issue of a model's
# writes, which depend on what is still dirty in L2 when a kernel ends, shows in hbm_write on its own).
FIELDS = ("hbm_read", "hbm_write", "hbm_bytes", "l2_read", "l2_write", "time", "kernel_time")
# The named calibration subset: cases of these kernels fitted a model parameter (the H100 preset's
# dependent_step_latency_s: our flash2 forward rows). Summaries leave them out; every other case is held out.
CALIBRATION_KERNELS = ("flash2",)
HELD_OUT = ("every case but the calibration subset (our flash2 forward rows, which fitted the H100's "
            "dependent_step_latency_s); every other parameter comes from microbenchmarks")
GPU_BY_DEVICE = {"NVIDIA H100 80GB HBM3": "H100-SXM5-80GB", "NVIDIA H200": "H200-SXM-141GB"}
# Kernels that store nothing, streaming 64 MiB to 1 GiB on one or two waves, showed 0.039-0.667 MB of
# dram__bytes_write.sum under ncu (--clock-control none, caches flushed; the first profiled launch 2.3 MB), and a
# one-wave kernel that stores 0.5 MB at its end showed the same (results/h100/cta-spread-2026-11-23.json): writes
# the kernel did not make. Below this, a measured HBM write says nothing of the kernel's own.
HBM_WRITE_FLOOR_BYTES = 1e6
FLOORS = {"hbm_write": HBM_WRITE_FLOOR_BYTES}


@dataclass
class Row:
    id: str
    kernel: str
    algo: str = ""
    how: str = ""
    measured: dict = field(default_factory=dict)
    predicted: dict = field(default_factory=dict)
    error: dict = field(default_factory=dict)  # field -> predicted / measured - 1
    skipped: str = ""  # why there is no comparison
    below_floor: list = field(default_factory=list)  # fields where memsim and the counter are both below FLOORS
    calibration: bool = False  # in the calibration subset (CALIBRATION_KERNELS): not held out
    host_issue_s: float | None = None  # the host's time to issue the call less do_bench's clear, where measured
    runs: int = 1  # ncu runs behind the REPEATED fields: the row's own and its repeats (their median)


def load_rows(results: Path) -> list[dict]:
    """Every row of every measurements*.jsonl under `results` (a folder or one file), files read in name order.
    A case measured again (same id in a later file: a kernel changed and was re-measured) replaces its earlier
    row; the files themselves are never edited."""
    files = [results] if results.is_file() else sorted(results.glob("measurements*.jsonl"))
    if not files:
        raise MemsimError(f"no measurements*.jsonl under {results}; run validation/measure.py on a GPU first")
    rows: dict[str, dict] = {}
    for path in files:
        for number, row in _jsonl(path):
            rows.pop(row.get("id", f"{path}:{number}"), None)  # a re-measured case goes to the end, as measured
            rows[row.get("id", f"{path}:{number}")] = row
    folder = results if results.is_dir() else results.parent
    hosts, repeats = load_host_times(folder), load_repeats(folder)
    out = []
    for case_id, row in rows.items():
        if case_id in hosts:
            row = {**row, "host_time": hosts[case_id]}
        signature = launch_signature(row.get("launches", []))
        same = [run for run in repeats.get(case_id, []) if launch_signature(run) == signature]
        out.append({**row, "repeats": same} if same else row)
    return out


def _jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) of each non-blank line of a JSON-lines file; one clear error for a line that is not JSON."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as err:
            raise MemsimError(f"{path}:{number}: not a JSON row ({err.msg})") from None


# Fields that validation/repeat_counters.py measures again (ncu.COUNTERS: DRAM bytes and kernel time; the
# crossbar bytes come from a profiling run of their own and are not repeated).
REPEATED = ("hbm_read", "hbm_write", "kernel_time")


def load_repeats(folder: Path) -> dict[str, list[list[dict]]]:
    """Case id -> the launch lists of every repeated call of it, from every repeats-*.jsonl under `folder`
    (validation/repeat_counters.py), files in name order."""
    out: dict[str, list[list[dict]]] = {}
    for path in sorted(folder.glob("repeats-*.jsonl")):
        for number, row in _jsonl(path):
            if not isinstance(row, dict) or "id" not in row:
                raise MemsimError(f"{path}:{number}: a repeat row needs an \"id\" (as validation/repeat_counters.py "
                                  "writes it)")
            out.setdefault(row["id"], []).extend(run for run in row.get("repeats", []) if run)
    return out


LAUNCH_CONFIG = ("launch__grid_size", "launch__block_size", "launch__registers_per_thread",
                 "launch__shared_mem_per_block_dynamic", "launch__shared_mem_per_block_static")


def launch_signature(launches: list[dict]) -> tuple:
    """What makes two calls the same kernels: each launch's name and launch configuration, in order. A repeat whose
    signature differs from its row's (the kernel changed since the row was measured) is not the row's."""
    return tuple((k.get("kernel"), *(k.get(c) for c in LAUNCH_CONFIG)) for k in launches)


HOST_TIME_LOOP = "do_bench's"  # validation/host_time.py's runs that time do_bench's own loop (earlier runs did not)


def load_host_times(folder: Path) -> dict[str, dict]:
    """Case id -> {"host_s", "call_s", "clear_s"}: the host's time per repeat of do_bench's loop, the call's do_bench
    median in the same run, and do_bench's L2 clear, from every host-time-*.json under `folder` that
    validation/host_time.py wrote timing do_bench's loop (files in name order, a later one replacing a case)."""
    out: dict[str, dict] = {}
    for path in sorted(folder.glob("host-time-*.json")):
        try:
            run = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise MemsimError(f"{path}: not JSON ({err.msg})") from None
        if run.get("loop") != HOST_TIME_LOOP:
            continue
        for case_id, case in run.get("cases", {}).items():
            if "host_s" in case and "call_s" in case:
                out[case_id] = {"host_s": case["host_s"], "call_s": case["call_s"], "clear_s": run["clear_s"]}
    return out


def measured(row: dict) -> dict:
    """The row's measured fields. Where it has repeats (load_repeats), each REPEATED field is the median over the
    row's own run and its repeats: one ncu run of a kernel that ends with part of its output dirty in L2 moves by
    up to a quarter from the next (validation/repeat_counters.py)."""
    launches = row["launches"]
    out = {"time": row.get("time_s")}
    if row.get("counters") and launches:
        out.update(_dram_and_time(launches))
        repeats = [_dram_and_time(run) for run in row.get("repeats", [])]
        if repeats:
            out.update({f: statistics.median([out[f], *(r[f] for r in repeats)]) for f in REPEATED})
        out["hbm_bytes"] = out["hbm_read"] + out["hbm_write"]
        out["l2_read"] = _total(launches, "l1tex__m_xbar2l1tex_read_bytes.sum")  # rows measured before it: none
        out["l2_write"] = _total(launches, "l1tex__m_l1tex2xbar_write_bytes.sum")
        lookups = _total(launches, "lts__t_sectors_srcunit_tex_op_read.sum")
        out["l2_read_lookups"] = None if lookups is None else SECTOR_BYTES * lookups
    return {k: v for k, v in out.items() if v}


def _dram_and_time(launches: list[dict]) -> dict:
    """REPEATED of one call, from its launches (ns of gpu__time_duration to seconds)."""
    return {"hbm_read": sum(k.get("dram__bytes_read.sum") or 0.0 for k in launches),
            "hbm_write": sum(k.get("dram__bytes_write.sum") or 0.0 for k in launches),
            "kernel_time": 1e-9 * sum(k.get("gpu__time_duration.sum") or 0.0 for k in launches)}


def _total(launches: list[dict], metric: str) -> float | None:
    """The metric summed over the case's launches; None when a launch lacks it (measured before it was recorded)."""
    values = [k.get(metric) for k in launches]
    return None if any(v is None for v in values) else sum(values)


def predicted(mapped: Mapped, gpu: str, engine: str) -> dict:
    p = predict(mapped.algo, mapped.shape, gpu, mapped.tiles, pass_=mapped.pass_, engine=engine, order=mapped.order,
                ctas=mapped.ctas, resources=mapped.resources)
    kernels = [k for k in p.kernels if mapped.kernels is None or k.name in mapped.kernels]
    if not kernels:
        raise MemsimError(f"{mapped.algo} predicts no launch named {', '.join(mapped.kernels)}; it has "
                          f"{', '.join(k.name for k in p.kernels)}")
    latency_s = sum(k.latency_s for k in kernels)  # memsim models the GPU: the call's time is its kernels'
    moved = {key: sum(k.bytes[key] for k in kernels) for key in ("hbm_read", "hbm_write", "l2_read", "l2_write")}
    return {**moved, "hbm_bytes": moved["hbm_read"] + moved["hbm_write"], "time": latency_s, "kernel_time": latency_s}


def compare_row(args: tuple[dict, str]) -> Row:
    raw, engine = args
    row = Row(id=raw["id"], kernel=raw["kernel"], calibration=raw["kernel"] in CALIBRATION_KERNELS)
    try:
        mapped = map_case(raw)
    except Unmapped as why:
        row.skipped = str(why)
        return row
    row.algo, row.how = mapped.algo, mapped.how
    gpu = GPU_BY_DEVICE.get(raw.get("device", ""), raw.get("device", ""))
    try:
        row.predicted = predicted(mapped, gpu, engine)
    except MemsimError as why:
        row.skipped = f"memsim refused it: {why}"
        return row
    row.measured = measured(raw)
    row.runs = 1 + len(raw.get("repeats", []))
    host = raw.get("host_time")
    if host is not None:  # the call timed in the run that timed its host side (FIELDS' comment)
        row.host_issue_s = host["host_s"] - host["clear_s"]
        row.measured["time"] = host["call_s"]
        row.predicted["time"] = max(row.predicted["kernel_time"], row.host_issue_s)
    row.below_floor = [f for f, floor in FLOORS.items()
                       if f in row.measured and row.measured[f] < floor and row.predicted[f] < floor]
    row.error = {f: row.predicted[f] / row.measured[f] - 1 for f in FIELDS
                 if row.measured.get(f) and f not in row.below_floor}
    return row


def compare(results: Path, engine: str = "des", workers: int = 2, progress=None) -> list[Row]:
    """Every recorded case re-predicted; `progress(done, total)` is called as rows finish."""
    raws = load_rows(results)
    out = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for row in pool.map(compare_row, [(raw, engine) for raw in raws]):
            out.append(row)
            if progress:
                progress(len(out), len(raws))
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def summary(rows: list[Row], group=None, calibration: bool = False) -> dict:
    """field -> {"n", "median", "p90", "worst", "worst_case", "below_floor"} of |error|, optionally per group(row),
    over the held-out rows (or, with `calibration`, over the calibration subset). `below_floor`: rows of the
    group not scored on that field because memsim and the counter were both below its floor (FLOORS)."""
    groups: dict = {}
    floored: dict = {}
    for row in rows:
        if row.skipped or row.calibration != calibration:
            continue
        key = group(row) if group else "all"
        for f, err in row.error.items():
            groups.setdefault(key, {}).setdefault(f, []).append((abs(err), row.id))
        for f in row.below_floor:
            floored.setdefault(key, {}).setdefault(f, 0)
            floored[key][f] += 1
    return {key: {f: _stats(pairs, floored.get(key, {}).get(f, 0)) for f, pairs in fields.items()}
            for key, fields in groups.items()}


def _stats(pairs: list[tuple[float, str]], below_floor: int = 0) -> dict:
    errors = [e for e, _ in pairs]
    worst, worst_case = max(pairs)
    return {"n": len(errors), "median": statistics.median(errors), "p90": percentile(errors, 0.9),
            "worst": worst, "worst_case": worst_case, "below_floor": below_floor}


def as_json(rows: list[Row]) -> dict:
    overall = summary(rows)
    return {"summary": overall.get("all", {}),
            "calibration_subset": summary(rows, calibration=True).get("all", {}),
            "by_algorithm": summary(rows, lambda r: f"{r.kernel} -> {r.algo}"),
            "by_algorithm_calibration": summary(rows, lambda r: f"{r.kernel} -> {r.algo}", calibration=True),
            "rows": [asdict(r) for r in rows],
            "held_out": HELD_OUT}
