import os

# Kernels run under the Triton interpreter wherever there is no GPU (shared/DESIGN.md); the variable
# must be set before any kernel module is imported, which happens at collection.
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # memsim alone runs without torch
    pass

import pytest
from hypothesis import HealthCheck, settings

# "ci": the CPU suite on every commit, the same examples every run (derandomized) so that a result
# is reproducible; "dev" explores new random examples on a developer machine; "gpu": many more
# examples, run on a GPU machine.
settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("gpu", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=15, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def memsim_cli(capsys):
    """Runs the memsim command in-process: memsim_cli("run", "file.yaml") -> (exit code, stdout, stderr)."""
    from memsim.cli.main import main

    def run(*args):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err
    return run
