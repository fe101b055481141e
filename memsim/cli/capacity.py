"""`memsim capacity` and `memsim models`: parse, call memsim.capacity.plan, render.

`register(cli)` adds both commands to a click group (memsim.cli.main's `cli`)."""

import json

import click
from rich.console import Console
from rich.table import Table

from memsim.algorithms import ALGORITHMS
from memsim.capacity import DEFAULT_RESERVE_FRACTION, DISTRIBUTIONS, WEIGHT_DTYPES, plan
from memsim.capacity.kv import DEFAULT_KV_GROUP_SIZE
from memsim.capacity.lengths import DEFAULT_REQUESTS, read_lengths, synthetic_lengths
from memsim.capacity.plan import CapacityPlan
from memsim.capacity.timing import DEFAULT_DECODE_ALGO, DEFAULT_PREFILL_ALGO
from memsim.cli.render import human_time
from memsim.errors import MemsimError
from memsim.hardware import DEFAULT_GPU
from memsim.models import DEFAULT_MODEL, load_model, model_names
from memsim.predict import ENGINES
from memsim.workload.dtypes import COMPUTE_DTYPES, KV_DTYPES


def both_units(n: float) -> str:
    """Bytes in decimal and binary units: '5.37 GB (5.00 GiB)'."""
    for dec, bin_, size in (("GB", "GiB", 3), ("MB", "MiB", 2), ("KB", "KiB", 1)):
        if abs(n) >= 1000**size:
            return f"{n / 1000**size:,.2f} {dec} ({n / 1024**size:,.2f} {bin_})"
    return f"{n:,.0f} B"


def _lengths(lengths_file, lengths_dist, requests, seed, context):
    if lengths_file and lengths_dist:
        raise MemsimError(f"give --lengths {lengths_file} or --lengths-dist {lengths_dist}, not both")
    if lengths_file:
        return read_lengths(lengths_file, context)
    if lengths_dist:
        return synthetic_lengths(lengths_dist, context, requests, seed)
    return None


def memory_table(p: CapacityPlan) -> Table:
    lay, per_gpu = p.layout, p.tp > 1
    where = "one" if p.tp == 1 else f"{p.tp} x"
    table = Table(title=f"{p.model.name} ({p.model.attention}, {p.model.kv_heads} K/V heads) on {where} {p.gpu}: "
                        f"context {p.context}, KV {lay.kv_dtype}, weights {p.weight_dtype}", title_justify="left")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    suffix = " per GPU" if per_gpu else ""
    table.add_row("KV bytes per token", f"{lay.bytes_per_token:,} B" +
                  (f"; {lay.bytes_per_token_per_gpu:,} B per GPU ({lay.kv_heads_per_gpu} K/V "
                   f"head{'s' if lay.kv_heads_per_gpu > 1 else ''}"
                   f"{', replicated' if lay.replicated else ''})" if per_gpu else ""))
    table.add_row(f"KV per sequence ({p.context} tokens)", both_units(p.context * lay.bytes_per_token))
    table.add_row("weights", both_units(p.weights_bytes_total) +
                  (f"; {both_units(p.budget.weights_bytes)} per GPU" if per_gpu else ""))
    table.add_row(f"HBM{suffix}", both_units(p.budget.hbm_bytes))
    table.add_row(f"reserve ({p.budget.reserve_fraction:.0%}){suffix}", both_units(p.budget.reserve_bytes))
    table.add_row(f"left for KV cache{suffix}", both_units(p.budget.kv_bytes))
    table.add_row(f"largest batch at {p.context} tokens", f"{p.max_batch} (paged, blocks of {p.block_size})")
    beyond = f" (beyond the model's {p.model.max_context:,})" if p.max_context > p.model.max_context else ""
    table.add_row(f"largest context at batch {p.batch or 1}", f"{p.max_context:,} tokens{beyond}")
    b = p.batch_for_timing
    table.add_row(f"KV for batch {b}{suffix}", both_units(b * p.kv_bytes_per_sequence) +
                  (f"; {both_units(b * p.context * lay.bytes_per_token_all_gpus)} on all GPUs" if per_gpu else ""))
    table.caption = p.verdict()
    return table


