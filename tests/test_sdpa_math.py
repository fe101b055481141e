"""PyTorch's math path (memsim.algorithms.sdpa_math, memsim.schedules.sdpa_math): its launches against the ones
ncu recorded, its bytes against the closed form, and what it refuses."""

from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from memsim import AttentionShape, predict
from memsim.algorithms import sdpa_math
from memsim.engine import simulate
from memsim.hardware import load_gpu

from validation.compare import load_rows

from checks import assert_matches_closed_form, assert_refused_on_one_line

H100 = load_gpu("H100-SXM5-80GB")
RESULTS = Path(__file__).parents[1] / "validation" / "results" / "h100"
ELEMENTWISE_PREFIX = "void at::native::"


def launches(shape, engine="analytic"):
    return predict("sdpa_math", shape, H100, engine=engine).kernels


def recorded_math_rows() -> list[dict]:
    return [row for row in load_rows(RESULTS) if row["kernel"] == "sdpa_math" and row.get("launches")]


@pytest.mark.parametrize("row", recorded_math_rows(), ids=lambda row: row["id"])
def test_every_recorded_launch_is_modelled_and_pytorchs_own_kernels_have_its_grids(row):
    """As many launches as ncu recorded for the math path; each of PyTorch's elementwise kernels has the grid
    ncu reported, position by position (the GEMMs and the softmax keep memsim's own tiles)."""
    shape = AttentionShape(batch=row["batch"], q_heads=row["q_heads"], kv_heads=row["kv_heads"], q_len=row["q_len"],
                           kv_len=row["kv_len"], head_dim=row["head_dim"], dtype=row["dtype"], causal=row["causal"])
    ours = launches(shape)
    assert len(ours) == len(row["launches"])
    elementwise = [(k, m) for k, m in zip(ours, row["launches"]) if m["kernel"].startswith(ELEMENTWISE_PREFIX)]
    assert len(elementwise) == len(ours) - 3  # all but the two GEMMs and the softmax
    for kernel, measured in elementwise:
        assert kernel.name.startswith("math_"), kernel.name
        assert kernel.grid_ctas == measured["launch__grid_size"], (kernel.name, measured["kernel"][:80])


def test_causal_adds_the_mask_its_bias_and_nothing_else():
    plain = [k.name for k in launches(AttentionShape(q_heads=4, q_len=512, head_dim=64))]
    causal = [k.name for k in launches(AttentionShape(q_heads=4, q_len=512, head_dim=64, causal=True))]
    assert [n for n in causal if n not in plain] == ["math_mask_fill", "math_mask_tril", "math_fill_zero",
                                                     "math_fill_neg_inf", "math_bias", "math_add_bias"]
    assert [n for n in causal if n in plain] == plain


def test_fp32_inputs_skip_the_casts_and_the_gemms_read_the_inputs():
    kernels = launches(AttentionShape(q_heads=4, q_len=512, head_dim=64, dtype="fp32"))
    names = [k.name for k in kernels]
    assert not [n for n in names if "cast" in n]
    qk = next(k for k in kernels if k.name == "math_qk")
    assert {"Q", "K"} <= set(qk.bytes_by_tensor)


@settings(max_examples=8, deadline=None)
@given(batch=st.integers(1, 2), heads=st.integers(1, 4), n=st.integers(16, 600), m=st.integers(16, 600),
       d=st.sampled_from([32, 64, 128]), causal=st.booleans(), dtype=st.sampled_from(["fp16", "bf16", "fp32"]))
