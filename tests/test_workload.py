import pytest

from memsim.errors import MemsimError
from memsim.workload import AttentionShape, TileConfig

from checks import assert_refused_on_one_line


def test_defaults_fill_kv_fields_from_q_fields():
    s = AttentionShape(q_heads=8, q_len=100, dtype="fp16")
    assert (s.kv_heads, s.kv_len, s.kv_dtype) == (8, 100, "fp16")
    assert s.group_size == 1 and not s.is_decode


def test_gqa_group_and_decode():
    s = AttentionShape(q_heads=32, kv_heads=8, q_len=1, kv_len=4096)
    assert s.group_size == 4 and s.is_decode


@pytest.mark.parametrize("kwargs, words", [
    (dict(q_heads=32, kv_heads=6), ["q_heads = 32", "kv_heads = 6"]),
    (dict(q_len=0), ["q_len = 0", "positive"]),
    (dict(kv_len=-3), ["kv_len = -3"]),
    (dict(head_dim=2.5), ["head_dim = 2.5"]),
    (dict(batch=True), ["batch = True"]),
    (dict(dtype="int8"), ["dtype = 'int8'", "bf16"]),
    (dict(kv_dtype="int3"), ["kv_dtype = 'int3'", "int4"]),
    (dict(window=0), ["window = 0"]),
    (dict(q_len=10, kv_len=5, causal=True), ["q_len = 10", "kv_len = 5"]),
])
def test_bad_shapes_are_refused_in_one_line(kwargs, words):
    assert_refused_on_one_line(lambda: AttentionShape(**kwargs), words)


def test_causal_scores_are_the_lower_triangle():
    n = 1000
    assert AttentionShape(q_len=n, causal=True).scores() == n * (n + 1) // 2
    # Decode-style causal: queries aligned to the end of the keys.
    assert AttentionShape(q_len=2, kv_len=10, causal=True).scores() == 9 + 10


def test_sliding_window_caps_each_row():
    s = AttentionShape(q_len=100, causal=True, window=10)
    assert s.scores() == sum(min(i + 1, 10) for i in range(100))


def test_quantised_kv_counts_scale_bytes():
    s = AttentionShape(kv_dtype="int4", kv_group_size=64)
    assert s.kv_element_bytes == pytest.approx(0.5 + 2 / 64)
    assert AttentionShape(kv_dtype="fp8").kv_element_bytes == 1.0


@pytest.mark.parametrize("kwargs, word", [
    (dict(block_m=0), "block_m = 0"),
    (dict(num_warps=3), "num_warps = 3"),
    (dict(num_stages=-1), "num_stages = -1"),
    (dict(loop_order="diagonal"), "loop_order = 'diagonal'"),
])
def test_bad_tiles_are_refused(kwargs, word):
    with pytest.raises(MemsimError, match=word):
        TileConfig(**kwargs)
