"""Roofline of one GPU with attention algorithms placed on it (Williams, Waterman, Patterson,
"Roofline: an insightful visual performance model", CACM 2009).

Attainable FLOP/s at an arithmetic intensity I (FLOPs per byte moved) is min(tensor peak, I x bandwidth),
one roof per memory level: HBM (bytes between HBM and L2) and L2 (bytes between L2 and the SMs).
Each algorithm's prediction for one shape is a point at its tensor-core FLOPs over its HBM bytes, and a
second, hollow marker at the same FLOPs over its L2 <-> SM bytes; its height is the FLOP/s it achieves
(FLOPs over predicted latency). A point below both roofs at its intensities is bound by something
neither roof draws: latency, the softmax on CUDA cores, or the launch.
"""

from dataclasses import dataclass

import numpy as np

from memsim.errors import MemsimError
from memsim.hardware import GPUSpec, load_gpu
from memsim.plots import pyplot, save
from memsim.result import Prediction
from memsim.workload.dtypes import tensor_core_dtype


def hbm_bytes(p: Prediction) -> float:
    """Bytes between HBM and L2: reads, writes during the kernel and writes still dirty in L2 at its end."""
    b = p.bytes
    return b["hbm_read"] + b["hbm_write"] + b["hbm_write_deferred"]


def l2_bytes(p: Prediction) -> float:
    """Bytes between L2 and the SMs, both ways."""
    return p.bytes["l2_read"] + p.bytes["l2_write"]


@dataclass(frozen=True)
class Roof:
    """The ceilings a roofline draws: one tensor-core rate and two bandwidths."""

    gpu: str
    dtype: str  # the tensor-core rate's key (bf16, fp8, tf32, ...)
    origin: str  # "datasheet peak" or "calibrated on ..."
    tensor_flops_per_s: float
    hbm_bandwidth_bytes_per_s: float
    l2_bandwidth_bytes_per_s: float

    def attainable_flops_per_s(self, intensity_flops_per_byte: np.ndarray, bandwidth_bytes_per_s: float) -> np.ndarray:
        return np.minimum(self.tensor_flops_per_s, intensity_flops_per_byte * bandwidth_bytes_per_s)


@dataclass(frozen=True)
class RooflinePoint:
    """One prediction's place: its tensor-core FLOPs, bytes at both levels and latency."""

    algo: str
    tensor_flops: float
    hbm_bytes: float
    l2_bytes: float
    latency_s: float

    @property
    def hbm_intensity_flops_per_byte(self) -> float:
        return self.tensor_flops / self.hbm_bytes

    @property
    def l2_intensity_flops_per_byte(self) -> float:
        return self.tensor_flops / self.l2_bytes

    @property
    def achieved_flops_per_s(self) -> float:
        return self.tensor_flops / self.latency_s


def roof(gpu: GPUSpec | str, dtype: str, calibrated: bool = True) -> Roof:
    """The roofs of `gpu` for matmuls on `dtype` inputs (a compute dtype: bf16, fp16, fp8, fp32)."""
    spec = gpu if isinstance(gpu, GPUSpec) else load_gpu(gpu)
    ceilings = spec.ceilings(calibrated)
    key = tensor_core_dtype(dtype)
    if not ceilings.tensor_flops_per_s.get(key):
        raise MemsimError(f"{spec.name} has no {key} tensor-core rate for dtype {dtype!r}; use one of "
                          f"{', '.join(k for k, v in ceilings.tensor_flops_per_s.items() if v)}")
    return Roof(gpu=spec.name, dtype=key, origin=ceilings.origin, tensor_flops_per_s=ceilings.tensor_flops_per_s[key],
                hbm_bandwidth_bytes_per_s=ceilings.hbm_bandwidth_bytes_per_s,
                l2_bandwidth_bytes_per_s=ceilings.l2_bandwidth_bytes_per_s)


