"""Checks the test files share: a schedule's simulated counters against the closed form's KernelCost,
fast mode against faithful mode, the engine's prediction against the roofline's, and bad input
refused on one line.

A `cost` is a memsim.kernel.KernelCost; a `result` is a memsim.engine.simulate.LaunchResult, whose
`launch` is what the schedule handed the engine and whose `counters` (memsim.engine.machine.Counters)
hold the bytes per tensor at each level and the work per unit. Test files import these with
`from checks import ...`: pytest puts the tests folder on sys.path.
"""

import dataclasses

import pytest
from hypothesis import strategies as st

from memsim import predict
from memsim.workload import AttentionShape
from memsim.errors import MemsimError

# Byte counters the engine keeps per tensor (memsim.engine.machine.BYTE_KEYS); hbm_write_deferred is
# what is still dirty in L2 when a kernel ends and reaches HBM after it.
BYTE_KEYS = ("hbm_read", "hbm_write", "l2_read", "l2_write", "hbm_write_deferred")
# What the closed form gives per tensor; its hbm_write is everything written back, during the kernel or after.
TRAFFIC_KEYS = ("l2_read", "l2_write", "hbm_read", "hbm_write")
L2_KEYS = ("l2_read", "l2_write")


def fully_associative(gpu):
    """The GPU with an L2 that loses nothing to its sets (memsim.engine.l2cache, "Sets"): least recently used
    out first, once full. The closed forms assume that L2, so the engine's bytes equal theirs exactly there."""
    if gpu.calibration is None:
        return gpu
    return dataclasses.replace(gpu, calibration=dataclasses.replace(gpu.calibration, l2_ways=None))


# ---- the schedule against the closed form --------------------------------------------------------

def written_to_hbm(bytes_by_key: dict) -> float:
    """Bytes that reach HBM during the kernel or, still dirty in L2 at its end, after it."""
    return bytes_by_key["hbm_write"] + bytes_by_key["hbm_write_deferred"]


def assert_same_kernels(costs, results) -> None:
    """The engine ran the closed form's kernels, in its order."""
    assert [r.launch.name for r in results] == [c.name for c in costs]


def assert_same_launch(launch, cost) -> None:
    """Grid, warps per CTA, registers per thread and every shared-memory buffer as the closed form has them."""
    assert (launch.grid, launch.warps_per_cta, launch.registers_per_thread) == \
        (cost.grid_ctas, cost.warps_per_cta, cost.registers_per_thread), cost.name
    assert dict(launch.smem_buffers) == dict(cost.smem_buffers), cost.name


def assert_same_footprint(launch, cost) -> None:
    """Grid, shared-memory bytes per CTA and registers per thread as the closed form has them."""
    assert (launch.grid, launch.smem_bytes_per_cta, launch.registers_per_thread) == \
        (cost.grid_ctas, cost.smem_bytes_per_cta, cost.registers_per_thread), cost.name


def assert_same_work(cost, counters, rel: float = 1e-9) -> None:
    """Tensor-core FLOPs, CUDA-core ops and exp ops within `rel` of the closed form's."""
    assert counters.tensor_flops == pytest.approx(cost.tensor_flops, rel=rel), cost.name
    assert counters.cuda_ops == pytest.approx(cost.cuda_ops, rel=rel), cost.name
    assert counters.exp_ops == pytest.approx(cost.exp_ops, rel=rel), cost.name


def assert_same_tensors(cost, counters) -> None:
    """The engine moved bytes of exactly the tensors the closed form lists."""
    assert set(counters.by_tensor()) == set(cost.traffic), cost.name


def assert_same_bytes_per_tensor(cost, counters, keys=TRAFFIC_KEYS, rel: float = 1e-9, abs_bytes=None,
                                 skip=()) -> None:
    """Each tensor of the closed form moves the bytes it says under each of `keys` (see TRAFFIC_KEYS),
    within `rel` (and `abs_bytes`, if given), but for the (tensor, key) pairs in `skip`."""
    for tensor, t in cost.traffic.items():
        got = {key: getattr(counters, key).get(tensor, 0.0) for key in BYTE_KEYS}
        for key in keys:
            if (tensor, key) in skip:
                continue
            sim = written_to_hbm(got) if key == "hbm_write" else got[key]
            assert sim == pytest.approx(getattr(t, key), rel=rel, abs=abs_bytes), (cost.name, tensor, key)


def assert_same_total_bytes(cost, counters, keys=("hbm_write",), rel: float = 1e-9) -> None:
    """The kernel's bytes summed over tensors under each of `keys` (see TRAFFIC_KEYS) within `rel`."""
    sim, total = counters.totals(), cost.total
    for key in keys:
        got = written_to_hbm(sim) if key == "hbm_write" else sim[key]
        assert got == pytest.approx(getattr(total, key), rel=rel), (cost.name, key)


def assert_matches_closed_form(costs, results, hbm_too: bool = True) -> None:
    """Kernels, launch resources, work and L2 <-> SM bytes per tensor exactly; HBM bytes per tensor
    too unless `hbm_too` is False (they match only where everything fits in L2)."""
    assert_same_kernels(costs, results)
    for cost, r in zip(costs, results):
        assert_same_launch(r.launch, cost)
        assert_same_work(cost, r.counters)
        assert_same_tensors(cost, r.counters)
        keys = TRAFFIC_KEYS if hbm_too else L2_KEYS
        assert_same_bytes_per_tensor(cost, r.counters, keys)


