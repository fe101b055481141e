"""kernels.lightning (Lightning Attention-2's block scan) against the float64 reference, with and without decay."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from kernel_checks import DEVICE, check_close, kernel_settings, low_precision_dtypes, poisoned

import kernels.lightning
from kernels import reference
from kernels.lightning import launch_configs, lightning_attention, recent_launches

HEAD_DIMS = [1, 8, 16, 17, 33, 40, 64, 96]  # from 33 the value dim splits over programs under the interpreter


def inputs(batch, q_heads, kv_heads, n, d, dtype, magnitude, seed):
    """q, k [B, H, N, D] ~ magnitude * N(0, 1), v ~ N(0, 1), on DEVICE in dtype."""
    g = torch.Generator().manual_seed(seed)
    q = magnitude * torch.randn(batch, q_heads, n, d, generator=g)
    k = magnitude * torch.randn(batch, kv_heads, n, d, generator=g)
    v = torch.randn(batch, kv_heads, n, d, generator=g)
    return [t.to(DEVICE, dtype) for t in (q, k, v)]


def reference_pair(q, k, v, decay, dtype):
    """(float64 reference, same math in dtype) with k, v expanded to q's heads."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    return (reference.linear_attention(q, k, v, causal=True, decay=decay),
            reference.linear_attention(q, k, v, causal=True, decay=decay, dtype=dtype))


@st.composite
def problems(draw):
    kv_heads = draw(st.sampled_from([1, 2]))
    return {"batch": draw(st.sampled_from([1, 2])) if kv_heads == 1 else 1, "kv_heads": kv_heads,
            "q_heads": kv_heads * draw(st.sampled_from([1, 2])),
            "n": draw(st.one_of(st.integers(1, 16), st.integers(17, 80))), "d": draw(st.sampled_from(HEAD_DIMS)),
            # magnitude 3: |q . k| up to ~150 at d = 64, outputs in the thousands, inside fp16's range
            "dtype": draw(st.sampled_from(low_precision_dtypes())), "magnitude": draw(st.sampled_from([0.1, 1.0, 3.0])),
            "seed": draw(st.integers(0, 2 ** 31 - 1))}


# Rates per head: none, zero (decay present but 1), slow (exp(-0.01) per step), up to fast (exp(-5): gone after
# a few rows, and exp(-5 * 64) underflows to 0 across a block).
rates = st.one_of(st.none(), st.lists(st.sampled_from([0.0, 0.01, 0.1, 0.5, 5.0]), min_size=4, max_size=4))


@kernel_settings(15)
@given(problem=problems(), rate_list=rates, block=st.sampled_from([None, 16, 32]))
def test_matches_reference(problem, rate_list, block):
    q, k, v = inputs(**problem)
    dtype = problem["dtype"]
    decay = None if rate_list is None else torch.tensor(rate_list[:problem["q_heads"]], device=DEVICE)
    out = poisoned(q.shape, dtype)
    assert lightning_attention(q, k, v, decay=decay, block_size=block, out=out) is out
    ref, peer = reference_pair(q, k, v, decay, dtype)
    check_close("lightning o", out, ref, peer, dtype)


def test_worked_example_by_hand():
    """d = 1, q = (1, 2), k = (3, 4), v = (5, 6), rate s = ln 2 (weight 1/2 per step):
    o = (1*3*5, 2*3*5 / 2 + 2*4*6) = (15, 63)."""
    q, k, v = (torch.tensor(x, dtype=torch.float32, device=DEVICE).view(1, 1, 2, 1)
               for x in ([1.0, 2.0], [3.0, 4.0], [5.0, 6.0]))
    o = lightning_attention(q, k, v, decay=torch.tensor([math.log(2.0)], device=DEVICE)).flatten().tolist()
    print(f"o = {o}")
    assert o == pytest.approx([15.0, 63.0], rel=1e-6)


def test_state_crosses_many_blocks():
    """N = 200 over blocks of 16: 13 blocks, the last one short; the state carries the decay across every block."""
    q, k, v = inputs(1, 2, 1, 200, 16, torch.float32, 0.5, seed=11)
    decay = torch.tensor([0.02, 0.0], device=DEVICE)
    out = lightning_attention(q, k, v, decay=decay, block_size=16)
    ref, peer = reference_pair(q, k, v, decay, torch.float32)
    print(f"error ratio {check_close('lightning o', out, ref, peer, torch.float32):.3f}")


def without_shared_memory(config) -> dict:
    """A config's launch (kernel, tiles, warps, stages, grid): shared memory is compiled on a GPU, estimated here."""
    return {key: value for key, value in config.as_dict().items() if not key.startswith("shared_mem")}


def assert_recent_are(launched, configs):
    assert [without_shared_memory(c) for c in launched] == [without_shared_memory(c) for c in configs]
    source = "compiled" if DEVICE == "cuda" else "estimate"  # the interpreter compiles nothing
    assert all(c.shared_mem_source == source for c in launched)


class LaunchRecorder:
    """Stands in for a Triton kernel: records each launch's grid and keywords, then launches the real one."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **meta):
            self.launches.append((tuple(grid), meta))
            return self.kernel[grid](*args, **meta)
        return launch


def test_reported_config_is_the_launched_one(monkeypatch):
    """d = 40: value columns in programs of 32, two per (batch, head): grid 2 * 4 * 2 = 16."""
    q, k, v = inputs(2, 4, 2, 40, 40, torch.float16, 1.0, seed=5)
    recorder = LaunchRecorder(kernels.lightning.lightning_scan_kernel)
    monkeypatch.setattr(kernels.lightning, "lightning_scan_kernel", recorder)
    decay = torch.full((4,), 0.1, device=DEVICE)
    lightning_attention(q, k, v, decay=decay, block_size=32)
    (config,) = launch_configs(q, k, v, decay=decay, block_size=32)
    print(config.as_dict())
    (grid, meta), = recorder.launches
    assert config.kernel == "lightning_scan_kernel" and grid == config.grid == (16,)
    assert meta["BLOCK"] == config.block_m == config.block_n == 32
    assert (meta["num_warps"], meta["num_stages"]) == (config.num_warps, config.num_stages)
    assert_recent_are(recent_launches(), [config])


@pytest.mark.parametrize("decay, message", [
    ([0.1, -0.1], "s >= 0"),
    ([0.1, float("nan")], "finite"),
    ([0.1], r"expected \[2\]"),
])
def test_bad_decay_raises(decay, message):
    q, k, v = inputs(1, 2, 1, 8, 8, torch.float32, 1.0, seed=0)
    with pytest.raises(ValueError, match=message):
        lightning_attention(q, k, v, decay=torch.tensor(decay, device=DEVICE))


@pytest.mark.parametrize("block", [8, 24, 0])
def test_bad_block_size_raises(block):
    q, k, v = inputs(1, 1, 1, 8, 8, torch.float32, 1.0, seed=0)
    with pytest.raises(ValueError, match=f"block_size = {block}"):
        lightning_attention(q, k, v, block_size=block)


def test_bad_shapes_and_out_raise():
    q, k, v = inputs(1, 2, 1, 8, 8, torch.float32, 1.0, seed=0)
    with pytest.raises(ValueError, match="D = 300"):
        big = torch.zeros(1, 1, 2, 300, device=DEVICE)
        lightning_attention(big, big, big)
    with pytest.raises(ValueError, match="does not fit"):
        lightning_attention(q, k[:, :, :4], v[:, :, :4])
    with pytest.raises(ValueError, match="out is"):
        lightning_attention(q, k, v, out=poisoned((1, 2, 8, 4), torch.float32))
