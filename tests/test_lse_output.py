"""TileConfig.lse_output: a forward that writes O alone (cuDNN without grad) moves exactly the LSE's bytes less into L2,
in both engines, and nothing else changes; the final LSE only: split partial statistics stay."""

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memsim import AttentionShape, TileConfig, predict
from memsim.algorithms import flash_decoding as fd
from memsim.errors import MemsimError
from memsim.schedules import flash_decoding as fd_sched
from memsim.schedules.steps import Store
from memsim.workload.dtypes import ACCUMULATOR_BYTES


def _lse_writes(p) -> float:
    return sum(k.bytes_by_tensor.get("LSE", {}).get("l2_write", 0.0) for k in p.kernels)


def _without_lse(p) -> dict:
    """SM -> L2 bytes per tensor other than the final LSE."""
    out = {}
    for k in p.kernels:
        for tensor, b in k.bytes_by_tensor.items():
            if tensor != "LSE":
                out[tensor] = out.get(tensor, 0.0) + b["l2_write"]
    return out


@pytest.mark.parametrize("engine", ["analytic", "des"])
@pytest.mark.parametrize("algo", ["flash2", "flash3"])
def test_a_prefill_forward_without_lse_writes_o_alone(engine, algo):
    shape = AttentionShape(batch=1, q_heads=4, q_len=1024, head_dim=64, causal=True)
    tiles = TileConfig(block_m=128, block_n=64, num_warps=4, num_stages=2)
    with_lse = predict(algo, shape, tiles=tiles, engine=engine)
    without = predict(algo, shape, tiles=dataclasses.replace(tiles, lse_output=False), engine=engine)
    assert _lse_writes(with_lse) == pytest.approx(4 * 1024 * ACCUMULATOR_BYTES)  # fp32 per row, whole sectors
    assert _lse_writes(without) == 0
    assert without.bytes["l2_write"] == pytest.approx(with_lse.bytes["l2_write"] - _lse_writes(with_lse))
    assert _without_lse(without) == pytest.approx(_without_lse(with_lse))
    assert without.bytes["l2_read"] == pytest.approx(with_lse.bytes["l2_read"])
    assert without.bytes["hbm_read"] == pytest.approx(with_lse.bytes["hbm_read"])


@settings(max_examples=12, deadline=None)
@given(batch=st.integers(1, 8), kv_heads=st.sampled_from([1, 2, 4]), group=st.sampled_from([1, 4]),
       kv_len=st.integers(256, 4096), splits=st.integers(1, 4), engine=st.sampled_from(["analytic", "des"]))
def test_a_decode_without_lse_drops_only_the_final_lse(batch, kv_heads, group, kv_len, splits, engine):
    shape = AttentionShape(batch=batch, q_heads=kv_heads * group, kv_heads=kv_heads, q_len=1, kv_len=kv_len,
                           head_dim=64)
    splits = min(splits, fd.key_tiles(shape, 128))
    tiles = TileConfig(block_m=64, block_n=128, num_warps=4, num_stages=2, num_splits=splits)
    with_lse = predict("flash_decoding", shape, tiles=tiles, engine=engine)
    without = predict("flash_decoding", shape, tiles=dataclasses.replace(tiles, lse_output=False), engine=engine)
    assert _lse_writes(with_lse) > 0 and _lse_writes(without) == 0
    assert _without_lse(without) == pytest.approx(_without_lse(with_lse))  # partial O and LSE_partial kept
    assert without.bytes["l2_write"] == pytest.approx(with_lse.bytes["l2_write"] - _lse_writes(with_lse))


def test_the_split_kernel_writes_its_partial_statistic_with_or_without_lse():
    shape = AttentionShape(batch=2, q_heads=8, kv_heads=2, q_len=1, kv_len=2048, head_dim=64)
    one = fd_sched.split_outputs(shape, 1, 4, "LSE_partial", 32, lse_output=False)
    many = fd_sched.split_outputs(shape, 3, 4, "LSE_partial", 32, lse_output=False)
    assert [s.tensor for s in one] == ["O"]
    assert [s.tensor for s in many] == ["O_partial", "LSE_partial"] and all(isinstance(s, Store) for s in many)


def test_lse_output_is_refused_where_it_is_not_modelled_and_must_be_a_bool():
    shape = AttentionShape(q_heads=4, q_len=512, head_dim=64)
    with pytest.raises(MemsimError, match="lse_output = false .* applies to the forward of flash2"):
        predict("standard", shape, tiles=TileConfig(lse_output=False))
    with pytest.raises(MemsimError, match="pass 'fwd\\+bwd' has a backward"):
        predict("flash2", shape, tiles=TileConfig(lse_output=False), pass_="fwd+bwd")
    with pytest.raises(MemsimError, match="lse_output = 'no' must be true or false"):
        TileConfig(lse_output="no")
