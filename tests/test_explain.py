"""memsim.explain: each statement checked against the numbers in the prediction it explains, and the
new result fields (utilisation, achieved) against their definitions."""

import re

import pytest

from memsim import AttentionShape, TileConfig, predict
from memsim.cli.render import human_bytes
from memsim.explain import UNIT_NAMES, explain, reread_tensors
from memsim.hardware import load_gpu

from checks import fully_associative

ENGINES = ("analytic", "des")


def percents(line: str) -> list[int]:
    return [int(p) for p in re.findall(r"(\d+)%", line)]


def line_with(lines: list[str], pattern: str) -> str:
    """The one line that starts with `pattern` (a regular expression)."""
    found = [line for line in lines if re.match(pattern, line)]
    assert len(found) == 1, (pattern, lines)
    return found[0]


MEMORY, OCCUPANCY, WAVES = r"HBM \d+% busy", r"\d+ CTAs? per SM", r"\d+ CTAs in"


@pytest.mark.parametrize("engine", ENGINES)
def test_design_md_shape_is_explained_with_its_own_numbers(engine):
    """H100, flash2 forward, B=1 H=32 N=4096 d=128: 32 q blocks x 32 heads = 1024 CTAs; 96 KiB of
    shared memory per CTA (Q 128x128, K and V 2 x 64x128, bf16) -> 2 CTAs per SM -> 264 slots;
    4 waves, the last with 1024 - 3 x 264 = 232 CTAs = 88% of 264. On an L2 that loses nothing to its sets, so
    that K and V come from HBM exactly once."""
    p = predict("flash2", AttentionShape(), fully_associative(load_gpu("H100-SXM5-80GB")), engine=engine)
    k = p.main_kernel
    lines = explain(p)
    print("\n".join(lines))
    bound = lines[0]
    assert bound.startswith(f"compute-bound on {UNIT_NAMES[k.critical]}")
    assert f"{UNIT_NAMES[k.critical]} {round(100 * k.utilisation[k.critical])}%" in bound or \
        f"{round(100 * k.utilisation[k.critical])}% busy" in bound
    memory = line_with(lines, MEMORY)
    assert percents(memory)[:2] == [round(100 * k.utilisation["hbm"]), round(100 * k.utilisation["l2"])]
    assert reread_tensors(k) == ["K", "V"] and "K/V reads" in memory
    to_sms = k.bytes_by_tensor["K"]["l2_read"] + k.bytes_by_tensor["V"]["l2_read"]
    from_hbm = k.bytes_by_tensor["K"]["hbm_read"] + k.bytes_by_tensor["V"]["hbm_read"]
    assert to_sms == 2 * 32 * 32 * 4096 * 128 * 2  # every CTA reads its head's whole K and V
    assert from_hbm == 2 * 32 * 4096 * 128 * 2  # each head's K and V once: they fit in L2
    assert f"served {round(100 * (1 - from_hbm / to_sms))}%" in memory  # 1 - 1/32 = 97%
    assert human_bytes(to_sms) in memory and human_bytes(from_hbm) in memory
    occupancy = line_with(lines, OCCUPANCY)
    assert occupancy.startswith("2 CTAs per SM, limited by shared memory (96 KiB per CTA")
    waves = line_with(lines, WAVES)
    assert waves.startswith("1024 CTAs in 4 waves of 264; last wave 88% full")
    assert (k.grid_ctas, k.waves, k.slots) == (1024, 4, 264)


def test_analytic_compute_line_adds_up_the_compute_units():
    p = predict("flash2", AttentionShape())
    k = p.main_kernel
    bound = explain(p)[0]
    share = 1 - k.resource_s["launch"] / k.latency_s
    assert f"compute takes {round(100 * share)}% of the latency" in bound
    for unit in ("tensor", "cuda", "sfu"):
        assert f"{UNIT_NAMES[unit]} {round(100 * k.utilisation[unit])}%" in bound
    # the roofline adds a warp's matmul and softmax times: together they are the compute time
    assert sum(k.utilisation[u] for u in ("tensor", "cuda", "sfu")) == pytest.approx(share, rel=1e-9)


@pytest.mark.parametrize("engine", ENGINES)
def test_decode_reads_everything_once(engine):
    p = predict("flash2", AttentionShape(q_heads=8, q_len=1, kv_len=32768), engine=engine)
    lines = explain(p)
    print("\n".join(lines))
    assert "no tensor is read twice" in line_with(lines, MEMORY)
    waves = line_with(lines, WAVES)
    assert waves.startswith("8 CTAs in one wave: 3% of the GPU's 264 CTA slots")  # 8 / 264 = 3.0%