def waste_table(p: CapacityPlan) -> Table:
    w = p.waste
    per_token = p.layout.bytes_per_token_per_gpu
    table = Table(title=f"{w.requests} requests, mean {w.tokens_used / w.requests:,.0f} tokens, max {w.max_len}: "
                        f"KV reserved{' per GPU' if p.tp > 1 else ''}", title_justify="left")
    for col in ("allocation", "reserved", "wasted", "waste"):
        table.add_column(col, justify="left" if col == "allocation" else "right", no_wrap=col == "allocation")
    for label, reserved, waste in (("contiguous (to max length)", w.contiguous_reserved, w.contiguous_waste),
                                   (f"paged (blocks of {w.block_size})", w.paged_reserved, w.paged_waste)):
        table.add_row(label, both_units(reserved * per_token), both_units(waste * per_token),
                      f"{w.fraction(waste, reserved):.1%}")
    return table


def sharing_table(p: CapacityPlan) -> Table:
    first = p.sharing[0]
    table = Table(title=f"prefix sharing with copy-on-write: prompt {first.prompt_len} + {first.gen_len} generated "
                        f"tokens, blocks of {first.block_size}", title_justify="left")
    for col in ("scheme", "sequences", "blocks unshared", "blocks shared", "saved"):
        table.add_column(col, justify="left" if col == "scheme" else "right")
    for s in p.sharing:
        table.add_row(s.scheme, str(s.copies), f"{s.blocks_unshared:,}", f"{s.blocks_shared:,}",
                      f"{s.saved_fraction:.1%}")
    table.caption = "beam search: only the prompt counted as shared (beams also share generated tokens: a lower bound)"
    return table


def time_table(p: CapacityPlan) -> Table:
    d, f = p.decode, p.prefill
    table = Table(title=f"time (engine {p.engine}; decode {p.decode_algo}, prefill {p.prefill_algo})",
                  title_justify="left")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row(f"decode step, attention ({p.model.layers} layers, batch {d.tokens})",
                  f"{human_time(d.attention_s)} ({d.attention_bound}-bound)")
    table.add_row("decode step, weights (roofline)", f"{human_time(d.weights_s)} ({d.weights_bound}-bound)")
    table.add_row("decode step, total", human_time(d.total_s))
    table.add_row("tokens/s (attention + weights)", f"{p.decode_tokens_per_s:,.0f}")
    table.add_row("tokens/s (attention only)", f"{p.decode_attention_tokens_per_s:,.0f}")
    table.add_row(f"time to first token ({f.tokens} prompt tokens)",
                  f"{human_time(f.total_s)} (attention {human_time(f.attention_s)}, weights {human_time(f.weights_s)})")
    return table


def print_plan(p: CapacityPlan, console: Console | None = None) -> None:
    out = console or Console()
    out.print(memory_table(p))
    if p.waste:
        out.print(waste_table(p))
    out.print(sharing_table(p))
    out.print(time_table(p))
    for note in p.notes:
        out.print(f"  {note}", highlight=False, markup=False, soft_wrap=True)


@click.command("capacity")
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="Model preset (memsim models) or YAML path.")
@click.option("--gpu", default=DEFAULT_GPU, show_default=True, help="GPU preset name or YAML path.")
@click.option("--tp", default=1, show_default=True, type=int, help="Tensor-parallel GPUs (heads split over them).")
@click.option("--context", type=int, help="Tokens per sequence (prompt + generated); default: the model's maximum.")
@click.option("--batch", type=int, help="Sequences at once; default: the largest that fits.")
@click.option("--kv-dtype", default="bf16", show_default=True, type=click.Choice(list(KV_DTYPES)))
@click.option("--kv-group-size", default=DEFAULT_KV_GROUP_SIZE, show_default=True, type=int,
              help="Elements per scale of an int8/int4 KV cache.")
@click.option("--weight-dtype", default="bf16", show_default=True, type=click.Choice(list(WEIGHT_DTYPES)))
@click.option("--dtype", default="bf16", show_default=True, type=click.Choice(list(COMPUTE_DTYPES)),
              help="Activations' type: the tensor-core rate of the matmuls.")
@click.option("--reserve", default=DEFAULT_RESERVE_FRACTION, show_default=True, type=float,
              help="Fraction of HBM kept for activations and the runtime.")
