"""Plots written as PNG files with matplotlib's Agg backend. matplotlib is imported only when a plot is
drawn (the `plot` extra: pip install 'memsim[plot]')."""

from memsim.errors import MemsimError


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    try:
        import matplotlib
    except ImportError:
        raise MemsimError("plots need matplotlib, which is not installed; pip install 'memsim[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path) -> str:
    """Write `fig` as a PNG to `path`; refuses an unwritable path in one line."""
    try:
        fig.savefig(path, dpi=120, bbox_inches="tight", format="png")
    except OSError as err:
        raise MemsimError(f"cannot write plot {path}: {err.strerror}") from None
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return str(path)
