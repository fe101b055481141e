"""What every kernel test shares: where kernels run, poisoned outputs, and the one error-ratio check.

Tolerance (shared/DESIGN.md): a kernel's error against float64 may be at most 2x the error of
PyTorch math in the same low precision (kernels.reference with dtype=...), plus a small floor per
dtype, and NaN never passes.
"""

import os

import torch
from hypothesis import settings

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
