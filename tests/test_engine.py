"""The discrete-event engine against itself (fast vs faithful) and against the closed form."""

import pytest
from hypothesis import given, settings, strategies as st

from memsim import AttentionShape, TileConfig, predict
from memsim.algorithms.flash2 import forward as closed_form
from memsim.engine import simulate
from memsim.hardware import load_gpu
from memsim.schedules.flash2 import forward as schedule

from checks import assert_fast_matches_faithful, assert_same_total_bytes, assert_same_work, fully_associative

H100 = load_gpu("H100-SXM5-80GB")


def run(shape, tiles, fast, gpu=H100):
    return simulate(gpu, gpu.ceilings(), [schedule(shape, tiles)], fast=fast)[0]


def test_design_md_case_bytes_match_the_closed_form_exactly():
    """On an L2 that loses nothing to its sets, as the closed form assumes (the H100's loses 2% of K/V here)."""
    shape = AttentionShape(batch=1, q_heads=16, q_len=4096)
    tiles = TileConfig()
    sim = run(shape, tiles, fast=True, gpu=fully_associative(H100)).counters
    print({k: f"{v / 1e6:.1f} MB" for k, v in sim.totals().items()})
    # hbm_write: everything written reaches HBM, during the kernel or after it (O stays dirty in L2 here).
    assert_same_total_bytes(closed_form(H100, shape, tiles), sim, ("hbm_read", "l2_read", "l2_write", "hbm_write"))


@settings(max_examples=8, deadline=None)
@given(st.sampled_from([1, 2]), st.sampled_from([1, 2, 4]), st.integers(64, 1100), st.booleans(),
       st.sampled_from([64, 128]), st.sampled_from([(64, 32), (128, 64)]), st.integers(1, 3))
def test_fast_mode_agrees_with_faithful_mode(batch, kv_heads, n, causal, d, blocks, stages):
    shape = AttentionShape(batch=batch, q_heads=2 * kv_heads, kv_heads=kv_heads, q_len=n, head_dim=d,
                           dtype="fp16", causal=causal)
    tiles = TileConfig(block_m=blocks[0], block_n=blocks[1], num_stages=stages)
    fast, faithful = run(shape, tiles, True), run(shape, tiles, False)
    assert_fast_matches_faithful(fast, faithful)


@settings(max_examples=8, deadline=None)
@given(st.sampled_from([2, 4, 8]), st.integers(256, 1100), st.sampled_from([64, 128]),
       st.sampled_from([(64, 32), (128, 64)]), st.integers(1, 3), st.sampled_from([0.25, 1.0]))
def test_fast_mode_agrees_with_faithful_mode_under_l2_pressure(heads, n, d, blocks, stages, l2_mb):
    """A small L2 and a short dirty lifetime, so that merged CTAs' private Q and O tiles are evicted and
    written back mid-kernel: a cohort's one entry must leave L2 as its members' tiles would."""
    import dataclasses
    gpu = dataclasses.replace(H100, l2_bytes=l2_mb * 2**20)
    ceilings = dataclasses.replace(gpu.ceilings(), l2_dirty_lifetime_bytes=l2_mb * 2**19,
                                   l2_dirty_resident_bytes=l2_mb * 2**18)
    shape = AttentionShape(batch=2, q_heads=heads, q_len=n, head_dim=d, dtype="fp16")
    launch = schedule(shape, TileConfig(block_m=blocks[0], block_n=blocks[1], num_stages=stages))
    fast, faithful = (simulate(gpu, ceilings, [launch], fast=f)[0] for f in (True, False))
    assert_fast_matches_faithful(fast, faithful)


def test_work_matches_the_closed_form():
    shape = AttentionShape(batch=2, q_heads=4, q_len=1000, causal=True)
    tiles = TileConfig()
    assert_same_work(closed_form(H100, shape, tiles), run(shape, tiles, fast=True).counters)


def test_hbm_reads_between_compulsory_and_l2_reads():
    shape = AttentionShape(batch=2, q_heads=32, q_len=16384)  # K/V 268 MB: far more than L2
    sim = run(shape, TileConfig(), fast=True).counters.totals()
    compulsory = 3 * 2 * 32 * 16384 * 128 * 2
    assert compulsory <= sim["hbm_read"] <= sim["l2_read"]


def test_memory_bound_decode_gets_faster_with_hbm_bandwidth():
    """Invariants over every algorithm are in test_engine_invariants.py; here the effect must be real:
    Flash-Decoding spreads a decode step over 64K keys across the SMs (FA2's 8 CTAs alone are
    latency-bound, which is why split-KV exists), so it is HBM-bound and twice the bandwidth must cut its time."""
    import dataclasses
    shape = AttentionShape(batch=4, q_heads=32, kv_heads=8, q_len=1, kv_len=65536)
    base = dataclasses.replace(H100, calibration=None)
    wider = dataclasses.replace(base, hbm_bandwidth_bytes_per_s=2 * base.hbm_bandwidth_bytes_per_s)
    slow = predict("flash_decoding", shape, base, engine="des")
    fast = predict("flash_decoding", shape, wider, engine="des")
    assert slow.bound == "memory"
    print(f"decode at 3.35 TB/s: {slow.latency_s * 1e6:.1f} us, at 6.7 TB/s: {fast.latency_s * 1e6:.1f} us")
    assert fast.latency_s < 0.9 * slow.latency_s


def test_deterministic():
    shape = AttentionShape(q_len=2048, causal=True)
    assert predict("flash2", shape, engine="des").as_dict() == predict("flash2", shape, engine="des").as_dict()


def test_tile_that_does_not_fit_is_refused():
    from memsim.errors import MemsimError
    with pytest.raises(MemsimError, match="shared memory"):
        predict("flash2", AttentionShape(), engine="des", tiles=TileConfig(block_m=256, block_n=256, num_stages=4))


def test_progress_counts_every_cta_of_every_launch_once_in_order():
    """memsim predict's progress bar: CTAs done never go back and end at the launches' total."""
    from memsim.schedules import standard
    shape = AttentionShape(batch=1, q_heads=4, q_len=512)
    launches = standard.forward(shape, TileConfig(), H100.smem_per_block_optin_bytes)  # three launches
    seen = []
    simulate(H100, H100.ceilings(), launches, progress=lambda done, total: seen.append((done, total)))
    total = sum(launch.grid for launch in launches)
    assert seen and all(t == total for _, t in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and seen[-1][0] == total
