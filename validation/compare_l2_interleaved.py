"""memsim's two engines against validation/l2_interleaved_probe.py: what stays dirty in L2 at a kernel's end when
each CTA reads, then writes.

    python3 -m validation.compare_l2_interleaved [--probe results/h100/l2-interleaved-2026-11-24.json ...]

Each probe case is described to memsim as the kernel it is: `ctas` CTAs of 8 warps, each loading its `unique`
private 16 KiB tiles and its `shared` 16 KiB tiles (the same for `readers` consecutive CTAs), one after another,
then doing `spin` dependent multiply-adds per thread (CUDA-core work) and storing one 16 KiB tile. The discrete-event
engine follows the tiles through its L2 (memsim.engine.l2cache); the analytic model applies memsim.writes to the
kernel's bytes per tensor. Both use the H100 preset's calibrated dirty lifetime, shared-tile weight and dirty cap,
which come from validation/l2_dirty_lifetime.py (writes first, every read after them) and validation/l2_write_back.py:
this probe is not fitted. Registers per thread are not in the probe's counters; memsim is told 32 (8 CTAs per SM,
the most 8-warp CTAs an SM holds).
"""

import argparse
import json
import statistics
from pathlib import Path

from rich.console import Console
from rich.table import Table

from memsim.hardware.load import load_gpu
from memsim.kernel import Traffic
from memsim.schedules.steps import CtaProgram, Launch, Load, Store, Vector
from memsim.writes import resident_writes
from validation.l2_interleaved_probe import MIB, TILE_BYTES, TILE_ELEMENTS, Case

RESULTS = Path(__file__).parent / "results" / "h100"
PROBES = (RESULTS / "l2-interleaved-2026-11-24.json", RESULTS / "l2-interleaved-rerun-2026-11-24.json")
WARPS = 8
REGISTERS_PER_THREAD = 32  # not measured: the most 8-warp CTAs an SM holds (64 warps) fit


def case_of(row: dict) -> Case:
    """The probe case a recorded row measured (rows of the first run have no `spin`: 0)."""
    return Case(row["label"], row["written_bytes"], row["unique"], row["shared"], row["readers"], row.get("spin", 0))


def launch(row: dict) -> Launch:
    """The probe kernel of one case as a memsim launch."""
    case = case_of(row)

    def program(pid: int) -> CtaProgram:
        loads = tuple(Load("unique", None, j, TILE_BYTES) for j in range(case.unique))
        loads += tuple(Load("shared", ("group", pid // case.readers), j, TILE_BYTES) for j in range(case.shared))
        work = (Vector(cuda_ops=2.0 * case.spin * TILE_ELEMENTS),) if case.spin else ()
        return CtaProgram(prologue=loads + work, epilogue=(Store("out", None, 0, TILE_BYTES),))

    return Launch(name=case.label, grid=case.ctas, warps_per_cta=WARPS, smem_buffers={},
                  registers_per_thread=REGISTERS_PER_THREAD, num_stages=1, program=program,
                  work_class=lambda pid: pid // case.readers)


def des_dirty_at_end(row: dict, gpu) -> float:
    """Bytes of the case's output the discrete-event engine leaves dirty in L2 at the kernel's end."""
    from memsim.engine.simulate import simulate
    result, = simulate(gpu, gpu.ceilings(), [launch(row)])
    return result.counters.hbm_write_deferred.get("out", 0.0)


def analytic_dirty_at_end(row: dict, gpu) -> float:
    """The same from memsim.writes over the kernel's bytes per tensor (each read tile from HBM once)."""
    ceilings, case = gpu.ceilings(), case_of(row)
    traffic = {
        "unique": Traffic(l2_read=case.unique_read_bytes, hbm_read=case.unique_read_bytes),
        "shared": Traffic(l2_read=case.ctas * case.shared * TILE_BYTES, hbm_read=case.shared_read_bytes),
        "out": Traffic(l2_write=case.written_bytes, hbm_write=case.written_bytes),
    }
    kept = resident_writes(traffic, ceilings.l2_dirty_resident_bytes, ceilings.l2_dirty_lifetime_bytes,
                           ceilings.l2_shared_tile_age_weight)
    return kept["out"].hbm_write_deferred


def compare(paths: list[Path], gpu_name: str = "H100-SXM5-80GB") -> list[dict]:
    """One row per case: measured dirty bytes at the end (each run), and both engines' predictions."""
    gpu = load_gpu(gpu_name)
    runs: dict[str, list[float]] = {}
    cases: dict[str, dict] = {}
    for path in paths:
        for row in json.loads(path.read_text())["rows"]:
            runs.setdefault(row["label"], []).append(row["dirty_at_end_bytes"])
            cases.setdefault(row["label"], row)
    return [{"label": label, "measured": runs[label], "des": des_dirty_at_end(row, gpu),
             "analytic": analytic_dirty_at_end(row, gpu)} for label, row in cases.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe", type=Path, nargs="+", default=list(PROBES), help="the probe's JSON files")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.probe if not p.is_file()]
    if missing:
        parser.error(f"no such probe file: {', '.join(missing)}; run validation/l2_interleaved_probe.py on a GPU")
    rows = compare(args.probe)
    table = Table(title="dirty in L2 at the kernel's end, MiB (measured: each run)", title_justify="left")
    for col in ("case", "measured", "des", "analytic", "des / measured"):
        table.add_column(col, justify="left" if col == "case" else "right")
    for r in rows:
        mean = statistics.mean(r["measured"])
        table.add_row(r["label"], " / ".join(f"{m / MIB:.1f}" for m in r["measured"]), f"{r['des'] / MIB:.1f}",
                      f"{r['analytic'] / MIB:.1f}", f"{r['des'] / mean:.2f}" if mean else "-")
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
