"""Dispatch orders: Triton's grouped ordering (its worked example), persistent grids, and the engine
running them without changing the work."""

import dataclasses

import pytest
from hypothesis import given, settings, strategies as st

from memsim import AttentionShape, MemsimError, TileConfig
from memsim.engine import simulate
from memsim.predict import run as run_prediction
from memsim.hardware import load_gpu
from memsim.schedules.flash2 import forward as schedule
from memsim.schedules.orders import grouped_tile, persistent, reorder, swizzle
from memsim.schedules.steps import CtaProgram, Launch, Load, Mma

from checks import fully_associative

H100 = load_gpu("H100-SXM5-80GB")
FIELDS = ("hbm_read", "hbm_write", "l2_read", "l2_write", "hbm_write_deferred")

# Triton tutorial 03-matrix-multiplication, "L2 Cache Optimizations": A and B are 9 x 9 blocks, so
# C is 9 x 9 output tiles; 9 programs run at once; GROUP_SIZE_M = 3 in the tutorial's figure.
BLOCKS = 9
TRITON_GROUP = 3
CONCURRENT = 9
BLOCK_BYTES = 64 * 64 * 2  # one 64 x 64 fp16 block (any size: the count is in blocks)


def matmul_launch(grid_rows: int = BLOCKS, grid_columns: int = BLOCKS, k_blocks: int = BLOCKS) -> Launch:
    """C = A @ B tile by tile: program (row, column) reads A's row panel and B's column panel,
    k_blocks blocks each; pid = row * grid_columns + column (row-major, as in the tutorial)."""
    def program(pid: int) -> CtaProgram:
        row, column = divmod(pid, grid_columns)
        loads = tuple(Load("A", row, k, BLOCK_BYTES) for k in range(k_blocks)) + \
            tuple(Load("B", column, k, BLOCK_BYTES) for k in range(k_blocks))
        return CtaProgram(prologue=loads + (Mma(2.0 * 64 * 64 * 64 * k_blocks, "fp16"),))

    return Launch(name="matmul", grid=grid_rows * grid_columns, warps_per_cta=4, smem_buffers={"tiles": 32768},
                  registers_per_thread=64, num_stages=1, program=program, work_class=lambda pid: pid)


def blocks_loaded(launch: Launch, programs: int) -> int:
    """The tutorial's count: distinct A row panels and B column panels the first `programs`
    dispatched programs touch, times the blocks in a panel."""
    order = launch.order or (lambda position: position)
    tiles = [divmod(order(position), BLOCKS) for position in range(programs)]
    rows, columns = {r for r, _ in tiles}, {c for _, c in tiles}
    return (len(rows) + len(columns)) * BLOCKS


def test_triton_grouped_ordering_loads_54_blocks_instead_of_90():
    row_major = blocks_loaded(matmul_launch(), CONCURRENT)
    grouped = blocks_loaded(swizzle(matmul_launch(), TRITON_GROUP, BLOCKS), CONCURRENT)
    print(f"blocks loaded for the first {CONCURRENT} outputs: row-major {row_major}, grouped {grouped}")
    assert (row_major, grouped) == (90, 54)


def first_wave(launch: Launch, programs: int) -> Launch:
    """The first `programs` dispatches of `launch` as a launch of their own."""
    order = launch.order or (lambda position: position)
    return dataclasses.replace(launch, grid=programs, order=None,
                               program=lambda position: launch.program(order(position)))


def test_the_engine_reads_the_same_54_and_90_blocks_from_hbm():
    """Cold L2: each distinct block comes from HBM once, however many of the 9 programs read it."""
    counts = {}
    for name, launch in (("row-major", matmul_launch()), ("grouped", swizzle(matmul_launch(), TRITON_GROUP, BLOCKS))):
        r = simulate(H100, H100.ceilings(), [first_wave(launch, CONCURRENT)])[0]
        counts[name] = r.counters.totals()["hbm_read"] / BLOCK_BYTES
        assert r.counters.totals()["l2_read"] == CONCURRENT * 2 * BLOCKS * BLOCK_BYTES  # 18 blocks per program
    print(f"blocks read from HBM by the first {CONCURRENT} programs: {counts}")
    assert counts == {"row-major": 90, "grouped": 54}


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 20), st.integers(1, 20), st.integers(1, 24))
def test_grouped_order_is_a_permutation_that_stays_within_its_band(rows, columns, group):
    launch = swizzle(matmul_launch(rows, columns, 1), group, columns)
    pids = [launch.order(p) for p in range(rows * columns)]
    assert sorted(pids) == list(range(rows * columns))
    for position in range(rows * columns):
        row, _ = grouped_tile(position, rows, columns, group)
        band = position // (group * columns)
        assert band * group <= row < min(rows, (band + 1) * group)


def test_group_of_one_row_is_program_id_order():
    launch = swizzle(matmul_launch(5, 7, 1), 1, 7)
    assert [launch.order(p) for p in range(35)] == list(range(35))


def test_swizzle_walks_a_band_column_by_column():
    launch = swizzle(matmul_launch(), TRITON_GROUP, BLOCKS)
    first = [divmod(launch.order(p), BLOCKS) for p in range(6)]
    assert first == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]


