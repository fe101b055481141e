"""HBM bytes and latency against sequence length, one line per algorithm (or per variant of one).

Standard attention writes and reads the N x N scores through HBM, so its bytes grow as N^2; the
FlashAttention family keeps them on chip and moves Q, K, V and O only, Theta(N d) per head when the
re-read K/V tiles hit in L2 (Dao et al. 2022, Theorem 2, with memsim's L2 between SRAM and HBM).
"""

from memsim.errors import MemsimError
from memsim.plots import pyplot, save
from memsim.plots.roofline import hbm_bytes
from memsim.result import Prediction

PANELS = (("HBM bytes (read + written)", "B", hbm_bytes), ("predicted latency", "s", lambda p: p.latency_s))


def _check(lengths: list[int], series: dict[str, list[Prediction]]) -> None:
    if not lengths or not series:
        raise MemsimError("a sequence-length plot needs at least one length and one series of predictions")
    for label, predictions in series.items():
        if len(predictions) != len(lengths):
            raise MemsimError(f"series {label!r} has {len(predictions)} predictions for {len(lengths)} lengths; "
                              f"give one prediction per length")


def seq_sweep_figure(lengths: list[int], series: dict[str, list[Prediction]], title: str = "",
                     x_label: str = "sequence length (tokens)"):
    """The figure (not saved): two panels, HBM bytes and latency (log) against `lengths` (log2), one line
    per series; `series` maps a label to one prediction per length."""
    _check(lengths, series)
    plt = pyplot()
    from matplotlib.ticker import EngFormatter

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), layout="constrained")
    for ax, (y_label, unit, value) in zip(axes, PANELS):
        for label, predictions in series.items():
            ax.plot(lengths, [value(p) for p in predictions], marker="o", markersize=3, label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(EngFormatter(unit=unit))
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def seq_sweep_plot(lengths: list[int], series: dict[str, list[Prediction]], path, title: str = "",
                   x_label: str = "sequence length (tokens)") -> str:
    """Write the PNG of seq_sweep_figure to `path`; returns the path."""
    return save(seq_sweep_figure(lengths, series, title, x_label), path)
