"""Pictures of a validation run: predicted against measured (log axes, y = x), and error by algorithm."""

from pathlib import Path

from validation.compare import FIELDS, Row

LABELS = {"hbm_read": "HBM bytes read", "hbm_write": "HBM bytes written", "hbm_bytes": "HBM bytes read + written",
          "l2_read": "L2 -> SM bytes read",
          "l2_write": "SM -> L2 bytes written",
          "time": "time of the call (s)", "kernel_time": "GPU time of its kernels (s)"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def predicted_vs_measured(rows: list[Row], path: Path, title: str) -> Path:
    plt = _pyplot()
    columns = 4
    fig, axes = plt.subplots(-(-len(FIELDS) // columns), columns, figsize=(21, 10))
    kernels = sorted({r.kernel for r in rows if not r.skipped})
    colours = {k: plt.cm.tab20(i % 20) for i, k in enumerate(kernels)}  # 18 kernels today: one colour each
    for ax, name in zip(axes.flat, FIELDS):
        points = [(r.measured[name], r.predicted[name], r.kernel) for r in rows
                  if not r.skipped and r.measured.get(name) and r.predicted.get(name)]
        for kernel in kernels:
            xs = [m for m, _, k in points if k == kernel]
            ys = [p for _, p, k in points if k == kernel]
            ax.scatter(xs, ys, s=22, color=colours[kernel], label=kernel, alpha=0.85)
        if points:
            low = min(min(m, p) for m, p, _ in points) / 1.5
            high = max(max(m, p) for m, p, _ in points) * 1.5
            ax.plot([low, high], [low, high], color="black", linewidth=0.8, label="y = x")
            ax.set_xlim(low, high)
            ax.set_ylim(low, high)
        if points:
            ax.set_xscale("log")
            ax.set_yscale("log")
        else:
            ax.text(0.5, 0.5, "not measured in these rows", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(f"measured {LABELS[name]}")
        ax.set_ylabel(f"predicted {LABELS[name]}")
        ax.grid(True, which="both", alpha=0.25)
    for ax in axes.flat[len(FIELDS):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def error_by_algorithm(rows: list[Row], path: Path, title: str) -> Path:
    plt = _pyplot()
    groups = sorted({f"{r.kernel} -> {r.algo}" for r in rows if not r.skipped})
    fig, axes = plt.subplots(len(FIELDS), 1, figsize=(11, 2.6 * len(FIELDS)), sharex=True)
    for ax, name in zip(axes, FIELDS):
        for i, group in enumerate(groups):
            errors = [100 * r.error[name] for r in rows
                      if not r.skipped and f"{r.kernel} -> {r.algo}" == group and name in r.error]
            ax.scatter([i] * len(errors), errors, s=18, alpha=0.8)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_ylabel(f"{LABELS[name]}\nerror (%)")
        ax.set_yscale("symlog", linthresh=10)
        ax.grid(True, axis="y", alpha=0.25)
    axes[-1].set_xticks(range(len(groups)), groups, rotation=30, ha="right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
