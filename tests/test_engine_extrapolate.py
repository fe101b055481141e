"""Fast mode's extrapolation of very long launches (memsim.engine.extrapolate) against simulating
every wave: the issue's own target shape, FA2 forward B=1 H=64 N=131072 d=128 on an H100 (248 waves)."""

import sys

import pytest

import memsim.engine  # noqa: F401  (loads memsim.engine.simulate)
from memsim import AttentionShape, predict

SIMULATE = sys.modules["memsim.engine.simulate"]
SHAPE = AttentionShape(batch=1, q_heads=64, q_len=131072)


def test_extrapolated_launch_matches_the_fully_simulated_one(monkeypatch):
    fast = predict("flash2", SHAPE, engine="des")
    monkeypatch.setattr(SIMULATE, "_extrapolated", lambda *args: None)
    full = predict("flash2", SHAPE, engine="des")
    print(f"latency extrapolated {fast.latency_s * 1e3:.3f} ms, simulated {full.latency_s * 1e3:.3f} ms")
    assert fast.latency_s == pytest.approx(full.latency_s, rel=0.01)
    for key in ("hbm_read", "l2_read", "l2_write"):
        assert fast.bytes[key] == pytest.approx(full.bytes[key], rel=0.01), key
    written = lambda p: p.bytes["hbm_write"] + p.bytes["hbm_write_deferred"]  # noqa: E731
    assert written(fast) == pytest.approx(written(full), rel=0.01)
    assert fast.flops == pytest.approx(full.flops, rel=1e-9)


def test_short_launches_and_traces_are_simulated_in_full():
    from memsim.engine.extrapolate import short_grid
    from memsim.schedules.flash2 import forward
    from memsim.workload import TileConfig
    assert short_grid(forward(AttentionShape(q_len=4096), TileConfig()), slots=264) is None  # 4 waves
    assert short_grid(forward(SHAPE, TileConfig()), slots=264) is not None
