"""What every kernel test shares: where kernels run, poisoned outputs, the one error-ratio check, and the
checks that a kernel launches exactly the configs its op reports.

Tolerance (shared/DESIGN.md): a kernel's error against float64 may be at most 2x the error of
PyTorch math in the same low precision (kernels.reference with dtype=...), plus a small floor per
dtype, and NaN never passes.
"""

import os
from typing import NamedTuple

import torch
from hypothesis import settings
from hypothesis import strategies as st

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The gpu profile runs this many times the CI examples (MEMSIM_GPU_EXAMPLES_FACTOR overrides: each new
# shape class compiles new kernels, a second or more each, so a lease-limited run may want fewer).
GPU_EXAMPLES_FACTOR = int(os.environ.get("MEMSIM_GPU_EXAMPLES_FACTOR", "25"))

# The floor, relative to the reference's largest magnitude: a few units in the last place of the dtype
# (fp16 eps 9.8e-4, bf16 7.8e-3, fp32 1.2e-7; fp8 e4m3 0.125).
FLOOR = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 1e-5, torch.float64: 1e-12}


def kernel_settings(ci_examples: int):
    """Hypothesis settings for a kernel property test: `ci_examples` on the CPU interpreter (CI),
    GPU_EXAMPLES_FACTOR times as many under HYPOTHESIS_PROFILE=gpu, the profile's own count under dev."""
    profile = os.environ.get("HYPOTHESIS_PROFILE", "ci")
    count = {"ci": ci_examples, "gpu": ci_examples * GPU_EXAMPLES_FACTOR}.get(profile, settings().max_examples)
    return settings(max_examples=count)


def low_precision_dtypes() -> list[torch.dtype]:
    """fp16 and fp32 everywhere; bf16 only on a GPU (the interpreter cannot run bf16: DESIGN.md)."""
    return [torch.float16, torch.float32] + ([torch.bfloat16] if DEVICE == "cuda" else [])


def poisoned(shape, dtype: torch.dtype) -> torch.Tensor:
    """An output buffer full of NaN, so that any element a kernel forgets to write fails the check."""
    return torch.full(tuple(shape), float("nan"), dtype=dtype, device=DEVICE)


def error_ratio(out: torch.Tensor, ref64: torch.Tensor, peer: torch.Tensor, dtype: torch.dtype) -> float:
    """max |out - ref| / (2 max |peer - ref| + floor): <= 1 passes. -inf entries must match exactly."""
    out, peer = out.detach().to("cpu", torch.float64), peer.detach().to("cpu", torch.float64)
    ref64 = ref64.detach().to("cpu", torch.float64)
    if out.shape != ref64.shape:
        raise AssertionError(f"shape {tuple(out.shape)} != reference {tuple(ref64.shape)}")
    infinite = torch.isinf(ref64)
    if not torch.equal(torch.isinf(out) & (out == ref64), infinite):
        return float("inf")  # an infinity (an empty row's LSE) missing or misplaced
    if torch.isnan(out).any():
        return float("inf")
    finite = ~infinite
    scale = ref64[finite].abs().max().item() if finite.any() else 0.0
    err = (out - ref64)[finite].abs().max().item() if finite.any() else 0.0
    peer_err = (peer - ref64)[finite].abs().max().item() if finite.any() else 0.0
    floor = FLOOR.get(dtype, 1e-2) * max(scale, 1.0)
    return err / (2.0 * peer_err + floor)


def check_close(name: str, out: torch.Tensor, ref64: torch.Tensor, peer: torch.Tensor, dtype: torch.dtype) -> float:
    """Assert the kernel's error is within tolerance; return the ratio (<= 1) for reports."""
    ratio = error_ratio(out, ref64, peer, dtype)
    if not ratio <= 1.0:
        out64 = out.detach().to("cpu", torch.float64)
        ref = ref64.detach().to("cpu", torch.float64)
        finite = torch.isfinite(ref)
        err = (out64 - ref)[finite].abs().max().item() if finite.any() else float("nan")
        raise AssertionError(f"{name}: error ratio {ratio:.3g} > 1 (max |error| {err:.3g}, NaN in output: "
                             f"{bool(torch.isnan(out64).any())}, dtype {dtype})")
    return ratio


# ---- launches against reported configs ------------------------------------------------------------------

class Launch(NamedTuple):
    """One recorded launch: the kernel's name, its grid, and the keywords it was launched with (constexprs,
    num_warps, num_stages)."""

    kernel: str
    grid: tuple
    meta: dict


class LaunchRecorder:
    """Stands in for a Triton kernel: records each launch into `launches`, then launches the real kernel."""

    def __init__(self, kernel, name: str, launches: list):
        self.kernel, self.name, self.launches = kernel, name, launches

    def __getitem__(self, grid):
        def launch(*args, **meta):
            self.launches.append(Launch(self.name, tuple(grid), meta))
            return self.kernel[grid](*args, **meta)
        return launch


def record_launches(monkeypatch, module, *names: str) -> list[Launch]:
    """Replace the kernels `names` of `module` by recorders for this test; returns the one list their launches
    go into, in the order they run."""
    launches: list[Launch] = []
    for name in names:
        monkeypatch.setattr(module, name, LaunchRecorder(getattr(module, name), name, launches))
    return launches


# The launch keywords that carry a config's block_m and block_n, unless assert_launched_as_reported is told others.
DEFAULT_BLOCK_KEYWORDS = ("BLOCK_M", "BLOCK_N")