def roofline_point(p: Prediction) -> RooflinePoint:
    """Refuses a prediction with nothing to place: no tensor-core FLOPs or no bytes."""
    point = RooflinePoint(p.algo, p.flops["tensor"], hbm_bytes(p), l2_bytes(p), p.latency_s)
    if point.tensor_flops <= 0 or point.hbm_bytes <= 0 or point.l2_bytes <= 0:
        raise MemsimError(f"{p.algo} has {point.tensor_flops:g} tensor-core FLOPs, {point.hbm_bytes:g} HBM bytes and "
                          f"{point.l2_bytes:g} L2 bytes; a roofline needs all three > 0")
    return point


def _check_same_roof(predictions: list[Prediction], r: Roof) -> None:
    if not predictions:
        raise MemsimError("a roofline needs at least one prediction to place")
    for p in predictions:
        if p.gpu != r.gpu or tensor_core_dtype(p.shape["dtype"]) != r.dtype or p.ceilings != r.origin:
            raise MemsimError(f"{p.algo} was predicted on {p.gpu} ({p.shape['dtype']}, {p.ceilings}), not on the "
                              f"roofline's {r.gpu} ({r.dtype}, {r.origin}); predict every algorithm on one GPU, "
                              f"dtype and set of ceilings")


def intensity_range(r: Roof, points: list[RooflinePoint]) -> np.ndarray:
    """FLOPs per byte from a decade below the lowest point to a decade above the ridges and points."""
    ridges = [r.tensor_flops_per_s / r.hbm_bandwidth_bytes_per_s, r.tensor_flops_per_s / r.l2_bandwidth_bytes_per_s]
    xs = [x for p in points for x in (p.hbm_intensity_flops_per_byte, p.l2_intensity_flops_per_byte)]
    return np.geomspace(min(xs + ridges) / 10, max(xs + ridges) * 10, 200)


def roofline_figure(r: Roof, points: list[RooflinePoint], title: str = ""):
    """The figure (not saved): x FLOPs per byte, y FLOP/s, both log; the roofs, then one colour per point."""
    plt = pyplot()
    from matplotlib.ticker import EngFormatter

    fig, ax = plt.subplots(figsize=(8, 5.5), layout="constrained")
    x = intensity_range(r, points)
    ax.plot(x, r.attainable_flops_per_s(x, r.hbm_bandwidth_bytes_per_s), color="black",
            label=f"HBM roof ({r.hbm_bandwidth_bytes_per_s / 1e12:.2f} TB/s)")
    ax.plot(x, r.attainable_flops_per_s(x, r.l2_bandwidth_bytes_per_s), color="grey", linestyle="--",
            label=f"L2 roof ({r.l2_bandwidth_bytes_per_s / 1e12:.2f} TB/s)")
    for point, colour in zip(points, (f"C{i}" for i in range(len(points)))):
        y = point.achieved_flops_per_s
        ax.scatter([point.hbm_intensity_flops_per_byte], [y], color=colour, zorder=3,
                   label=f"{point.algo}: FLOPs / HBM bytes")
        ax.scatter([point.l2_intensity_flops_per_byte], [y], facecolors="none", edgecolors=colour, zorder=3,
                   label=f"{point.algo}: FLOPs / L2 -> SM bytes")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(EngFormatter(unit="FLOP/s"))
    ax.set_xlabel("arithmetic intensity (tensor-core FLOPs per byte)")
    ax.set_ylabel("FLOP/s (roofs: attainable; points: predicted)")
    ax.set_title(title or f"{r.gpu}, {r.dtype} tensor cores ({r.tensor_flops_per_s / 1e12:.0f} TFLOP/s), {r.origin}",
                 fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return fig


def roofline_plot(predictions: list[Prediction], gpu: GPUSpec | str, path, calibrated: bool = True,
                  title: str = "") -> str:
    """Write a PNG roofline of `gpu` with each prediction placed (all on `gpu`, one dtype, the ceilings that
    `calibrated` picks, as memsim.predict made them); returns the path."""
    dtype = predictions[0].shape["dtype"] if predictions else "bf16"
    r = roof(gpu, dtype, calibrated)
    _check_same_roof(predictions, r)
    return save(roofline_figure(r, [roofline_point(p) for p in predictions], title), path)
