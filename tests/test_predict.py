import dataclasses
import json

import pytest

import memsim
from memsim import AttentionShape, predict

from checks import assert_refused_on_one_line

REQUIRED = {
    "gpu": str, "algo": str, "shape": dict, "tiles": dict, "flops": dict, "bytes": dict, "sram": dict,
    "occupancy": dict, "latency_s": float, "bound": str,
}


def test_json_has_the_documented_keys_and_units():
    d = predict().as_dict()
    for key, kind in REQUIRED.items():
        assert isinstance(d[key], kind), key
    assert set(d["flops"]) >= {"tensor", "cuda"}
    assert set(d["bytes"]) == {"hbm_read", "hbm_write", "l2_read", "l2_write", "hbm_write_deferred"}
    assert set(d["sram"]) == {"bytes_per_cta", "limit_bytes", "fits"}
    assert set(d["occupancy"]) >= {"ctas_per_sm", "waves"}
    assert d["bound"] in ("memory", "compute", "latency")
    json.dumps(d)  # serialisable as is


def test_result_is_frozen():
    p = predict()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.algo = "x"


def test_defaults_are_h100_flash2():
    p = predict()
    assert (p.gpu, p.algo, p.pass_) == ("H100-SXM5-80GB", "flash2", "fwd")


def test_bytes_by_tensor_add_up_to_totals():
    p = predict("flash2", AttentionShape(q_len=2048, causal=True))
    for key, total in p.bytes.items():
        assert sum(t[key] for t in p.bytes_by_tensor.values()) == pytest.approx(total)


def test_peak_is_never_slower_than_calibrated():
    shape = AttentionShape(batch=2, q_len=4096)
    assert predict("flash2", shape, calibrated=False).latency_s <= predict("flash2", shape).latency_s


@pytest.mark.parametrize("kwargs, words", [
    (dict(algo="flash9"), ["unknown algorithm 'flash9'", "flash2"]),
    (dict(gpu="Z100"), ["unknown GPU 'Z100'"]),
    (dict(pass_="sideways"), ["pass 'sideways'"]),
    (dict(engine="quantum"), ["engine 'quantum'"]),
    (dict(algo="lightning", pass_="bwd"), ["lightning models only the fwd pass"]),
    (dict(tiles=memsim.TileConfig(block_m=256, block_n=256, num_stages=4)), ["shared memory", "232448"]),
])
def test_bad_requests_raise_one_line(kwargs, words):
    assert_refused_on_one_line(lambda: predict(**kwargs), words)