def assert_launched_as_reported(launches: list[Launch], configs: list, block_keywords: dict | None = None) -> None:
    """The recorded launches are the configs, in order: kernel, grid, warps, stages and tiles. The tiles are
    the launch keywords block_keywords[kernel] names (default BLOCK_M, BLOCK_N); a keyword the kernel does not
    take stands for a tile of 1."""
    assert [launch.kernel for launch in launches] == [config.kernel for config in configs]
    for launch, config in zip(launches, configs):
        m_key, n_key = (block_keywords or {}).get(config.kernel, DEFAULT_BLOCK_KEYWORDS)
        assert launch.grid == config.grid, launch.kernel
        assert (launch.meta["num_warps"], launch.meta["num_stages"]) == (config.num_warps, config.num_stages), \
            launch.kernel
        assert (launch.meta.get(m_key, 1), launch.meta.get(n_key, 1)) == (config.block_m, config.block_n), \
            launch.kernel


def without_shared_memory(config) -> dict:
    """A config's launch (kernel, tiles, warps, stages, grid): shared memory is compiled on a GPU, estimated here."""
    return {key: value for key, value in config.as_dict().items() if not key.startswith("shared_mem")}


def assert_recorded_as_reported(recorded: list, configs: list) -> None:
    """The configs an op recorded as launched (its `launched` list, its recent_launches()) are those it reports,
    shared memory aside; that is compiled on a GPU and an estimate under the interpreter, which compiles nothing."""
    assert [without_shared_memory(c) for c in recorded] == [without_shared_memory(c) for c in configs]
    source = "compiled" if DEVICE == "cuda" else "estimate"
    assert all(c.shared_mem_source == source for c in recorded)


# ---- inputs the property tests share ------------------------------------------------------------------------

HEAD_LAYOUTS = ((1, 1), (1, 2), (1, 4), (2, 1), (2, 2))  # (kv heads, q heads per kv head): MHA, GQA, MQA
LOGIT_SCALES = (1.0, 4.0, 16.0)  # q is multiplied by this: 16 gives logits of tens, near one-hot rows
ATTENTION_HEAD_DIMS = (8, 16, 24, 40, 64)
LINEAR_HEAD_DIMS = (1, 8, 16, 17, 33, 40, 64, 96)  # powers of two and not; from 33 the value dim splits


def expand_kv(x: torch.Tensor, q_heads: int) -> torch.Tensor:
    """[B, Hkv, N, D] -> [B, Hq, N, D]: each kv head repeated for the q heads that read it."""
    return x.repeat_interleave(q_heads // x.shape[1], dim=1)


@st.composite
def attention_problems(draw):
    """(q, k, v, causal, dtype) for softmax attention: batch * q heads <= 4 over every head layout, lengths 1-80,
    q scaled by LOGIT_SCALES, inputs stored [B, H, N, D] or seen through a transpose of [B, N, H, D]."""
    dtype = draw(st.sampled_from(low_precision_dtypes()))
    kv_heads, group = draw(st.sampled_from(HEAD_LAYOUTS))
    batch = draw(st.integers(1, max(1, 4 // (kv_heads * group))))
    length = st.one_of(st.integers(1, 16), st.integers(17, 80))
    q_len, kv_len = draw(length), draw(length)
    head_dim = draw(st.sampled_from(ATTENTION_HEAD_DIMS))
    transposed = draw(st.booleans())
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))

    def tensor(heads, n, factor=1.0):
        shape = (batch, n, heads, head_dim) if transposed else (batch, heads, n, head_dim)
        t = (torch.randn(shape, generator=gen, dtype=torch.float64) * factor).to(dtype).to(DEVICE)
        return t.transpose(1, 2) if transposed else t

    q = tensor(kv_heads * group, q_len, draw(st.sampled_from(LOGIT_SCALES)))
    return q, tensor(kv_heads, kv_len), tensor(kv_heads, kv_len), draw(st.booleans()), dtype


def linear_inputs(batch, q_heads, kv_heads, n, d, dtype, magnitude, seed):
    """q [B, Hq, N, D], k [B, Hkv, N, D] ~ magnitude * N(0, 1), v [B, Hkv, N, D] ~ N(0, 1), on DEVICE in dtype."""
    g = torch.Generator().manual_seed(seed)
    q = magnitude * torch.randn(batch, q_heads, n, d, generator=g)
    k = magnitude * torch.randn(batch, kv_heads, n, d, generator=g)
    v = torch.randn(batch, kv_heads, n, d, generator=g)
    return [t.to(DEVICE, dtype) for t in (q, k, v)]


@st.composite
def linear_problems(draw):
    """linear_inputs' keywords for linear attention: batch * q heads <= 4, lengths 1-80, LINEAR_HEAD_DIMS."""
    kv_heads = draw(st.sampled_from([1, 2]))
    return {"batch": draw(st.sampled_from([1, 2])) if kv_heads == 1 else 1, "kv_heads": kv_heads,
            "q_heads": kv_heads * draw(st.sampled_from([1, 2])),
            "n": draw(st.one_of(st.integers(1, 16), st.integers(17, 80))), "d": draw(st.sampled_from(LINEAR_HEAD_DIMS)),
            # magnitude 3: |q . k| up to ~150 at d = 64, outputs in the thousands, inside fp16's range
            "dtype": draw(st.sampled_from(low_precision_dtypes())), "magnitude": draw(st.sampled_from([0.1, 1.0, 3.0])),
            "seed": draw(st.integers(0, 2 ** 31 - 1))}
