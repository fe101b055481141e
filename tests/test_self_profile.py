"""validation.self_profile.profiled: the probes' profiling pass warms every launch up, then runs each inside its own
NVTX range between cudaProfilerStart and Stop (what ncu sees), in the order given."""

import types

import torch

from validation import self_profile


def test_profiled_warms_every_launch_then_runs_each_in_its_range(monkeypatch):
    events = []
    cudart = types.SimpleNamespace(cudaProfilerStart=lambda: events.append("start"),
                                   cudaProfilerStop=lambda: events.append("stop"))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: events.append("sync"))
    monkeypatch.setattr(torch.cuda, "cudart", lambda: cudart)
    monkeypatch.setattr(torch.cuda.nvtx, "range_push", lambda label: events.append(f"push {label}"))
    monkeypatch.setattr(torch.cuda.nvtx, "range_pop", lambda: events.append("pop"))
    self_profile.profiled([("a", lambda: events.append("run a")), ("b", lambda: events.append("run b"))])
    assert events == ["run a", "run b", "sync", "start", "push a", "run a", "pop", "push b", "run b", "pop", "sync",
                      "stop"]


def test_profiled_launches_keeps_ncus_csv_and_parses_its_launches(monkeypatch, tmp_path):
    csv = ('"ID","Kernel Name","Metric Name","Metric Unit","Metric Value"\n'
           '"0","case_a/kern","dram__bytes_read.sum","byte","1,024"\n')
    done = types.SimpleNamespace(stdout="==PROF== ncu starts\n" + csv, stderr="==PROF== done")
    monkeypatch.setattr(self_profile, "profile", lambda script, metrics: done)
    launches = self_profile.profiled_launches("probe.py", ["dram__bytes_read.sum"], tmp_path / "out", "probe-ncu.csv")
    assert (tmp_path / "out" / "probe-ncu.csv").read_text() == done.stdout + done.stderr
    assert [(launch["range"], launch["dram__bytes_read.sum"]) for launch in launches] == [("case_a", 1024.0)]
