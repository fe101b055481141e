"""The Triton kernels that run memsim's schedules on a real GPU, each beside its float64 reference.

Imports torch and triton (the `kernels` extra); memsim itself never imports this package.
"""
