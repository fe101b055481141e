"""Block-size heatmap of a tile sweep: BLOCK_M down, BLOCK_N across; each cell the best candidate over
num_stages and num_warps, coloured by predicted latency (or, without latencies, by CTAs per SM);
cells where no candidate fits are marked x."""

import numpy as np

from memsim.plots import pyplot, save


def _cell_values(result, metric: str) -> tuple[list, list, np.ndarray]:
    ms = sorted({c.block_m for c in result.candidates})
    ns = sorted({c.block_n for c in result.candidates})
    grid = np.full((len(ms), len(ns)), np.nan)
    for c in result.fitting:
        if metric == "latency" and c.latency_s is None:
            continue
        value = c.latency_s * 1e6 if metric == "latency" else float(c.ctas_per_sm)
        i, j = ms.index(c.block_m), ns.index(c.block_n)
        better = min if metric == "latency" else max
        grid[i, j] = value if np.isnan(grid[i, j]) else better(grid[i, j], value)
    return ms, ns, grid


def block_size_heatmap(result, path) -> str:
    """Write the heatmap of a memsim.sweep.TileSweep to `path` (PNG)."""
    plt = pyplot()
    metric = "latency" if any(c.latency_s is not None for c in result.fitting) else "ctas"
    ms, ns, grid = _cell_values(result, metric)
    fig, ax = plt.subplots(figsize=(1.1 * len(ns) + 2.5, 0.8 * len(ms) + 2))
    cmap = plt.get_cmap("viridis_r" if metric == "latency" else "viridis").with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto")
    for i in range(len(ms)):
        for j in range(len(ns)):
            empty = np.isnan(grid[i, j])
            ax.text(j, i, "x" if empty else f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=8,
                    color="black" if empty else "white")
    ax.set_xticks(range(len(ns)), [str(n) for n in ns])
    ax.set_yticks(range(len(ms)), [str(m) for m in ms])
    ax.set_xlabel("BLOCK_N")
    ax.set_ylabel("BLOCK_M")
    label = "predicted latency (us), best over stages x warps" if metric == "latency" else \
        "CTAs per SM, best over stages x warps"
    fig.colorbar(image, ax=ax, label=label)
    s = result.shape
    ax.set_title(f"{result.algo} on {result.gpu}\nB={s.batch} H={s.q_heads}/{s.kv_heads} N={s.q_len}/{s.kv_len} "
                 f"d={s.head_dim} {s.dtype}; x = no candidate fits", fontsize=9)
    return save(fig, path)