def run(launch: Launch, fast: bool = True):
    return simulate(H100, H100.ceilings(), [launch], fast=fast)[0]


def same_work(a, b):
    assert a.counters.tensor_flops == pytest.approx(b.counters.tensor_flops, rel=1e-12)
    assert a.counters.cuda_ops == pytest.approx(b.counters.cuda_ops, rel=1e-12)
    for key in ("l2_read", "l2_write"):
        assert a.counters.totals()[key] == pytest.approx(b.counters.totals()[key], rel=1e-12)


def test_persistent_grid_does_the_same_work_on_fewer_ctas():
    shape = AttentionShape(batch=2, q_heads=8, q_len=1024, causal=True)
    base = schedule(shape, TileConfig())
    folded = persistent(base, 20)
    assert folded.grid == 20 and base.grid == 2 * 8 * 8
    # fast mode batches every CTA's loop by the longest one: the chained loops, not one item's
    assert folded.loop_iterations == max(folded.program(c).loop.iterations for c in range(20)) > base.loop_iterations
    a, b = run(base), run(folded)
    same_work(a, b)
    # everything fits in L2: each input byte comes from HBM once either way; Q, private to each
    # work item, must not be mistaken for the previous item's Q
    q_bytes = 2 * 8 * 1024 * 128 * 2
    assert b.counters.hbm_read["Q"] == q_bytes == a.counters.hbm_read["Q"]
    assert a.counters.totals()["hbm_read"] == pytest.approx(b.counters.totals()["hbm_read"], rel=1e-12)
    print(f"latency: grid of {base.grid} {a.latency_s * 1e6:.1f} us, persistent 20 CTAs {b.latency_s * 1e6:.1f} us")
    assert b.latency_s > a.latency_s  # 20 CTAs use 20 of 132 SMs


def test_one_persistent_cta_runs_every_item_in_turn():
    shape = AttentionShape(batch=1, q_heads=2, q_len=512)
    base = schedule(shape, TileConfig())
    alone = run(dataclasses.replace(base, grid=1))
    serial = run(persistent(base, 1))
    print(f"one item {alone.latency_s * 1e6:.2f} us, {base.grid} items on one CTA {serial.latency_s * 1e6:.2f} us")
    assert serial.latency_s > (base.grid - 1) * (alone.latency_s - H100.ceilings().launch_overhead_s)


def fast_and_faithful(batch, kv_heads, n, causal, order, group=8, ctas=None, merge=True):
    """Fast and faithful runs of one reordered launch, after checking they do the same work and move
    the same bytes; `merge=False` gives every CTA its own class, so fast mode forms no cohorts."""
    shape = AttentionShape(batch=batch, q_heads=2 * kv_heads, kv_heads=kv_heads, q_len=n, dtype="fp16",
                           causal=causal)
    tiles = TileConfig(block_m=64, block_n=32)
    [launch], _ = reorder([schedule(shape, tiles)], order, H100, shape, group, ctas)
    if not merge:
        launch = dataclasses.replace(launch, work_class=lambda pid: pid)
    fast, faithful = run(launch, True), run(launch, False)
    for key in FIELDS:
        assert fast.counters.totals()[key] == pytest.approx(faithful.counters.totals()[key], rel=0.01)
    assert fast.counters.tensor_flops == pytest.approx(faithful.counters.tensor_flops, rel=1e-9)
    same_work(fast, run(schedule(shape, tiles)))
    return fast, faithful


@settings(max_examples=6, deadline=None)
@given(st.sampled_from([1, 2]), st.sampled_from([1, 2, 4]), st.integers(64, 900), st.booleans(), st.integers(1, 300))
def test_fast_mode_agrees_with_faithful_mode_on_a_persistent_grid(batch, kv_heads, n, causal, ctas):
    fast, faithful = fast_and_faithful(batch, kv_heads, n, causal, "persistent", ctas=ctas)
    assert fast.latency_s == pytest.approx(faithful.latency_s, rel=0.01)


@settings(max_examples=6, deadline=None)
@given(st.sampled_from([1, 2]), st.sampled_from([1, 2, 4]), st.integers(64, 900), st.booleans(), st.integers(1, 3),
       st.booleans())
def test_fast_mode_agrees_with_faithful_mode_when_swizzled(batch, kv_heads, n, causal, group, merge):
    fast, faithful = fast_and_faithful(batch, kv_heads, n, causal, "swizzle", group=group, merge=merge)
    assert fast.latency_s == pytest.approx(faithful.latency_s, rel=0.01)


def test_swizzled_cohorts_of_unequal_weight_agree_within_one_percent():
    """Swizzling GQA heads puts merged pairs of CTAs (two q heads, one K/V head) next to single CTAs.
    Before a cohort's private misses went to HBM with its weight, fast mode ran 17% fast here."""
    fast, faithful = fast_and_faithful(2, 4, 827, False, "swizzle", group=3)
    print(f"fast {fast.latency_s * 1e6:.2f} us, faithful {faithful.latency_s * 1e6:.2f} us")
    assert fast.latency_s == pytest.approx(faithful.latency_s, rel=0.01)