@click.option("--block-size", default=16, show_default=True, type=int, help="Tokens per KV block (paged).")
@click.option("--lengths", "lengths_file", type=click.Path(dir_okay=False),
              help="File of request lengths, one per line, for contiguous-vs-paged waste.")
@click.option("--lengths-dist", type=click.Choice(DISTRIBUTIONS), help="Synthetic request lengths instead of a file.")
@click.option("--requests", default=DEFAULT_REQUESTS, show_default=True, type=int, help="Requests for --lengths-dist.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for --lengths-dist.")
@click.option("--samples", default=4, show_default=True, type=int, help="Parallel samples sharing one prompt.")
@click.option("--beam-width", default=4, show_default=True, type=int, help="Beams sharing one prompt.")
@click.option("--prompt-len", type=int, help="Prompt tokens (prefix sharing, time to first token); default context/2.")
@click.option("--gen-len", type=int, help="Generated tokens per sequence; default: the rest of the context.")
@click.option("--engine", default="analytic", show_default=True, type=click.Choice(ENGINES))
@click.option("--decode-algo", default=DEFAULT_DECODE_ALGO, show_default=True, type=click.Choice(list(ALGORITHMS)),
              help="Attention algorithm of a decode step.")
@click.option("--prefill-algo", default=DEFAULT_PREFILL_ALGO, show_default=True, type=click.Choice(list(ALGORITHMS)),
              help="Attention algorithm of the prefill.")
@click.option("--peak", is_flag=True, help="Use datasheet peaks instead of the GPU's measured ceilings.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Write a PNG of KV memory against context for MHA/GQA/MQA and dtypes.")
def capacity_cmd(model, gpu, tp, context, batch, kv_dtype, kv_group_size, weight_dtype, dtype, reserve, block_size,
                 lengths_file, lengths_dist, requests, seed, samples, beam_width, prompt_len, gen_len, engine,
                 decode_algo, prefill_algo, peak, as_json, plot_path):
    """KV-cache and weight memory, the largest batch and context, paging waste, prefix sharing, decode speed."""
    spec = load_model(model)
    ctx = spec.max_context if context is None else context
    lengths = _lengths(lengths_file, lengths_dist, requests, seed, ctx)
    p = plan(spec, gpu, tp=tp, context=ctx, batch=batch, kv_dtype=kv_dtype, weight_dtype=weight_dtype, dtype=dtype,
             block_size=block_size, lengths=lengths, samples=samples, beam_width=beam_width, prompt_len=prompt_len,
             gen_len=gen_len, reserve_fraction=reserve, engine=engine, decode_algo=decode_algo,
             prefill_algo=prefill_algo, kv_group_size=kv_group_size, calibrated=not peak)
    if plot_path:
        from memsim.plots.kv_memory import kv_memory_plot

        kv_memory_plot(spec, plot_path, max_context=ctx, kv_budget_bytes=p.budget.kv_bytes * tp,
                       budget_label=f"room for KV on {tp} GPU{'s' if tp > 1 else ''}")
    if as_json:
        click.echo(json.dumps(p.as_dict(), indent=2))
        return
    print_plan(p)
    if plot_path:
        click.echo(f"plot written to {plot_path}")


@click.command("models")
@click.option("--json", "as_json", is_flag=True)
def models_cmd(as_json):
    """List the model presets."""
    specs = [load_model(n) for n in model_names()]
    if as_json:
        click.echo(json.dumps([m.as_dict() for m in specs], indent=2))
        return
    table = Table(title="model presets (every number cites its source in memsim/models/presets)", title_justify="left")
    for col in ("name", "params", "active", "layers", "heads q/kv", "d", "context"):
        table.add_column(col, justify="left" if col == "name" else "right", no_wrap=True)
    for m in specs:
        active = f"{m.params_per_token / 1e9:,.2f}B" if m.is_moe else "all"
        table.add_row(m.name, f"{m.params / 1e9:,.2f}B", active, str(m.layers),
                      f"{m.q_heads}/{m.kv_heads} {m.attention}", str(m.head_dim), f"{m.max_context:,}")
    Console().print(table)


def register(cli: click.Group) -> None:
    """Add `capacity` and `models` to the memsim command group."""
    cli.add_command(capacity_cmd)
    cli.add_command(models_cmd)
