"""Tile sweeps: each candidate's buffers, registers, CTAs per SM and fit come from the algorithm's own
closed form and the occupancy rules; latencies are memsim.predict's; the paper's block-size rule is
reported for the SRAM in use; the CLI (sram-fit, sweep) prints and writes what the library returns."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memsim import AttentionShape, TileConfig, predict
from memsim.algorithms import flash2
from memsim.algorithms.paper import paper_block_sizes
from memsim.errors import MemsimError
from memsim.hardware import load_gpu
from memsim.occupancy import occupancy
from memsim.sweep import candidate_grid, evaluate, paper_rule, rank, sram_fit, sweep, with_sram

from checks import assert_usage_error_on_one_line

H100 = load_gpu("H100-SXM5-80GB")
SMALL = AttentionShape(batch=1, q_heads=4, kv_heads=2, q_len=512, head_dim=64)
GRID = candidate_grid((32, 64, 128), (32, 64, 128, 256), (1, 2, 3), (4, 8))


def test_paper_rule_reproduces_the_papers_worked_example():
    """A100, 192 KiB of SRAM, fp16, d = 64, N = 1024: M = 98304 elements, B_c = 384, B_r = 64, T_r = 16,
    T_c = 3 (the numbers of tests/test_paper.py::test_worked_example_a100_d64_n1024)."""
    shape = AttentionShape(batch=1, q_heads=1, q_len=1024, head_dim=64, dtype="fp16")
    r = sram_fit("flash1", shape, "A100-SXM4-80GB", sram_bytes=192 * 1024, grid=[(64, 64, 1, 4)])
    print(f"\npaper rule: {r.paper_rule}, SRAM {r.paper_rule_sram}")
    assert r.paper_rule == {"block_n": 384, "block_m": 64, "t_r": 16, "t_c": 3}
    assert r.paper_rule_sram == {"bytes": 196608, "element_bytes": 2.0, "elements": 98304}
    assert r.paper_rule == paper_block_sizes(98304, 64, 1024)


def test_paper_rule_uses_the_gpus_own_limit_by_default_and_counts_key_tiles():
    shape = AttentionShape(q_len=1000, kv_len=3000, head_dim=128, dtype="fp32")
    rule, sram = paper_rule(shape, H100.smem_per_block_optin_bytes)
    assert sram["elements"] == 232448 // 4 == 58112
    assert (rule["block_n"], rule["block_m"]) == (114, 114)  # B_c = ceil(58112 / 512); B_r = min(B_c, d = 128)
    assert rule["t_r"] == -(-1000 // rule["block_m"]) and rule["t_c"] == -(-3000 // rule["block_n"])
    assert sram_fit("flash2", shape, H100, grid=[(64, 64, 1, 4)]).paper_rule == rule


def test_each_buffer_is_the_algorithms_own():
    r = sram_fit("flash2", SMALL, H100, grid=GRID)
    for c in r.candidates:
        tiles = TileConfig(block_m=c.block_m, block_n=c.block_n, num_stages=c.num_stages, num_warps=c.num_warps)
        assert c.smem_buffers == flash2.smem_buffers(SMALL, tiles)
        assert c.smem_bytes == sum(c.smem_buffers.values())
        assert c.kernel == "flash2_fwd" and c.latency_s is None


def test_fit_and_ctas_per_sm_follow_the_occupancy_rules():
    r = sram_fit("flash2", SMALL, H100, sram_bytes=64 * 1024, grid=GRID)
    gpu = with_sram(H100, 64 * 1024)
    assert r.sram_limit_bytes == 65536 and gpu.smem_per_sm_bytes == 65536 + 1024
    for c in r.candidates:
        assert c.fits == (c.smem_bytes <= 65536), c
        if c.fits:
            occ = occupancy(gpu, c.smem_bytes, c.num_warps, c.registers_per_thread, 1)
            assert (c.ctas_per_sm, c.limiter) == (occ.ctas_per_sm, occ.limiter)
        else:
            assert c.ctas_per_sm == 0 and f"shared memory {c.smem_bytes} B > 65536 B per CTA" in c.why_not


def test_a_candidate_needing_exactly_the_limit_fits():
    """128 x 64 tiles, d = 128, 2 stages: Q 32 KiB + 2 x (K 16 KiB + V 16 KiB) = 96 KiB."""
    shape = AttentionShape(q_len=1024, head_dim=128)
    exact = sram_fit("flash2", shape, H100, sram_bytes=96 * 1024, grid=[(128, 64, 2, 4)]).candidates[0]
    over = sram_fit("flash2", shape, H100, sram_bytes=96 * 1024 - 1, grid=[(128, 64, 2, 4)]).candidates[0]
    assert exact.smem_bytes == 98304 and exact.fits and not over.fits


def test_latencies_are_predict_and_the_best_is_the_fastest_that_does_not_spill():
    r = sweep("flash2", SMALL, H100, grid=GRID)
    for c in r.fitting:
        tiles = TileConfig(block_m=c.block_m, block_n=c.block_n, num_stages=c.num_stages, num_warps=c.num_warps)
        p = predict("flash2", SMALL, H100, tiles)
        assert (c.latency_s, c.bound) == (p.latency_s, p.bound)
    assert all(c.latency_s is None for c in r.candidates if not c.fits)
    quiet = [c for c in r.fitting if not c.warnings]
    assert r.best.latency_s == min(c.latency_s for c in quiet) and not r.best.warnings
    print(f"\nbest of {len(r.candidates)}: {r.best.tiles} at {r.best.latency_s * 1e6:.2f} us")


def test_register_estimate_over_the_limit_warns_of_spills():
    c = evaluate("flash2", AttentionShape(q_len=1024, head_dim=128), H100, (256, 256, 1, 4))
    assert c.registers_per_thread > 255 and "spills" in c.warnings[0]


def test_warps_beyond_the_register_file_do_not_fit():
    """16 warps x 255 registers (8192 per warp): 131072 registers, twice an H100 SM's 65536."""
    c = evaluate("flash2", AttentionShape(q_len=1024, head_dim=128), H100, (256, 128, 1, 16))
    assert not c.fits and "limited by registers" in c.why_not


