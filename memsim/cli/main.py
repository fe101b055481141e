"""The `memsim` command: parse, call one library function, render."""

import json
import sys

import click
from rich.console import Console

from memsim.errors import MemsimError
from memsim.explain import explain
from memsim.hardware import DEFAULT_GPU, load_gpu
from memsim.hardware.spec import MMA_PATHS
from memsim.predict import ENGINES, resolve_tiles, run
from memsim.resources import FIRST_LAUNCH, CtaResources
from memsim.algorithms import ALGORITHMS, PASSES
from memsim.schedules.orders import DEFAULT_GROUP, ORDERS
from memsim.workload import AttentionShape
from memsim.workload.dtypes import (COMPUTE_DTYPES, DEFAULT_KV_GROUP_SIZE, DEFAULT_SCALE_DTYPE, KV_DTYPES,
                                    SCALE_DTYPES)
from memsim.workload.tiles import ATOMIC_SEMS, DQ_MODES, KEY_ORDERS
from memsim.cli import capacity as capacity_cli, render, run as run_cli, sweep as sweep_cli, validate
from memsim.cli.progress import ctas_progress


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="memsim")
def cli():
    """What an attention algorithm costs on a GPU: bytes per memory level, FLOPs per unit, latency."""


@cli.command("predict")
@click.option("--gpu", default=DEFAULT_GPU, show_default=True, help="Preset name or path to a GPU YAML file.")
@click.option("--algo", default="flash2", show_default=True, type=click.Choice(list(ALGORITHMS)))
@click.option("--batch", default=1, show_default=True, type=int)
@click.option("--heads", default=32, show_default=True, type=int, help="Query heads.")
@click.option("--kv-heads", type=int, help="K/V heads (GQA/MQA); default: --heads.")
@click.option("--seq", default=4096, show_default=True, type=int, help="Query length (1 for decode).")
@click.option("--kv-seq", type=int, help="Key/value length; default: --seq.")
@click.option("--head-dim", default=128, show_default=True, type=int)
@click.option("--dtype", default="bf16", show_default=True, type=click.Choice(list(COMPUTE_DTYPES)))
@click.option("--kv-dtype", type=click.Choice(list(KV_DTYPES)), help="KV-cache storage type; default: --dtype.")
@click.option("--kv-group-size", default=DEFAULT_KV_GROUP_SIZE, show_default=True, type=int,
              help="int8/int4 KV caches: elements of a key or value row that share one scale.")
@click.option("--kv-scale-dtype", default=DEFAULT_SCALE_DTYPE, show_default=True,
              type=click.Choice(SCALE_DTYPES),
              help="int8/int4 KV caches: the type each scale is stored in (kernels/kv_quant.py keeps fp32 scales "
                   "for bf16 tensors).")
@click.option("--causal/--no-causal", default=False, show_default=True)
@click.option("--window", type=int, help="Sliding-window size in keys.")
@click.option("--block-m", type=int, help="BLOCK_M: query rows per tile.")
@click.option("--block-n", type=int, help="BLOCK_N: keys per tile.")
@click.option("--warps", type=int, help="num_warps per CTA.")
@click.option("--stages", type=int, help="num_stages: K/V buffers in flight.")
@click.option("--splits", type=int, help="KV splits (Flash-Decoding).")
@click.option("--page-size", type=int, help="Tokens per KV-cache page (paged attention).")
@click.option("--reload-q", is_flag=True, help="flash2: the kernel reads its Q tile again for every key block "
                                               "(CUTLASS memory-efficient attention) instead of keeping it on chip.")
@click.option("--no-v-prefetch", "no_v_prefetch", is_flag=True,
              help="flash_decoding, paged, flash_decoding_pp: the kernel loads each V tile into registers "
                   "in the iteration that uses it instead of through the shared-memory stages (kernels/kv_quant.py's int8 "
                   "decode), so every iteration waits out its V load (--engine des; the analytic model has no load latency).")
@click.option("--no-lse", "no_lse", is_flag=True,
              help="flash2, flash3, flash_decoding forward: the kernel writes O alone, not each row's log-sum-exp "
                   "beside it (an inference kernel such as cuDNN's; partial statistics between splits are still "
                   "written).")
