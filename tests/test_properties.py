"""Properties every algorithm's prediction must have, whatever the shape (Hypothesis).

- bytes never fall below the compulsory minimum: each input read once, each output written once;
- L2->SM reads are never fewer than HBM reads for any tensor the kernels only read;
- more HBM bandwidth is never slower;
- the same request gives the same answer;
- default tiles always fit the GPU.
"""

import dataclasses

from hypothesis import given, strategies as st

from memsim import AttentionShape, predict
from memsim.algorithms import ALGORITHMS
from memsim.algorithms.tiling import keys_touched
from memsim.hardware import load_gpu

from checks import attention_shapes

H100 = load_gpu("H100-SXM5-80GB")
READ_ONLY = ("Q", "K", "V")


def algorithm_and_shape():
    return st.sampled_from(sorted(ALGORITHMS)).flatmap(
        lambda name: st.tuples(st.just(name), attention_shapes(ALGORITHMS[name])))


def compulsory(shape: AttentionShape) -> tuple[float, float]:
    q = shape.batch * shape.q_heads * shape.q_len * shape.head_dim * shape.element_bytes
    kv = 2 * shape.batch * shape.kv_heads * keys_touched(shape) * shape.head_dim * shape.kv_element_bytes
    return q + kv, q


@given(algorithm_and_shape())
def test_never_below_the_compulsory_bytes(case):
    name, shape = case
    p = predict(name, shape, H100)
    must_read, must_write = compulsory(shape)
    assert p.bytes["hbm_read"] >= must_read * (1 - 1e-9), (name, p.bytes, must_read)
    written = p.bytes["hbm_write"] + p.bytes["hbm_write_deferred"]  # during the kernel, or dirty in L2 after it
    assert written >= must_write * (1 - 1e-9), (name, p.bytes, must_write)
    assert p.bytes["l2_read"] >= must_read * (1 - 1e-9)


@given(algorithm_and_shape())
def test_l2_reads_cover_hbm_reads_of_inputs(case):
    name, shape = case
    by_tensor = predict(name, shape, H100).bytes_by_tensor
    for tensor in READ_ONLY:
        if tensor in by_tensor:
            assert by_tensor[tensor]["l2_read"] >= by_tensor[tensor]["hbm_read"] * (1 - 1e-9), (name, tensor)


@given(algorithm_and_shape(), st.floats(1.01, 10.0))
def test_more_hbm_bandwidth_is_never_slower(case, factor):
    name, shape = case
    faster = dataclasses.replace(H100, hbm_bandwidth_bytes_per_s=H100.hbm_bandwidth_bytes_per_s * factor,
                                 calibration=None)
    slower = dataclasses.replace(H100, calibration=None)
    assert predict(name, shape, faster).latency_s <= predict(name, shape, slower).latency_s


@given(algorithm_and_shape())
def test_deterministic_and_default_tiles_fit(case):
    name, shape = case
    first, second = predict(name, shape, H100).as_dict(), predict(name, shape, H100).as_dict()
    assert first == second
    assert first["sram"]["fits"]
    assert first["latency_s"] > 0


@given(st.sampled_from(["flash2", "flash3"]), st.integers(2048, 32768), st.sampled_from([64, 128]),
       st.booleans(), st.integers(1, 4), st.sampled_from([8, 16, 32]))
def test_flash_moves_fewer_hbm_and_l2_bytes_than_standard_once_n_is_far_above_d(algo, n, d, causal, batch, heads):
    """FlashAttention paper, Theorem 2: Theta(N^2 d^2 / M) HBM accesses against Theta(N d + N^2).

    FlashAttention-1 is checked with the paper's own block sizes in test_paper.py: with its default
    tiles at d=128 and many heads, the fp32 O that its CTAs re-read overflows the L2 and it can move
    more HBM bytes than standard attention (B=2, H=32, N=2048: 2.82 GB against 2.28 GB)."""
    shape = AttentionShape(batch=batch, q_heads=heads, q_len=n, head_dim=d, causal=causal)
    flash, standard = predict(algo, shape, H100), predict("standard", shape, H100)
    flash_hbm = flash.bytes["hbm_read"] + flash.bytes["hbm_write"]
    standard_hbm = standard.bytes["hbm_read"] + standard.bytes["hbm_write"]
    assert flash_hbm < standard_hbm, (algo, shape, flash_hbm, standard_hbm)
    assert flash.bytes["l2_read"] + flash.bytes["l2_write"] < standard.bytes["l2_read"] + standard.bytes["l2_write"]
