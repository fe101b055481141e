"""Simulated launches as a Chrome trace-event file (opens in ui.perfetto.dev or chrome://tracing).

One process per launch; in it one thread per SM that ran a CTA, with a slice per CTA, and one
thread each for HBM and L2 with a slice per interval in which the unit had work. Format: the
Trace Event Format (Google, "Trace Event Format" document): complete events ("ph": "X") with
"ts" and "dur" in microseconds, and metadata events ("ph": "M") naming processes and threads.
In fast mode a cohort of w identical CTAs is simulated once; it is drawn on each of its SMs,
each slice named by the program id that ran there, with the cohort's weight in its args. In a
persistent grid (memsim.schedules.orders.persistent) a program is one persistent CTA: its slice
spans all the work items it looped over.
"""

import json
import math

from memsim.engine.simulate import LaunchResult
from memsim.errors import MemsimError

US_PER_S = 1e6  # the format's timestamps are microseconds
UNIT_TRACKS = {"hbm": "HBM", "l2": "L2"}  # unit -> track name; their thread ids follow the SMs'


def _us(t_s: float) -> float:
    return round(t_s * US_PER_S, 6)  # picoseconds: finer than any simulated step, and stable in JSON


def _slice(name: str, start_s: float, end_s: float, pid: int, tid: int, args: dict | None = None) -> dict:
    ts = _us(start_s)
    event = {"ph": "X", "name": name, "ts": ts, "dur": max(0.0, _us(end_s) - ts), "pid": pid, "tid": tid}
    if args:
        event["args"] = args
    return event


def _meta(kind: str, name: str, pid: int, tid: int = 0, sort_index: int | None = None) -> list[dict]:
    events = [{"ph": "M", "name": kind, "ts": 0, "pid": pid, "tid": tid, "args": {"name": name}}]
    if sort_index is not None:
        sort_kind = "process_sort_index" if kind == "process_name" else "thread_sort_index"
        events.append({"ph": "M", "name": sort_kind, "ts": 0, "pid": pid, "tid": tid,
                       "args": {"sort_index": sort_index}})
    return events


def cta_slices(r: LaunchResult, pid: int) -> list[dict]:
    """A slice per CTA on the SM it ran on (member j of a cohort ran program id pids[j] on its j-th SM)."""
    launch = r.launch
    events = []
    for cohort in r.cohorts:
        for program_id, sm in zip(cohort.pids, cohort.sms):
            args = {"weight": cohort.weight, "cohort_first_pid": cohort.first_pid} if cohort.weight > 1 else None
            events.append(_slice(f"{launch.name} pid {program_id}", cohort.start_s, cohort.end_s, pid, sm, args))
    return events


def unit_slices(r: LaunchResult, unit: str, pid: int, tid: int) -> list[dict]:
    """Busy intervals of one unit; an interval still open when the launch ended closes there."""
    events = []
    for start_s, end_s in r.unit_intervals.get(unit) or []:
        end_s = r.end_s if math.isnan(end_s) else min(end_s, r.end_s)
        events.append(_slice(f"{UNIT_TRACKS[unit]} busy", start_s, end_s, pid, tid))
    return events


def chrome_trace(results: list[LaunchResult], title: str = "memsim") -> dict:
    """The trace of simulated launches (simulate(..., trace=True) for the HBM and L2 tracks)."""
    events: list[dict] = []
    for index, r in enumerate(results):
        pid = index + 1
        events += _meta("process_name", f"{r.launch.name} ({r.launch.grid} CTAs)", pid, sort_index=index)
        sms = sorted({sm for cohort in r.cohorts for sm in cohort.sms})
        first_unit_tid = max(sms, default=-1) + 1
        for offset, (unit, track) in enumerate(UNIT_TRACKS.items()):
            tid = first_unit_tid + offset
            events += _meta("thread_name", track, pid, tid, sort_index=offset)
            events += unit_slices(r, unit, pid, tid)
        for sm in sms:
            events += _meta("thread_name", f"SM {sm}", pid, sm, sort_index=len(UNIT_TRACKS) + sm)
        events += cta_slices(r, pid)
    return {"traceEvents": events, "displayTimeUnit": "ns", "otherData": {"title": title}}


def write_trace(path: str, results: list[LaunchResult], title: str = "memsim") -> None:
    trace = chrome_trace(results, title)
    try:
        with open(path, "w") as f:
            json.dump(trace, f)
    except OSError as err:
        raise MemsimError(f"cannot write trace file {path!r}: {err.strerror}") from err