def test_algorithm_errors_become_the_reason():
    c = evaluate("flash2", SMALL, H100, (64, 64, 1, 3))
    assert not c.fits and "num_warps = 3" in c.why_not and c.smem_buffers == {}


def test_parallel_workers_give_the_same_candidates():
    one = sweep("flash2", SMALL, H100, grid=GRID[:12], workers=1)
    two = sweep("flash2", SMALL, H100, grid=GRID[:12], workers=2, progress=True)
    assert one.as_dict() == two.as_dict()


def test_discrete_event_sweep():
    r = sweep("flash2", AttentionShape(q_heads=2, q_len=256, head_dim=64), H100, engine="des",
              grid=[(64, 64, 1, 4), (64, 32, 2, 4)], workers=1)
    assert r.engine == "des" and all(c.latency_s > 0 for c in r.candidates) and r.best is not None


@pytest.mark.parametrize("kwargs, words", [
    (dict(engine="fast"), ["engine 'fast'"]),
    (dict(pass_="bwd", algo="flash1"), ["flash1 models only the fwd pass"]),
    (dict(grid=[]), ["no tile candidates"]),
    (dict(sram_bytes=0), ["sram_bytes = 0"]),
])
def test_bad_requests_are_refused(kwargs, words):
    algo = kwargs.pop("algo", "flash2")
    with pytest.raises(MemsimError) as err:
        sweep(algo, SMALL, H100, **kwargs)
    for w in words:
        assert w in str(err.value)


@given(q_len=st.integers(1, 300), head_dim=st.sampled_from([32, 64, 80, 128]), kib=st.integers(16, 227),
       dtype=st.sampled_from(["fp16", "bf16", "fp32"]))
def test_more_sram_never_fits_fewer_candidates(q_len, head_dim, kib, dtype):
    shape = AttentionShape(q_heads=2, q_len=q_len, head_dim=head_dim, dtype=dtype)
    grid = candidate_grid((16, 64, 128), (16, 64, 128), (1, 2), (4,))
    small = sram_fit("flash2", shape, H100, sram_bytes=kib * 1024, grid=grid)
    large = sram_fit("flash2", shape, H100, sram_bytes=(kib + 32) * 1024, grid=grid)
    assert {tuple(c.tiles.values()) for c in small.fitting} <= {tuple(c.tiles.values()) for c in large.fitting}
    for c in small.candidates:
        assert c.fits == (c.smem_bytes <= kib * 1024)