def test_reorder_notes_each_launch_and_keeps_pid_order_as_is():
    shape = AttentionShape(batch=1, q_heads=4, q_len=1024)
    tiles = TileConfig()
    launches = [schedule(shape, tiles)]
    assert reorder(launches, "pid", H100, shape) == (launches, [])
    _, notes = reorder(launches, "swizzle", H100, shape, group=2)
    assert notes == ["flash2_fwd: grouped dispatch, 2 (batch, head) rows of 8 CTAs at a time"]
    [folded], notes = reorder(launches, "persistent", H100, shape)
    assert folded.grid == 32 and notes == ["flash2_fwd: persistent grid of 32 CTAs, one work item each"]  # < 264 slots
    [folded], notes = reorder(launches, "persistent", H100, shape, ctas=10)
    assert folded.grid == 10 and notes == ["flash2_fwd: persistent grid of 10 CTAs, each looping over work items 10 apart"]
    one_per_head = [schedule(AttentionShape(batch=1, q_heads=4, q_len=128), tiles)]  # 4 CTAs, one per head
    assert reorder(one_per_head, "swizzle", H100, AttentionShape(batch=1, q_heads=4, q_len=128))[0] == one_per_head


def test_orders_change_nothing_but_time_in_a_prediction():
    """On an L2 that loses nothing to its sets below its capacity: there the order cannot change what hits."""
    shape = AttentionShape(batch=1, q_heads=16, q_len=2048)
    gpu = fully_associative(H100)
    base, _ = run_prediction("flash2", shape, gpu, engine="des")
    for order in ("swizzle", "persistent"):
        p, _ = run_prediction("flash2", shape, gpu, engine="des", order=order)
        assert p.flops == base.flops
        assert p.bytes["l2_read"] == base.bytes["l2_read"]
        assert p.bytes["hbm_read"] == base.bytes["hbm_read"]  # all fits in L2
        assert any(order in a or "grouped" in a for a in p.assumptions)


@pytest.mark.parametrize("call, words", [
    (lambda: swizzle(matmul_launch(), 0, BLOCKS), ["swizzle group = 0"]),
    (lambda: swizzle(matmul_launch(), 2, 4), ["matmul has 81 CTAs", "4 tiles"]),
    (lambda: persistent(matmul_launch(), 0), ["persistent CTAs = 0"]),
    (lambda: reorder([matmul_launch()], "zigzag", H100, AttentionShape()), ["'zigzag'", "swizzle"]),
])
def test_bad_orders_raise_one_line(call, words):
    with pytest.raises(MemsimError) as err:
        call()
    assert "\n" not in str(err.value)
    for w in words:
        assert w in str(err.value)


def test_causal_persistent_grid_hands_items_to_the_first_free_cta():
    """FlashAttention-3's DynamicPersistentTileScheduler (causal): with as many CTAs as fit, that is the block
    scheduler's own dispatch; with fewer, no more than that many ever run at once."""
    run = run_prediction
    shape = AttentionShape(batch=1, q_heads=8, q_len=2048, causal=True)
    pid, _ = run("flash3", shape, engine="des")
    full, _ = run("flash3", shape, engine="des", order="persistent")
    assert full.latency_s == pid.latency_s and full.bytes == pid.bytes
    assert any("next work item when it is free" in note for note in full.assumptions)
    half, launches = run("flash3", shape, engine="des", order="persistent", ctas=66)
    assert half.latency_s > pid.latency_s
    events = sorted([(c.start_s, c.weight) for c in launches[0].cohorts] + [(c.end_s, -c.weight)
                                                                             for c in launches[0].cohorts],
                    key=lambda e: (e[0], e[1]))  # ends before starts at the same instant
    running, most = 0, 0
    for _, change in events:
        running += change
        most = max(most, running)
    assert most == 66 and launches[0].occupancy.slots == 66


def _most_running(cohorts) -> int:
    events = sorted([(c.start_s, c.weight) for c in cohorts] + [(c.end_s, -c.weight) for c in cohorts],
                    key=lambda e: (e[0], e[1]))  # ends before starts at the same instant
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


@settings(max_examples=6, deadline=None)
@given(st.integers(1, 2), st.sampled_from([2, 4]), st.integers(200, 1200), st.integers(1, 140))
def test_a_dynamic_persistent_grid_never_runs_more_ctas_than_it_has_and_does_the_same_work(batch, heads, n, ctas):
    shape = AttentionShape(batch=batch, q_heads=heads, q_len=n, causal=True)
    plain, plain_runs = run_prediction("flash2", shape, engine="des")
    capped, runs = run_prediction("flash2", shape, engine="des", order="persistent", ctas=ctas)
    for launch in runs:
        assert _most_running(launch.cohorts) <= min(ctas, launch.launch.grid)
    assert capped.flops == plain.flops
    assert capped.bytes["l2_read"] == pytest.approx(plain.bytes["l2_read"], rel=1e-9)
    assert capped.latency_s >= plain.latency_s * (1 - 1e-9)  # fewer resident CTAs never help here