def test_s_and_p_cross_l2_as_often_as_the_path_reads_them(batch, heads, n, m, d, causal, dtype):
    """S is read by the softmax and the masked-row check (and the bias addition, causal); P by the where, the
    cast back (half inputs) and the P V GEMM, each in fp32: the closed form's L2 reads of S and P."""
    shape = AttentionShape(batch=batch, q_heads=heads, q_len=n, kv_len=max(m, n) if causal else m, head_dim=d,
                           dtype=dtype, causal=causal)
    kernels = launches(shape)
    scores_bytes = 4.0 * batch * heads * shape.q_len * shape.kv_len
    s_reads = sum(k.bytes_by_tensor.get("S", {}).get("l2_read", 0.0) for k in kernels)
    p_reads = sum(k.bytes_by_tensor.get("P", {}).get("l2_read", 0.0) for k in kernels)
    softmax = next(k for k in kernels if k.name == "math_softmax")
    softmax_passes = softmax.bytes_by_tensor["S"]["l2_read"] / scores_bytes  # 1, or 3 when a row is too big
    assert s_reads == pytest.approx(scores_bytes * (softmax_passes + 1 + causal))
    assert p_reads == pytest.approx(scores_bytes * (3 if dtype != "fp32" else 2))
    standard = predict("standard", shape, H100).bytes
    assert sum(k.bytes["hbm_read"] for k in kernels) > standard["hbm_read"]


@pytest.mark.parametrize("shape", [
    AttentionShape(batch=1, q_heads=2, q_len=256, head_dim=64, dtype="bf16"),
    AttentionShape(batch=2, q_heads=2, q_len=200, kv_len=300, head_dim=64, dtype="fp16", causal=True),
], ids=["bf16", "fp16-causal-uneven"])
def test_the_engine_runs_the_closed_forms_kernels_and_moves_its_bytes(shape):
    """Small enough for L2 to hold everything: every launch, its work and every tensor's bytes at L2 and HBM."""
    assert_engine_matches_the_closed_form(shape)


@settings(max_examples=5, deadline=None)
@given(batch=st.integers(1, 2), heads=st.integers(1, 3), n=st.integers(1, 300), m=st.integers(1, 300),
       d=st.sampled_from([32, 64]), causal=st.booleans(), dtype=st.sampled_from(["fp16", "bf16", "fp32"]))
def test_the_engine_matches_the_closed_form_on_any_small_shape(batch, heads, n, m, d, causal, dtype):
    assert_engine_matches_the_closed_form(AttentionShape(batch=batch, q_heads=heads, q_len=n,
                                                         kv_len=max(m, n) if causal else m, head_dim=d, dtype=dtype,
                                                         causal=causal))


def assert_engine_matches_the_closed_form(shape):
    tiles = sdpa_math.default_tiles(H100, shape)
    costs = sdpa_math.kernels(H100, shape, tiles, "fwd")
    assert_matches_closed_form(costs, simulate(H100, H100.ceilings(), sdpa_math.schedule(shape, tiles, "fwd", H100)))


def test_gqa_and_the_backward_are_refused_by_name():
    gqa = AttentionShape(q_heads=8, kv_heads=2, q_len=256, head_dim=64)
    for engine in ("analytic", "des"):
        assert_refused_on_one_line(lambda: predict("sdpa_math", gqa, H100, engine=engine),
                                   ["sdpa_math", "q_heads = 8", "kv_heads = 2", "standard"])
    assert_refused_on_one_line(lambda: predict("sdpa_math", AttentionShape(q_len=256), H100, pass_="bwd"),
                               ["sdpa_math", "fwd", "'bwd'"])


@pytest.mark.parametrize("engine", ["analytic", "des"])
def test_a_window_or_another_kv_dtype_is_refused_by_name(engine):
    window = AttentionShape(q_heads=4, q_len=1024, head_dim=64, window=128)
    assert_refused_on_one_line(lambda: predict("sdpa_math", window, H100, engine=engine),
                               ["sdpa_math", "window = 128", "standard"])
    int8 = AttentionShape(q_heads=4, q_len=1024, head_dim=64, kv_dtype="int8")
    assert_refused_on_one_line(lambda: predict("sdpa_math", int8, H100, engine=engine),
                               ["sdpa_math", "kv_dtype = int8", "dtype = bf16"])