def test_rank_puts_spills_last():
    r = sweep("flash2", AttentionShape(q_len=1024, head_dim=128), H100, grid=[(256, 256, 1, 4), (64, 64, 1, 4)])
    ordered = sorted(r.fitting, key=rank)
    assert not ordered[0].warnings and ordered[-1].warnings


def test_heatmaps_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    from memsim.plots.heatmap import block_size_heatmap

    for name, result in (("sweep.png", sweep("flash2", SMALL, H100, grid=GRID, sram_bytes=48 * 1024)),
                         ("fit.png", sram_fit("flash2", SMALL, H100, grid=GRID, sram_bytes=48 * 1024))):
        block_size_heatmap(result, tmp_path / name)
        assert (tmp_path / name).stat().st_size > 1000


# ---- the CLI -----------------------------------------------------------------------------------

SHAPE_ARGS = ("--heads", "4", "--kv-heads", "2", "--seq", "512", "--head-dim", "64", "--block-m", "32,64,128",
              "--block-n", "32,64,128", "--stages", "1,2", "--warps", "4")


def test_sram_fit_json_has_the_paper_rule(memsim_cli):
    code, out, _ = memsim_cli("sram-fit", "--json", "--sram-bytes", "96KiB", *SHAPE_ARGS)
    d = json.loads(out)
    assert code == 0 and d["sram_limit_bytes"] == 98304 and d["count"] == 18
    assert set(d["paper_rule"]) == {"block_m", "block_n", "t_r", "t_c"}
    assert d["paper_rule"] == paper_block_sizes(98304 // 2, 64, 512)
    assert d["candidates"][0]["smem_buffers"] and d["best"] is None


def test_sram_fit_table(memsim_cli):
    code, out, _ = memsim_cli("sram-fit", "--sram-bytes", "32KiB", *SHAPE_ARGS)
    assert code == 0
    for word in ("flash2 tiles on H100-SXM5-80GB", "SRAM/CTA", "no: SRAM", "paper rule", "candidates fit"):
        assert word in out


def test_sweep_json_best_matches_the_library(memsim_cli):
    code, out, err = memsim_cli("sweep", "--json", *SHAPE_ARGS)
    d = json.loads(out)
    grid = candidate_grid((32, 64, 128), (32, 64, 128), (1, 2), (4,))
    expected = sweep("flash2", SMALL, H100, grid=grid).best
    assert code == 0 and d["best"] == expected.as_dict() and d["engine"] == "analytic"


def test_sweep_takes_a_quantised_caches_scales(memsim_cli):
    args = ("sweep", "--json", "--algo", "flash_decoding", "--seq", "1", "--kv-seq", "8192", "--kv-dtype", "int8",
            "--kv-group-size", "32", "--block-m", "16", "--block-n", "64", "--stages", "2", "--warps", "4")
    _, fp16, _ = memsim_cli(*args)
    code, fp32, _ = memsim_cli(*args, "--kv-scale-dtype", "fp32")
    assert code == 0 and json.loads(fp32)["shape"]["kv_scale_dtype"] == "fp32"
    assert json.loads(fp32)["best"]["latency_s"] > json.loads(fp16)["best"]["latency_s"]  # a decode reads more


def test_sweep_table_and_heatmap(memsim_cli, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "heat.png"
    code, out, _ = memsim_cli("sweep", "--top", "3", "--plot", str(path), *SHAPE_ARGS)
    assert code == 0 and "best: BLOCK_M=" in out and "heatmap written" in out
    assert path.stat().st_size > 1000


@pytest.mark.parametrize("args, words", [
    (["sram-fit", "--block-m", "64,abc"], ["--block-m", "'64,abc'"]),
    (["sram-fit", "--warps", "0"], ["--warps", "'0'"]),
    (["sram-fit", "--sram-bytes", "96 TB/s"], ["--sram-bytes", "sram_bytes"]),
    (["sram-fit", "--sram-bytes", "0.5"], ["--sram-bytes"]),
    (["sweep", "--algo", "nope"], ["'--algo'", "nope"]),
    (["sweep", "--workers", "0"], ["--workers = 0"]),
    (["sweep", "--gpu", "H1000"], ["unknown GPU 'H1000'"]),
    (["sweep", "--heads", "32", "--kv-heads", "5"], ["q_heads = 32", "kv_heads = 5"]),
])
def test_bad_input_gets_one_line_and_exit_2(memsim_cli, args, words):
    code, out, err = memsim_cli(*args)
    assert_usage_error_on_one_line(code, out, err, words)
