"""The discrete-event GPU model: SMs, L2, HBM and the units of each SM. The SimPy engine (the modules here) is the
reference; the compiled engine (memsim/engine/core/, driven by compiled.py) runs the same model event for event and is
what simulate() uses where it is built."""

from memsim.engine.simulate import LaunchResult, simulate

__all__ = ["LaunchResult", "simulate"]
