"""A launch's registers and shared memory as the launch reports them (memsim.resources)."""

import pytest

from memsim import AttentionShape, TileConfig, predict
from memsim.hardware import load_gpu

from checks import fully_associative
from memsim.errors import MemsimError
from memsim.resources import FIRST_LAUNCH, CtaResources

SHAPE = AttentionShape(batch=4, q_heads=32, q_len=4096, head_dim=64)
TILES = TileConfig(block_m=128, block_n=64, num_warps=4, num_stages=2)


@pytest.mark.parametrize("engine", ["analytic", "des"])
def test_measured_registers_set_the_occupancy_and_nothing_else(engine):
    """255 registers x 128 threads: 2 CTAs per SM where memsim's estimate allows more; bytes moved and FLOPs
    unchanged (in the DES, when written bytes reach HBM depends on timing: their sum with what stays dirty; and on
    an L2 that loses nothing to its sets, whose losses depend on what the CTAs resident at once touch)."""
    gpu = fully_associative(load_gpu("H100-SXM5-80GB"))
    own = predict("flash2", SHAPE, gpu, tiles=TILES, engine=engine)
    held = predict("flash2", SHAPE, gpu, tiles=TILES, engine=engine,
                   resources={"flash2_fwd": CtaResources(registers_per_thread=255)})
    assert own.kernels[0].ctas_per_sm > 2
    assert held.kernels[0].ctas_per_sm == 2 and held.kernels[0].occupancy_limiter == "registers"
    assert held.kernels[0].registers_per_thread == 255
    for key in ("hbm_read", "l2_read", "l2_write"):
        assert held.bytes[key] == own.bytes[key]
    written = [p.bytes["hbm_write"] + p.bytes["hbm_write_deferred"] for p in (own, held)]
    assert written[0] == pytest.approx(written[1])
    assert held.kernels[0].tensor_flops == own.kernels[0].tensor_flops


def test_measured_shared_memory_replaces_the_tile_buffers():
    held = predict("flash2", SHAPE, tiles=TILES, resources={FIRST_LAUNCH: CtaResources(smem_bytes=100_000)})
    k = held.kernels[0]
    assert k.smem_bytes_per_cta == 100_000 and k.ctas_per_sm == 2 and k.occupancy_limiter == "smem"


def test_resources_for_a_launch_the_pass_lacks_are_refused_with_its_launches_named():
    with pytest.raises(MemsimError, match="no launch named 'combine'.*flash2_fwd"):
        predict("flash2", SHAPE, tiles=TILES, resources={"combine": CtaResources(registers_per_thread=64)})


@pytest.mark.parametrize("bad, message", [
    (dict(registers_per_thread=0), "registers_per_thread = 0 must be a positive whole number"),
    (dict(registers_per_thread=256), "at most 255"),
    (dict(smem_bytes=-1), "smem_bytes = -1 must be a positive whole number"),
    (dict(loop_instructions=0), "loop_instructions = 0 must be a positive number"),
    (dict(loop_instructions=float("inf")), "loop_instructions = inf must be a positive number"),
    (dict(loop_instructions=True), "loop_instructions = True must be a positive number"),
])
def test_bad_resources_are_one_clear_line(bad, message):
    with pytest.raises(MemsimError, match=message):
        CtaResources(**bad)


def test_the_cli_takes_a_third_party_launch_config(memsim_cli):
    """README, third-party kernels: PyTorch's FA2 at d=128 runs 128 threads, 255 registers, 64 KiB per CTA."""
    import json

    code, out, _ = memsim_cli("predict", "--engine", "analytic", "--json", "--block-m", "128", "--block-n", "64",
                              "--warps", "4", "--stages", "1", "--registers", "255", "--smem-bytes", "65536")
    k = json.loads(out)["kernels"][0]
    assert code == 0 and (k["registers_per_thread"], k["smem_bytes_per_cta"], k["ctas_per_sm"]) == (255, 65536, 2)
    code, out, err = memsim_cli("predict", "--engine", "analytic", "--registers", "300")
    assert code != 0 and "at most 255" in err and "Traceback" not in out + err


def test_the_cli_takes_loop_instructions_for_the_des_only(memsim_cli):
    import json

    small = ("--heads", "4", "--seq", "1024", "--json")
    code, out, _ = memsim_cli("predict", *small, "--loop-instructions", "20000")
    _, plain, _ = memsim_cli("predict", *small)
    assert code == 0 and json.loads(out)["latency_s"] > json.loads(plain)["latency_s"]
    assert json.loads(out)["utilisation"]["issue"] > 0 == json.loads(plain)["utilisation"]["issue"]
    code, out, err = memsim_cli("predict", "--engine", "analytic", "--loop-instructions", "400")
    assert code != 0 and "needs --engine des" in err and "Traceback" not in out + err
    code, out, err = memsim_cli("predict", "--loop-instructions", "-4")
    assert code != 0 and "loop_instructions = -4.0 must be a positive number" in err and "Traceback" not in out + err
