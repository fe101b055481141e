"""The discrete-event GPU model (SimPy): SMs, L2, HBM and the units of each SM."""

from memsim.engine.simulate import LaunchResult, simulate

__all__ = ["LaunchResult", "simulate"]
