"""The warp schedulers: a launch's loop instructions (Launch.loop_instructions) on each SM's issue pipe.

A warp alone issues one instruction every `warp_cycles_per_instruction` clocks; an SM's schedulers issue at most
WARP_SCHEDULERS_PER_SM instructions per clock for all its warps together (memsim.engine.cta.compute)."""

import dataclasses

import pytest
from hypothesis import given, settings, strategies as st

from memsim import AttentionShape, TileConfig
from memsim.engine import simulate
from memsim.engine.machine import WARP_SCHEDULERS_PER_SM
from memsim.hardware import load_gpu
from memsim.schedules.flash2 import forward as schedule

from checks import assert_fast_matches_faithful

H100 = load_gpu("H100-SXM5-80GB")
CEILINGS = H100.ceilings()


def run(shape, tiles, instructions, fast=True, ceilings=CEILINGS):
    launch = dataclasses.replace(schedule(shape, tiles), loop_instructions=instructions)
    return simulate(H100, ceilings, [launch], fast=fast)[0]


def one_wave():
    """32 CTAs of 4 warps, one per SM: each SM's schedulers hold one warp each."""
    return AttentionShape(batch=1, q_heads=2, q_len=1024, head_dim=64), TileConfig(block_m=64, block_n=64, num_warps=4)


def test_no_instruction_count_changes_nothing():
    shape, tiles = one_wave()
    plain = simulate(H100, CEILINGS, [schedule(shape, tiles)])[0]
    none = run(shape, tiles, None)
    assert none.latency_s == plain.latency_s and none.busy_s["issue"] == 0.0


def test_a_lone_warp_issues_once_every_cycles_per_instruction():
    # With 20,000 instructions per iteration the instruction chain dwarfs the CTA's work: each CTA's loop takes
    # iterations x instructions x cycles per instruction / clock, and the launch no less than its longest CTA.
    shape, tiles = one_wave()
    instructions = 20_000
    result = run(shape, tiles, instructions)
    iterations = shape.kv_len // tiles.block_n
    chain_s = iterations * instructions * CEILINGS.warp_cycles_per_instruction / H100.clock_hz
    assert chain_s <= result.latency_s <= 1.05 * chain_s


def test_the_schedulers_cap_what_many_warps_issue():
    # One cycle per instruction: no latency to hide, so 16 warps per SM (4 per scheduler) are bound by issue:
    # the SM issues 4 instructions per clock, and the pipe's busy time is the instructions over that rate.
    shape = AttentionShape(batch=1, q_heads=16, q_len=1024, head_dim=64)
    tiles = TileConfig(block_m=64, block_n=64, num_warps=4)
    instructions = 20_000
    result = run(shape, tiles, instructions, ceilings=dataclasses.replace(CEILINGS, warp_cycles_per_instruction=1.0))
    iterations = shape.kv_len // tiles.block_n
    total = result.launch.grid * tiles.num_warps * iterations * instructions
    issue_s = total / (WARP_SCHEDULERS_PER_SM * H100.clock_hz * H100.sm_count)  # every SM's schedulers, all busy
    assert result.busy_s["issue"] == pytest.approx(issue_s, rel=1e-6)
    assert result.latency_s >= issue_s


@settings(max_examples=10, deadline=None)
@given(st.floats(50, 5000), st.floats(1.05, 3.0))
def test_more_instructions_are_never_faster(instructions, factor):
    shape, tiles = one_wave()
    assert run(shape, tiles, instructions * factor).latency_s >= run(shape, tiles, instructions).latency_s * (1 - 1e-9)


@settings(max_examples=6, deadline=None)
@given(st.sampled_from([1, 2]), st.integers(128, 1100), st.booleans(), st.sampled_from([64, 128]),
       st.sampled_from([100.0, 400.0, 2000.0]))
def test_fast_mode_agrees_with_faithful_mode(batch, n, causal, d, instructions):
    shape = AttentionShape(batch=batch, q_heads=4, kv_heads=2, q_len=n, head_dim=d, causal=causal)
    tiles = TileConfig(block_m=64, block_n=32, num_warps=4, num_stages=2)
    assert_fast_matches_faithful(run(shape, tiles, instructions, True), run(shape, tiles, instructions, False))


def test_the_instruction_chain_never_shortens_a_kernel():
    # The chain is the larger of the steps' work and the warp's instructions: a few instructions change nothing.
    shape, tiles = one_wave()
    assert run(shape, tiles, 1.0).latency_s == pytest.approx(run(shape, tiles, None).latency_s, rel=1e-12)
