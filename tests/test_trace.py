"""Chrome/Perfetto traces of simulated launches: the format's required fields, one track per SM used,
CTA slices that respect the SM's slots, and HBM/L2 busy intervals inside the launch."""

import json
from collections import defaultdict

import pytest

from memsim import AttentionShape, MemsimError, TileConfig
from memsim.engine import simulate
from memsim.engine.trace import chrome_trace, write_trace
from memsim.hardware import load_gpu
from memsim.schedules.flash2 import forward as schedule
from memsim.schedules.orders import persistent, swizzle

H100 = load_gpu("H100-SXM5-80GB")
REQUIRED_X = ("ph", "ts", "dur", "pid", "tid", "name")  # a complete event (Trace Event Format)
REQUIRED_M = ("ph", "pid", "tid", "name", "args")  # a metadata event
SLACK_US = 1e-6  # rounding of seconds to picosecond timestamps


def traced(launches, fast=True):
    results = simulate(H100, H100.ceilings(), launches, fast=fast, trace=True)
    return results, json.loads(json.dumps(chrome_trace(results)))  # what a file reader sees


def slices(trace, pid=None):
    return [e for e in trace["traceEvents"] if e["ph"] == "X" and (pid is None or e["pid"] == pid)]


def thread_names(trace, pid):
    return {e["tid"]: e["args"]["name"] for e in trace["traceEvents"]
            if e["ph"] == "M" and e["name"] == "thread_name" and e["pid"] == pid}


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The largest number of intervals open at one instant (an end at t comes before a start at t)."""
    points = sorted([(start + SLACK_US, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
                    key=lambda p: (p[0], p[1]))
    now = peak = 0
    for _, change in points:
        now += change
        peak = max(peak, now)
    return peak


SHAPE = AttentionShape(batch=2, q_heads=16, q_len=2048, causal=True)  # 512 CTAs: two waves, uneven work


@pytest.mark.parametrize("fast", [True, False])
def test_every_event_has_the_fields_the_format_requires(fast):
    _, trace = traced([schedule(SHAPE, TileConfig())], fast)
    assert trace["traceEvents"]
    for e in trace["traceEvents"]:
        assert e["ph"] in ("X", "M"), e
        for key in REQUIRED_X if e["ph"] == "X" else REQUIRED_M:
            assert key in e, (key, e)
        if e["ph"] == "X":
            assert isinstance(e["ts"], float) and e["dur"] >= 0 and e["ts"] >= 0


@pytest.mark.parametrize("fast", [True, False])
def test_one_track_per_sm_used_and_every_cta_drawn_once(fast):
    [r], trace = traced([schedule(SHAPE, TileConfig())], fast)
    used = {sm for cohort in r.cohorts for sm in cohort.sms}
    names = thread_names(trace, 1)
    assert {tid for tid, name in names.items() if name.startswith("SM ")} == used
    assert {names[tid] for tid in set(names) - used} == {"HBM", "L2"}
    ctas = [e for e in slices(trace, 1) if e["tid"] in used]
    assert sorted(int(e["name"].split()[-1]) for e in ctas) == list(range(r.launch.grid))
    print(f"fast={fast}: {len(r.cohorts)} cohorts drawn as {len(ctas)} CTA slices on {len(used)} SMs")


@pytest.mark.parametrize("fast", [True, False])
def test_ctas_on_one_sm_never_exceed_its_slots(fast):
    [r], trace = traced([schedule(SHAPE, TileConfig())], fast)
    per_sm = defaultdict(list)
    for e in slices(trace, 1):
        if e["name"].startswith("flash2_fwd"):
            per_sm[e["tid"]].append((e["ts"], e["ts"] + e["dur"]))
    peaks = {sm: most_at_once(spans) for sm, spans in per_sm.items()}
    print(f"{r.occupancy.ctas_per_sm} slots per SM; most CTAs at once on an SM: {max(peaks.values())}")
    assert max(peaks.values()) <= r.occupancy.ctas_per_sm
    assert max(peaks.values()) == r.occupancy.ctas_per_sm  # two waves: the slots do fill


def test_merged_cohorts_carry_their_weight():
    [r], trace = traced([schedule(AttentionShape(batch=1, q_heads=8, q_len=4096), TileConfig())])
    weights = {c.first_pid: c.weight for c in r.cohorts}
    merged = [e for e in slices(trace, 1) if "args" in e]
    assert merged, "non-causal CTAs of one head merge in fast mode"
    for e in merged:
        assert e["args"]["weight"] == weights[e["args"]["cohort_first_pid"]] > 1


def test_hbm_and_l2_tracks_show_busy_intervals_inside_the_launch():
    [r], trace = traced([schedule(SHAPE, TileConfig())])
    names = thread_names(trace, 1)
    for unit in ("HBM", "L2"):
        tid = next(t for t, n in names.items() if n == unit)
        busy = [e for e in slices(trace, 1) if e["tid"] == tid]
        assert busy
        assert min(e["ts"] for e in busy) >= r.start_s * 1e6 - SLACK_US
        assert max(e["ts"] + e["dur"] for e in busy) <= r.end_s * 1e6 + SLACK_US
        assert most_at_once([(e["ts"], e["ts"] + e["dur"]) for e in busy]) == 1  # intervals do not overlap
        total_us = sum(e["dur"] for e in busy)
        print(f"{unit}: {len(busy)} busy intervals, {total_us:.1f} of {r.latency_s * 1e6:.1f} us")
        # busy_s integrates utilisation (0..1) over time, so it cannot exceed the time with work in flight
        assert r.busy_s[unit.lower()] * 1e6 <= total_us + SLACK_US * len(busy)


def test_one_process_per_launch():
    launches = [schedule(AttentionShape(q_heads=4, q_len=1024), TileConfig(), name="first"),
                schedule(AttentionShape(q_heads=4, q_len=512), TileConfig(), name="second")]
    results, trace = traced(launches)
    processes = {e["pid"]: e["args"]["name"] for e in trace["traceEvents"]
                 if e["ph"] == "M" and e["name"] == "process_name"}
    assert processes == {1: "first (32 CTAs)", 2: "second (16 CTAs)"}
    assert min(e["ts"] for e in slices(trace, 2)) >= max(e["ts"] + e["dur"] for e in slices(trace, 1)) - SLACK_US


def test_reordered_launches_name_the_program_each_sm_ran():
    launch = schedule(AttentionShape(batch=1, q_heads=32, q_len=2048), TileConfig())  # 512 CTAs, 264 slots
    swizzled = swizzle(launch, 4, 16)
    [r], trace = traced([swizzled])
    ctas = [e for e in slices(trace, 1) if e["name"].startswith("flash2")]
    start = min(e["ts"] for e in ctas)
    started_first = sorted(int(e["name"].split()[-1]) for e in ctas if e["ts"] == start)
    assert len(started_first) == r.occupancy.slots
    assert started_first == sorted(swizzled.order(p) for p in range(r.occupancy.slots))
    assert started_first != list(range(r.occupancy.slots))
    [r], trace = traced([persistent(launch, 40)])
    assert len([e for e in slices(trace, 1) if e["name"].startswith("flash2")]) == 40


def test_unwritable_trace_path_is_one_line(tmp_path):
    results = simulate(H100, H100.ceilings(), [schedule(AttentionShape(q_heads=1, q_len=128), TileConfig())])
    with pytest.raises(MemsimError, match="cannot write trace file") as err:
        write_trace(str(tmp_path / "no" / "such" / "dir.json"), results)
    assert "\n" not in str(err.value)