def assert_kernel_matches_closed_form(cost, result, abs_bytes=None, skip=()) -> None:
    """One kernel's work, every tensor's bytes at L2 and at HBM (everything fits in L2) and its
    footprint as the closed form has them; `abs_bytes` and `skip` as in assert_same_bytes_per_tensor."""
    assert_same_work(cost, result.counters)
    assert_same_tensors(cost, result.counters)
    assert_same_bytes_per_tensor(cost, result.counters, abs_bytes=abs_bytes, skip=skip)
    assert_same_footprint(result.launch, cost)


# ---- fast mode against faithful mode ----------------------------------------------------------------

def assert_fast_matches_faithful(fast, faithful, latency_rel: float = 0.01, abs_bytes=None, also=()) -> None:
    """One launch run in fast mode and in faithful mode: latency within `latency_rel`, every byte
    counter within 1% (and `abs_bytes`, if given), tensor FLOPs, CUDA ops and the counters named in
    `also` (exp_ops, smem_bytes) within 1e-9."""
    assert fast.latency_s == pytest.approx(faithful.latency_s, rel=latency_rel), fast.launch.name
    for key in BYTE_KEYS:
        assert fast.counters.totals()[key] == pytest.approx(faithful.counters.totals()[key], rel=0.01,
                                                            abs=abs_bytes), (fast.launch.name, key)
    for name in ("tensor_flops", "cuda_ops", *also):
        got, want = getattr(fast.counters, name), getattr(faithful.counters, name)
        assert got == pytest.approx(want, rel=1e-9), (fast.launch.name, name)


# ---- the engine's prediction against the roofline's ------------------------------------------------

def assert_engine_within_factor_of_roofline(des, analytic, floor_s: float, latency_factor: float,
                                            label: str = "") -> None:
    """The engine's latency (`des`, a memsim.result.Prediction) within `latency_factor` of the
    roofline's (`analytic`) either way and no less than `floor_s`, the compulsory bytes at HBM
    bandwidth; prints the three after `label`."""
    ratio = des.latency_s / analytic.latency_s
    print(f"\n{label}engine {des.latency_s * 1e6:.1f} us, roofline {analytic.latency_s * 1e6:.1f} us "
          f"({ratio:.2f}x), compulsory bytes at HBM bandwidth {floor_s * 1e6:.2f} us")
    assert 1 / latency_factor <= ratio <= latency_factor
    assert des.latency_s >= floor_s


def assert_engine_runs_the_rooflines_kernels(algo: str, shape, pass_: str, floor_s: float, latency_factor: float,
                                             l2_reads_too: bool = False) -> None:
    """predict() with the engine runs the roofline's kernels in its order, each with the same tensor
    FLOPs (and L2 -> SM reads if `l2_reads_too`), and its latency is as
    assert_engine_within_factor_of_roofline has it."""
    des = predict(algo, shape, pass_=pass_, engine="des")
    analytic = predict(algo, shape, pass_=pass_)
    assert [k.name for k in des.kernels] == [k.name for k in analytic.kernels]
    for d, a in zip(des.kernels, analytic.kernels):
        assert d.tensor_flops == pytest.approx(a.tensor_flops, rel=1e-9)
        if l2_reads_too:
            assert d.bytes["l2_read"] == pytest.approx(a.bytes["l2_read"], rel=1e-9)
    assert_engine_within_factor_of_roofline(des, analytic, floor_s, latency_factor, label=f"{pass_}: ")


# ---- closed-form kernels ------------------------------------------------------------------------

def by_name(kernels) -> dict:
    """The closed form's kernels by name."""
    return {k.name: k for k in kernels}


def summed(kernels, tensor: str, key: str) -> float:
    """One tensor's bytes under `key` (a memsim.kernel.Traffic field) summed over the kernels that move it."""
    return sum(getattr(k.traffic[tensor], key) for k in kernels if tensor in k.traffic)


# ---- bad input ----------------------------------------------------------------------------------

def assert_refused_on_one_line(call, words) -> None:
    """`call()` raises MemsimError with a one-line message holding each of `words`."""
    with pytest.raises(MemsimError) as err:
        call()
    assert "\n" not in str(err.value)
    for w in words:
        assert w in str(err.value)


def assert_usage_error_on_one_line(code: int, out: str, err: str, words) -> None:
    """The memsim command exited 2, printed nothing on stdout and one `memsim: error:` line on
    stderr holding each of `words`."""
    assert code == 2, (code, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("memsim: error: "), err
    for w in words:
        assert w in lines[0]


@st.composite
def attention_shapes(draw, algo, kv_heads=(1, 2, 4, 8), groups=(1, 2, 4, 8), kv_len=(1, 16384), q_len=(1, 8192),
                     batch=(1, 4), head_dims=(32, 64, 80, 96, 128, 256), dtypes=("fp16", "bf16")):
    """Shapes `algo` models (memsim.algorithms.base.Algorithm's constraints): q_len 1 for decode
    kernels, causal where it is causal only, q_len == kv_len where its causal form needs it, one q head per kv
    head where it models no GQA.
    Ranges are (least, most) pairs; the others are the values to draw from."""
    heads = draw(st.sampled_from(kv_heads))
    group = draw(st.sampled_from(groups)) if algo.gqa else 1
    keys = draw(st.integers(*kv_len))
    queries = 1 if algo.decode_only else draw(st.integers(*q_len))
    causal = True if algo.causal_only else draw(st.booleans())
    if causal:
        keys = max(keys, queries)
        if algo.causal_needs_square:
            queries = keys = min(keys, q_len[1])
    return AttentionShape(batch=draw(st.integers(*batch)), q_heads=heads * group, kv_heads=heads, q_len=queries,
                          kv_len=keys, head_dim=draw(st.sampled_from(head_dims)), dtype=draw(st.sampled_from(dtypes)),
                          causal=causal)