def test_des_decode_is_latency_bound_and_says_which_unit_is_busiest():
    p = predict("flash2", AttentionShape(q_heads=8, q_len=1, kv_len=32768), engine="des")
    k = p.main_kernel
    assert k.bound == "latency" and max(k.utilisation.values()) < 0.6
    line = explain(p)[0]
    busiest = max(k.utilisation, key=k.utilisation.get)
    assert line.startswith("latency-bound: no unit is 60% busy")
    assert f"busiest: {UNIT_NAMES[busiest]} {round(100 * k.utilisation[busiest])}%" in line
    assert "instructions" not in line  # none were given


def test_latency_line_names_the_loop_instructions_it_was_given():
    from memsim.resources import FIRST_LAUNCH, CtaResources

    shape = AttentionShape(q_heads=8, q_len=1, kv_len=32768)
    p = predict("flash2", shape, engine="des", resources={FIRST_LAUNCH: CtaResources(loop_instructions=1234.0)})
    assert p.main_kernel.loop_instructions == 1234.0 and p.as_dict()["kernels"][0]["loop_instructions"] == 1234.0
    assert "each warp issuing its 1,234 instructions per loop iteration in turn" in explain(p)[0]


def test_register_limited_occupancy_names_registers():
    """8 warps, 128 x 64 tiles, one stage: (128*128 + 128*64) / 256 + 32 = 128 registers per thread;
    128 x 32 = 4096 per warp, 65536 / 4096 = 16 warps = 2 CTAs, while 64 KiB of shared memory would allow 3."""
    p = predict("flash2", AttentionShape(), tiles=TileConfig(block_m=128, block_n=64, num_warps=8, num_stages=1))
    k = p.main_kernel
    assert (k.ctas_per_sm, k.occupancy_limiter, k.registers_per_thread) == (2, "registers", 128)
    assert line_with(explain(p), OCCUPANCY) == "2 CTAs per SM, limited by registers (128 per thread x 256 threads)"


def test_several_kernels_name_the_longest_and_its_share():
    p = predict("flash2", AttentionShape(q_len=2048), pass_="fwd+bwd")
    k = p.main_kernel
    first = explain(p)[0]
    assert first.startswith(f"{len(p.kernels)} kernels; {k.name} takes {round(100 * k.latency_s / p.latency_s)}%")


@pytest.mark.parametrize("engine", ENGINES)
def test_utilisation_and_achieved_follow_their_definitions(engine):
    p = predict("flash2", AttentionShape(q_len=2048, causal=True), engine=engine)
    d = p.as_dict()
    k = p.main_kernel
    units = {"analytic": {"tensor", "cuda", "sfu", "hbm", "l2"},
             "des": {"tensor", "cuda", "sfu", "smem", "issue", "hbm", "l2"}}[engine]
    assert set(d["utilisation"]) == units
    for unit in units:
        assert 0.0 <= k.utilisation[unit] <= 1.0 + 1e-9
        assert k.utilisation[unit] == pytest.approx(k.resource_s[unit] / k.latency_s, rel=1e-12)
    b = p.bytes
    assert d["achieved"] == pytest.approx({
        "tensor_flops_per_s": p.flops["tensor"] / p.latency_s,
        "hbm_bytes_per_s": (b["hbm_read"] + b["hbm_write"]) / p.latency_s,
        "l2_bytes_per_s": (b["l2_read"] + b["l2_write"]) / p.latency_s,
    }, rel=1e-12)
    assert d["critical_resource"] == k.critical


def test_call_utilisation_weights_each_kernel_by_its_latency():
    p = predict("flash2", AttentionShape(q_len=2048), pass_="fwd+bwd")
    expected = sum(k.utilisation["hbm"] * k.latency_s for k in p.kernels) / p.latency_s
    assert p.utilisation["hbm"] == pytest.approx(expected, rel=1e-12)
    assert min(k.utilisation["hbm"] for k in p.kernels) <= p.utilisation["hbm"] <= \
        max(k.utilisation["hbm"] for k in p.kernels)


def test_saturation_threshold_is_the_engines():
    from memsim.engine import report
    from memsim import explain as module
    assert module.SATURATED == report.SATURATED
