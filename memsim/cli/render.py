"""Rich tables for predictions and GPU lists. Units are converted here and nowhere else."""

from rich.console import Console
from rich.table import Table

from memsim.result import Prediction


def human_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n:,.0f} B"


def human_time(s: float) -> str:
    for unit, size in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= size:
            return f"{s / size:,.3f} {unit}"
    return f"{s * 1e9:,.1f} ns"


def human_kib(n: float) -> str:
    """Shared memory and register files are sized in KiB on every datasheet."""
    return f"{n / 1024:,.0f} KiB" if n >= 1024 else f"{n:,.0f} B"


def human_count(n: float, unit: str) -> str:
    for prefix, size in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:,.2f} {prefix}{unit}"
    return f"{n:,.0f} {unit}"


def prediction_table(p: Prediction) -> Table:
    s = p.shape
    title = (f"{p.algo} {p.pass_} on {p.gpu}: B={s['batch']} H={s['q_heads']}/{s['kv_heads']} "
             f"N={s['q_len']}/{s['kv_len']} d={s['head_dim']} {s['dtype']}{' causal' if s['causal'] else ''}")
    table = Table(title=title, title_justify="left", show_header=True)
    table.add_column("quantity")
    table.add_column("value", justify="right")
    d = p.as_dict()
    t = p.tiles
    spills = (f" spills {t['spill_bytes_per_iteration']} B/key block + {t['spill_bytes_per_cta']} B/CTA"
              if t.get("spill_bytes_per_iteration") or t.get("spill_bytes_per_cta") else "")
    table.add_row("tiles", f"BLOCK_M={t['block_m']} BLOCK_N={t['block_n']} warps={t['num_warps']} "
                           f"stages={t['num_stages']}{spills}")
    table.add_row("latency", human_time(p.latency_s))
    table.add_row("bound", f"{p.bound} ({d['critical_resource']})")
    table.add_row("tensor-core FLOPs", human_count(p.flops["tensor"], "FLOP"))
    table.add_row("CUDA-core ops (exp)", f"{human_count(p.flops['cuda'], 'op')} ({human_count(p.flops['exp'], 'op')})")
    for key, label in (("hbm_read", "HBM read"), ("hbm_write", "HBM write"),
                       ("l2_read", "L2 -> SM read"), ("l2_write", "SM -> L2 write")):
        table.add_row(label, human_bytes(p.bytes[key]))
    sram = d["sram"]
    table.add_row("SRAM per CTA", f"{human_bytes(sram['bytes_per_cta'])} of {human_bytes(sram['limit_bytes'])}")
    occ = d["occupancy"]
    table.add_row("CTAs per SM / waves", f"{occ['ctas_per_sm']} ({occ['limiter']}) / {occ['waves']}")
    if p.latency_s > 0:
        a = p.achieved
        table.add_row("achieved", f"{human_count(a['tensor_flops_per_s'], 'FLOP/s')}, "
                                  f"{human_count(a['hbm_bytes_per_s'], 'B/s')} HBM")
    busy = sorted(p.utilisation.items(), key=lambda item: item[1], reverse=True)
    if busy:
        table.add_row("busiest units", ", ".join(f"{unit} {fraction:.0%}" for unit, fraction in busy[:3]))
    table.caption = f"engine: {p.engine}; rates: {p.ceilings}"
    return table


def print_prediction(p: Prediction, console: Console | None = None) -> None:
    (console or Console()).print(prediction_table(p))


def print_explanation(p: Prediction, lines: list[str], heading: bool = False,
                      console: Console | None = None) -> None:
    """The lines of memsim.explain.explain, after the table; `heading` names the algorithm (for --compare)."""
    out = console or Console()
    if heading:
        out.print(f"{p.algo}:", highlight=False, markup=False)
    for line in lines:
        out.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)


def print_gpus(as_json: bool = False, console: Console | None = None) -> None:
    import json

    from memsim.hardware import load_gpu, preset_names

    specs = [load_gpu(n) for n in preset_names()]
    if as_json:
        print(json.dumps([{"name": g.name, "vendor": g.vendor, "architecture": g.architecture,
                           "sm_count": g.sm_count, "smem_per_sm_bytes": g.smem_per_sm_bytes,
                           "l2_bytes": g.l2_bytes, "hbm_bytes": g.hbm_bytes,
                           "hbm_bandwidth_bytes_per_s": g.hbm_bandwidth_bytes_per_s,
                           "tensor_flops_per_s": dict(g.tensor_flops_per_s),
                           "calibrated": g.calibration is not None} for g in specs], indent=2))
        return
    table = Table(title="GPU presets (datasheet peaks; * = has measured calibration)", title_justify="left")
    for col in ("name", "arch", "SMs", "SRAM/SM", "L2", "HBM", "HBM BW", "bf16 dense", "fp8 dense"):
        table.add_column(col, justify="left" if col in ("name", "arch") else "right")
    for g in specs:
        tc = g.tensor_flops_per_s
        table.add_row(g.name + (" *" if g.calibration else ""), g.architecture, str(g.sm_count),
                      f"{g.smem_per_sm_bytes // 1024} KiB", f"{g.l2_bytes / 2**20:.0f} MiB",
                      f"{g.hbm_bytes / 2**30:.0f} GiB", human_count(g.hbm_bandwidth_bytes_per_s, "B/s"),
                      human_count(tc["bf16"], "FLOP/s") if "bf16" in tc else "-",
                      human_count(tc["fp8"], "FLOP/s") if "fp8" in tc else "-")
    (console or Console()).print(table)


def compare_table(results: list[Prediction]) -> Table:
    """Algorithms side by side on one shape and GPU; the last column is relative to the first algorithm."""
    first = results[0]
    s = first.shape
    table = Table(title=f"{first.pass_} on {first.gpu}: B={s['batch']} H={s['q_heads']}/{s['kv_heads']} "
                        f"N={s['q_len']}/{s['kv_len']} d={s['head_dim']} {s['dtype']}"
                        f"{' causal' if s['causal'] else ''}", title_justify="left")
    table.add_column("quantity")
    for r in results:
        table.add_column(r.algo, justify="right")
    rows = [
        ("latency", lambda r: human_time(r.latency_s)),
        ("bound", lambda r: f"{r.bound} ({r.main_kernel.critical})"),
        ("kernels", lambda r: str(len(r.kernels))),
        ("tensor FLOPs", lambda r: human_count(r.flops["tensor"], "FLOP")),
        ("CUDA-core ops", lambda r: human_count(r.flops["cuda"], "op")),
        ("HBM read", lambda r: human_bytes(r.bytes["hbm_read"])),
        ("HBM write", lambda r: human_bytes(r.bytes["hbm_write"])),
        ("L2 -> SM read", lambda r: human_bytes(r.bytes["l2_read"])),
        ("SM -> L2 write", lambda r: human_bytes(r.bytes["l2_write"])),
        ("SRAM per CTA", lambda r: human_bytes(max(k.smem_bytes_per_cta for k in r.kernels))),
    ]
    for label, cell in rows:
        table.add_row(label, *(cell(r) for r in results))
    base = first.latency_s
    table.add_row("speed-up vs " + first.algo, *(f"{base / r.latency_s:.2f}x" for r in results))
    table.caption = f"engine: {first.engine}; rates: {first.ceilings}"
    return table