@click.option("--key-order", type=click.Choice(KEY_ORDERS), help="flash2 forward: the order a query block walks its "
              "key blocks: ascending (the Triton tutorial; default) or descending (FlashAttention-2's CUDA kernel, "
              "PyTorch SDPA's flash path), which on the H100 re-reads K and V from HBM as heads grow (--engine des: the "
              "L2's sets; the analytic model reads both walks alike).")
@click.option("--dq", type=click.Choice(DQ_MODES), help="flash2 backward: dQ by fp32 atomics in L2 (atomic, "
              "flash-attention's CUDA kernels; default) or in a kernel of its own that recomputes S and dP (separate, "
              "the Triton tutorial and kernels/flash2.py).")
@click.option("--atomic-sem", type=click.Choice(ATOMIC_SEMS), help="linear: the ordering of the atomics that add the "
              "partial states: acq_rel (Triton's default for tl.atomic_add: each thread's atomics one at a time, each "
              "behind a GPU-scope fence; default) or relaxed (the warps go on).")
@click.option("--mma", type=click.Choice(MMA_PATHS), help="The instruction the kernel's matrix products compile to: "
              "fastest (the GPU's own, wgmma on Hopper; default), mma_sync (sm_80 code such as FlashAttention-2) "
              "or fma (CUDA cores, no tensor cores).")
@click.option("--spill-bytes-per-iteration", "spill_iteration", type=int,
              help="flash2 forward (or, with --pass bwd --dq separate, its dK/dV kernel) and the flash_decoding split "
                   "kernel: bytes of registers each CTA spills to local memory every key block (a property of the "
                   "compiled kernel: ncu's local-store sectors x 32 at two shapes, validation/fit_spills.py).")
@click.option("--spill-bytes-per-cta", "spill_cta", type=int,
              help="the same kernels: bytes of registers each CTA spills to local memory once.")
@click.option("--registers", type=int, help="Registers per thread of the pass's first launch, as ncu reports it "
                                             "(launch__registers_per_thread); default: memsim's estimate.")
@click.option("--smem-bytes", type=int, help="Shared memory per CTA of the pass's first launch, dynamic + static, as "
                                              "ncu reports it; default: the tiles' buffers.")
@click.option("--loop-instructions", type=float,
              help="SASS instructions each warp of the pass's first launch issues per loop iteration (--engine des): "
                   "python3 -m validation.sass_loop for our kernels, or ncu's smsp__inst_executed.sum / (warps x "
                   "iterations); default: not modelled.")
@click.option("--pass", "pass_", default="fwd", show_default=True, type=click.Choice(PASSES))
@click.option("--engine", default="des", show_default=True, type=click.Choice(ENGINES),
              help="des: the discrete-event simulation (seconds to minutes on large causal shapes); "
                   "analytic: the closed-form model, at once.")
@click.option("--faithful", is_flag=True,
              help="--engine des: simulate every tile of every CTA (no merged CTAs, batched loops or extrapolated "
                   "waves); fast mode, the default, agrees with it within 1% and is 10-40x quicker.")
@click.option("--peak", is_flag=True, help="Use datasheet peaks instead of the GPU's measured ceilings.")
@click.option("--compare", help="Comma-separated algorithms to show side by side, e.g. standard,flash1,flash2.")
@click.option("--order", default="pid", show_default=True, type=click.Choice(ORDERS),
              help="Dispatch order (--engine des): program-id, grouped (Triton's swizzle), or a persistent grid.")
@click.option("--swizzle-group", default=DEFAULT_GROUP, show_default=True, type=int,
              help="Rows of (batch, head) per group for --order swizzle.")
@click.option("--persistent-ctas", type=int, help="CTAs of the persistent grid; default: all that fit at once.")
@click.option("--trace", "trace_path", type=click.Path(dir_okay=False),
              help="Write a Chrome/Perfetto trace of the simulation to this file (--engine des).")
