"""Every command on every preset: a table or JSON for what fits, one plain line for what cannot."""

import json

import pytest
from click.testing import CliRunner

from memsim.cli.main import cli
from memsim.hardware import preset_names
from memsim.models import model_names


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def refused_plainly(result) -> bool:
    from memsim.errors import MemsimError

    return isinstance(result.exception, MemsimError) and "\n" not in str(result.exception)


@pytest.mark.parametrize("gpu", preset_names())
def test_sram_fit_and_sweep_on_every_gpu(gpu):
    fit = invoke("sram-fit", "--gpu", gpu, "--seq", "2048", "--json")
    assert fit.exit_code == 0, fit.output
    data = json.loads(fit.output)
    assert set(data["paper_rule"]) == {"block_m", "block_n", "t_r", "t_c"}
    sweep = invoke("sweep", "--gpu", gpu, "--seq", "2048", "--block-m", "64,128", "--block-n", "64",
                   "--stages", "1,2", "--warps", "4", "--json")
    assert sweep.exit_code == 0, sweep.output
    assert json.loads(sweep.output)["best"] is not None


@pytest.mark.parametrize("model", model_names())
@pytest.mark.parametrize("gpu", preset_names())
def test_capacity_on_every_model_and_gpu(model, gpu):
    result = invoke("capacity", "--model", model, "--gpu", gpu, "--tp", "8", "--context", "4096", "--json")
    if result.exit_code == 0:
        data = json.loads(result.output)
        assert data["kv"]["bytes_per_token"] > 0 and data["max_batch"] is not None
    else:  # e.g. Llama-3-405B's weights on eight 24 GB cards: refused in one line with the numbers
        assert refused_plainly(result), result.output
        assert "GiB" in str(result.exception)
