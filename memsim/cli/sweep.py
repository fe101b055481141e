"""`memsim sram-fit` and `memsim sweep`: parse, call memsim.sweep, render.

`register(cli)` adds both commands to a click group (memsim.cli.main's `cli`)."""

import json

import click
from rich.console import Console
from rich.table import Table

from memsim.algorithms import ALGORITHMS, PASSES
from memsim.cli.render import human_kib, human_time
from memsim.errors import MemsimError
from memsim.hardware import DEFAULT_GPU
from memsim.predict import ENGINES
from memsim.sweep import (BLOCK_SIZES, NUM_STAGES, NUM_WARPS, Candidate, TileSweep, candidate_grid, rank, sram_fit,
                          sweep)
from memsim.units import parse_quantity
from memsim.workload import AttentionShape
from memsim.workload.dtypes import (COMPUTE_DTYPES, DEFAULT_KV_GROUP_SIZE, DEFAULT_SCALE_DTYPE, KV_DTYPES,
                                    SCALE_DTYPES)


def int_list(text: str, option: str) -> tuple[int, ...]:
    """'64,128' -> (64, 128); refuses anything but positive whole numbers, naming the option."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise MemsimError(f"{option} = {text!r} must be whole numbers separated by commas, e.g. 64,128") from None
    if not values or min(values) <= 0:
        raise MemsimError(f"{option} = {text!r} must list positive whole numbers, e.g. 64,128")
    return values


def sram_bytes(text: str | None) -> int | None:
    """'96KiB' or '98304' -> 98304."""
    if text is None:
        return None
    value = parse_quantity(text, "sram_bytes", "--sram-bytes")
    if value != int(value) or value <= 0:
        raise MemsimError(f"--sram-bytes = {text!r} must be a positive whole number of bytes, e.g. 96KiB")
    return int(value)


def _csv(values) -> str:
    return ",".join(str(v) for v in values)


def tile_options(f):
    """The options sram-fit and sweep share: GPU, algorithm, shape, SRAM, candidates, output."""
    options = [
        click.option("--gpu", default=DEFAULT_GPU, show_default=True, help="Preset name or path to a GPU YAML file."),
        click.option("--algo", default="flash2", show_default=True, type=click.Choice(list(ALGORITHMS))),
        click.option("--batch", default=1, show_default=True, type=int),
        click.option("--heads", default=32, show_default=True, type=int, help="Query heads."),
        click.option("--kv-heads", type=int, help="K/V heads (GQA/MQA); default: --heads."),
        click.option("--seq", default=4096, show_default=True, type=int, help="Query length."),
        click.option("--kv-seq", type=int, help="Key/value length; default: --seq."),
        click.option("--head-dim", default=128, show_default=True, type=int),
        click.option("--dtype", default="bf16", show_default=True, type=click.Choice(list(COMPUTE_DTYPES))),
        click.option("--kv-dtype", type=click.Choice(list(KV_DTYPES)), help="KV storage type; default: --dtype."),
        click.option("--kv-group-size", default=DEFAULT_KV_GROUP_SIZE, show_default=True, type=int,
                     help="int8/int4 KV caches: elements sharing one scale."),
        click.option("--kv-scale-dtype", default=DEFAULT_SCALE_DTYPE, show_default=True,
                     type=click.Choice(SCALE_DTYPES),
                     help="int8/int4 KV caches: the type each scale is stored in."),
        click.option("--causal/--no-causal", default=False, show_default=True),
        click.option("--pass", "pass_", default="fwd", show_default=True, type=click.Choice(PASSES)),
        click.option("--sram-bytes", "sram", help="Shared memory a CTA may use, e.g. 96KiB; default: the GPU's limit."),
        click.option("--block-m", "block_m", default=_csv(BLOCK_SIZES), show_default=True, help="BLOCK_M candidates."),
        click.option("--block-n", "block_n", default=_csv(BLOCK_SIZES), show_default=True, help="BLOCK_N candidates."),
        click.option("--stages", default=_csv(NUM_STAGES), show_default=True, help="num_stages candidates."),
        click.option("--warps", default=_csv(NUM_WARPS), show_default=True, help="num_warps candidates."),
        click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables."),
        click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
                     help="Write a BLOCK_M x BLOCK_N heatmap PNG."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _shape(batch, heads, kv_heads, seq, kv_seq, head_dim, dtype, kv_dtype, kv_group_size, kv_scale_dtype,
           causal) -> AttentionShape:
    return AttentionShape(batch=batch, q_heads=heads, kv_heads=kv_heads, q_len=seq, kv_len=kv_seq,
                          head_dim=head_dim, dtype=dtype, kv_dtype=kv_dtype, kv_group_size=kv_group_size,
                          kv_scale_dtype=kv_scale_dtype, causal=causal)


def _grid(block_m, block_n, stages, warps) -> list:
    return candidate_grid(int_list(block_m, "--block-m"), int_list(block_n, "--block-n"),
                          int_list(stages, "--stages"), int_list(warps, "--warps"))


def _buffers(c: Candidate) -> str:
    """'Q16K K32K V32K': each buffer by the first word of its name, in KiB."""
    return " ".join(f"{name.split()[0]}{size / 1024:g}K" for name, size in c.smem_buffers.items())


def _why_not(c: Candidate, limit: int) -> str:
    if c.fits:
        return ""
    if c.smem_bytes > limit:
        return f"SRAM {human_kib(c.smem_bytes)} > {human_kib(limit)}"
    return c.why_not


def fit_text(c: Candidate, limit: int) -> str:
    """'yes', 'yes (... spills)' or 'no: why'."""
    if not c.fits:
        return f"no: {_why_not(c, limit)}"
    return "yes" + (f" ({'; '.join(c.warnings)})" if c.warnings else "")


def candidates_table(result: TileSweep, rows: list[Candidate], title: str) -> Table:
    """One row per candidate; JSON (--json) has every field in full."""
    table = Table(title=title, title_justify="left")
    timed = result.engine is not None
    last = ("latency", "bound") if timed else ("fits / why not",)
    for col in ("M", "N", "st", "w", "SRAM/CTA", "buffers", "regs", "CTAs/SM", *last):
        table.add_column(col, justify="left" if col in ("buffers", "fits / why not", "bound") else "right",
                         no_wrap=col == "buffers")
    for c in rows:
        cells = [str(c.block_m), str(c.block_n), str(c.num_stages), str(c.num_warps),
                 human_kib(c.smem_bytes) if c.smem_buffers else "-", _buffers(c) or "-",
                 f"{c.registers_per_thread}{' spills' if c.warnings else ''}" if c.registers_per_thread else "-",
                 f"{c.ctas_per_sm} {c.limiter}" if c.fits else "-"]
        if timed:
            cells += [human_time(c.latency_s) if c.latency_s is not None else "-", c.bound or "-"]
        else:
            cells.append("yes" if c.fits else f"no: {_why_not(c, result.sram_limit_bytes)}")
        table.add_row(*cells)
    table.caption = "M x N = BLOCK_M x BLOCK_N, st = num_stages, w = num_warps"
    return table


def summary_lines(result: TileSweep) -> list[str]:
    s, rule, m = result.shape, result.paper_rule, result.paper_rule_sram
    lines = [f"{len(result.fitting)} of {len(result.candidates)} candidates fit ({result.sram_limit_bytes:,} B of "
             f"shared memory per CTA)",
             f"paper rule (FlashAttention Algorithm 1, M = {m['bytes']:,} B / {m['element_bytes']:g} B = "
             f"{m['elements']:,} {s.dtype} elements): B_r = {rule['block_m']}, B_c = {rule['block_n']}, "
             f"T_r = {rule['t_r']}, T_c = {rule['t_c']}; as {result.algo} tiles with 1 stage: "
             f"{fit_text(result.paper_rule_candidate, result.sram_limit_bytes)}"]
    d = result.default_tiles
    lines.append(f"{result.algo}'s own choice: BLOCK_M={d['block_m']} BLOCK_N={d['block_n']} "
                 f"stages={d['num_stages']} warps={d['num_warps']}")
    best = result.best
    if best is not None:
        lines.append(f"best: BLOCK_M={best.block_m} BLOCK_N={best.block_n} stages={best.num_stages} "
                     f"warps={best.num_warps}, {human_time(best.latency_s)} "
                     f"({best.bound}-bound, engine {result.engine})")
    elif result.engine is not None:
        lines.append("best: none (no candidate fits)")
    return lines


def _output(result: TileSweep, as_json: bool, plot_path: str | None, table: Table) -> None:
    if plot_path:
        from memsim.plots.heatmap import block_size_heatmap

        block_size_heatmap(result, plot_path)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
        return
    console = Console()
    console.print(table)
    for line in summary_lines(result):
        console.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
    if plot_path:
        click.echo(f"heatmap written to {plot_path}")


@click.command("sram-fit")
@tile_options
@click.option("--fits-only", is_flag=True, help="List only the candidates that fit.")
def sram_fit_cmd(gpu, algo, batch, heads, kv_heads, seq, kv_seq, head_dim, dtype, kv_dtype, kv_group_size,
                 kv_scale_dtype, causal, pass_, sram, block_m, block_n, stages, warps, as_json, plot_path, fits_only):
    """Which BLOCK_M x BLOCK_N x stages x warps fit in shared memory, each buffer listed, and why not."""
    shape = _shape(batch, heads, kv_heads, seq, kv_seq, head_dim, dtype, kv_dtype, kv_group_size, kv_scale_dtype,
                   causal)
    result = sram_fit(algo, shape, gpu, sram_bytes=sram_bytes(sram), pass_=pass_,
                      grid=_grid(block_m, block_n, stages, warps))
    rows = result.fitting if fits_only else list(result.candidates)
    _output(result, as_json, plot_path, candidates_table(result, rows, f"{result.algo} tiles on {result.gpu}"))


@click.command("sweep")
@tile_options
@click.option("--engine", default="analytic", show_default=True, type=click.Choice(ENGINES))
@click.option("--workers", type=int, help="Processes; default: every core for des, 1 for analytic.")
@click.option("--top", default=15, show_default=True, type=int, help="Rows of the table (fastest first).")
@click.option("--peak", is_flag=True, help="Use datasheet peaks instead of the GPU's measured ceilings.")
def sweep_cmd(gpu, algo, batch, heads, kv_heads, seq, kv_seq, head_dim, dtype, kv_dtype, kv_group_size,
              kv_scale_dtype, causal, pass_, sram, block_m, block_n, stages, warps, as_json, plot_path, engine, workers,
              top, peak):
    """Predicted latency of every fitting tile candidate, fastest first, and the best."""
    if workers is not None and workers <= 0:
        raise MemsimError(f"--workers = {workers} must be a positive number of processes")
    shape = _shape(batch, heads, kv_heads, seq, kv_seq, head_dim, dtype, kv_dtype, kv_group_size, kv_scale_dtype,
                   causal)
    result = sweep(algo, shape, gpu, sram_bytes=sram_bytes(sram), pass_=pass_, engine=engine,
                   grid=_grid(block_m, block_n, stages, warps), workers=workers, progress=not as_json,
                   calibrated=not peak)
    ranked = sorted(result.fitting, key=rank)[:max(top, 0)]
    title = (f"{result.algo} tiles on {result.gpu}: the first {len(ranked)} of {len(result.fitting)} that fit, "
             f"fastest first (spilling ones last)")
    _output(result, as_json, plot_path, candidates_table(result, ranked, title))


def register(cli: click.Group) -> None:
    """Add `sram-fit` and `sweep` to the memsim command group."""
    cli.add_command(sram_fit_cmd)
    cli.add_command(sweep_cmd)