@click.option("--explain", "show_explain", is_flag=True, help="Say in a few lines why the kernel is bound where it is.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def predict_cmd(gpu, algo, batch, heads, kv_heads, seq, kv_seq, head_dim, dtype, kv_dtype, kv_group_size,
                kv_scale_dtype, causal, window,
                block_m, block_n, warps, stages, splits, page_size, reload_q, no_v_prefetch, no_lse, key_order, dq, atomic_sem, mma, spill_iteration, spill_cta, registers,
                smem_bytes, loop_instructions, pass_, engine, faithful, peak, compare, order,
                swizzle_group, persistent_ctas, trace_path, show_explain, as_json):
    """Predict bytes, FLOPs, latency and bound of one attention call."""
    algos = [a.strip() for a in compare.split(",")] if compare else [algo]
    _check_des_options(engine, order, trace_path, algos, faithful, loop_instructions)
    spec = load_gpu(gpu)
    shape = AttentionShape(batch=batch, q_heads=heads, kv_heads=kv_heads, q_len=seq, kv_len=kv_seq,
                           head_dim=head_dim, dtype=dtype, kv_dtype=kv_dtype, kv_group_size=kv_group_size,
                           kv_scale_dtype=kv_scale_dtype, causal=causal, window=window)
    overrides = dict(block_m=block_m, block_n=block_n, num_warps=warps, num_stages=stages,
                     num_splits=splits, page_size=page_size, q_reload=reload_q or None,
                     v_prefetch=False if no_v_prefetch else None, lse_output=False if no_lse else None, key_order=key_order, dq=dq,
                     atomic_sem=atomic_sem, mma=mma,
                     spill_bytes_per_iteration=spill_iteration, spill_bytes_per_cta=spill_cta)
    given = (registers, smem_bytes, loop_instructions)
    resources = {FIRST_LAUNCH: CtaResources(*given)} if any(v is not None for v in given) else None
    results, runs = [], []
    for a in algos:
        tiles = resolve_tiles(spec, a, shape, **overrides)
        with ctas_progress(f"simulating {a}", enabled=engine == "des") as progress:
            p, runs = run(a, shape, spec, tiles, pass_, engine, not peak, fast=not faithful, order=order, group=swizzle_group,
                          ctas=persistent_ctas, trace=bool(trace_path), progress=progress, resources=resources)
        results.append(p)
    if trace_path:
        from memsim.engine.trace import write_trace

        write_trace(trace_path, runs, title=f"memsim {results[0].algo} on {results[0].gpu}")
    _show(results, as_json, show_explain, trace_path)


def _check_des_options(engine: str, order: str, trace_path: str | None, algos: list[str], faithful: bool = False,
                       loop_instructions: float | None = None) -> None:
    if engine != "des" and loop_instructions is not None:
        raise MemsimError("--loop-instructions needs --engine des: the analytic model has no warp schedulers")
    if engine != "des" and faithful:
        raise MemsimError("--faithful needs --engine des: the analytic model has no tiles to simulate")
    if engine != "des" and trace_path:
        raise MemsimError(f"--trace {trace_path} needs --engine des: the analytic model has no timeline")
    if engine != "des" and order != "pid":
        raise MemsimError(f"--order {order} needs --engine des: the analytic model has no dispatch order")
    if trace_path and len(algos) > 1:
        raise MemsimError(f"--trace takes one algorithm, not --compare {','.join(algos)}")


def _show(results: list, as_json: bool, show_explain: bool, trace_path: str | None) -> None:
    if as_json:
        dicts = [dict(r.as_dict(), explain=explain(r)) if show_explain else r.as_dict() for r in results]
        click.echo(json.dumps(dicts[0] if len(dicts) == 1 else dicts, indent=2))
        return
    if len(results) > 1:
        Console().print(render.compare_table(results))
    else:
        render.print_prediction(results[0])
    if show_explain:
        for r in results:
            render.print_explanation(r, explain(r), heading=len(results) > 1)
    if trace_path:
        click.echo(f"trace written to {trace_path} (open it in ui.perfetto.dev)")


@cli.command("gpus")
@click.option("--json", "as_json", is_flag=True)
def gpus_cmd(as_json):
    """List the GPU presets."""
    render.print_gpus(as_json)


capacity_cli.register(cli)  # capacity, models
sweep_cli.register(cli)  # sram-fit, sweep
validate.register(cli)
run_cli.register(cli)  # run


def main(argv: list[str] | None = None) -> int:
    """Entry point: bad input prints one line and exits 2, without a traceback."""
    try:
        cli.main(args=argv, prog_name="memsim", standalone_mode=False)
    except MemsimError as err:
        click.echo(f"memsim: error: {err}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("memsim: aborted", err=True)
        return 130
    except click.ClickException as err:
        click.echo(f"memsim: error: {err.format_message()}", err=True)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
