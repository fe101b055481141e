"""Register spills of SDPA's FlashAttention-2 forward, a property of the compiled kernel.

PyTorch's flash_fwd_kernel runs at 255 registers per thread on the H100 and spills: every thread stores
some registers to local memory once, and some again every key block (local stores go through L1 to L2,
so they are SM -> L2 bytes; the reloads hit L1). memsim models them as TileConfig.spill_bytes_per_cta
and spill_bytes_per_iteration. This fits both per tile shape,

    local-store bytes = per_iteration x (CTAs x key blocks each) + per_cta x CTAs,

by least squares over `validation.l2_read_probe` runs of the kernel at shapes that are not in the
validation suite (results/h100/spill-probe-ncu-2026-11-23.csv: ncu's
l1tex__t_sectors_pipe_lsu_mem_local_op_st), so that no row the suite reports is fitted.
validation.mapping.SDPA_FA2_SPILLS holds the result (a test checks it against this fit).

    python3 -m validation.fit_spills [--decode] [CSV]

With --decode (results/h100/decode-spill-probe-ncu-2026-11-23.csv) it fits the kernel's one-split decode instantiation
(flash_fwd_kernel at q_len = 1: validation.mapping.SDPA_FA2_DECODE_SPILLS), each CTA one row block over every key
block of its (batch, kv head).

With --ours (results/h100/ours-spill-probe-ncu-2026-11-23.csv) it reads our own kernels that run at 255 registers:
the FP8 forward and the backward's dK/dV kernel at head dim 64, six shapes each outside the suite. Their local
stores are a fixed number of bytes per CTA, whatever the CTA's loop length (N = 1024 to 8192), one number for
the causal instantiation and one for the other (validation.mapping.OUR_SPILLS); a kernel whose bytes per CTA
differ between shapes has no fit.
"""

import argparse
import dataclasses
import pathlib
import sys
from collections import defaultdict

import numpy as np

from memsim.sectors import SECTOR_BYTES
from validation.cases import Case
from validation.ncu import parse_raw

RESULTS = pathlib.Path(__file__).parent / "results" / "h100"
PROBE = RESULTS / "spill-probe-ncu-2026-11-23.csv"
DECODE_PROBE = RESULTS / "decode-spill-probe-ncu-2026-11-23.csv"  # its one-split decode instantiation
OURS_PROBE = RESULTS / "ours-spill-probe-ncu-2026-11-23.csv"  # our FP8 forward and backward dK/dV kernel at d = 64
OUR_SPILLING_LAUNCHES = {"flash2_fp8": "_flash2_fp8_fwd", "flash2_bwd": "_flash2_bwd_dkdv"}
LOCAL_STORE_SECTORS = "l1tex__t_sectors_pipe_lsu_mem_local_op_st.sum"


@dataclasses.dataclass(frozen=True)
class Probe:
    case: str
    tile: tuple[int, int, int]  # head_dim, BLOCK_M, BLOCK_N
    ctas: int
    iterations: int  # key blocks over every CTA
    stored_bytes: float


def probes(csv_path: pathlib.Path = PROBE) -> list[Probe]:
    from memsim.algorithms.tiling import q_block_tiles
    from validation.mapping import map_sdpa_flash
    out = []
    for launch in parse_raw(csv_path.read_text()):
        case = Case.from_id(launch["range"])
        row = {**dataclasses.asdict(case), "launches": [launch]}
        mapped = map_sdpa_flash(row)
        shape, tiles = mapped.shape, mapped.tiles
        blocks = q_block_tiles(shape, tiles.block_m, tiles.block_n)
        out.append(Probe(case.id, (shape.head_dim, tiles.block_m, tiles.block_n), int(launch["launch__grid_size"]),
                         shape.batch * shape.q_heads * int(blocks.tiles.sum()),
                         launch[LOCAL_STORE_SECTORS] * SECTOR_BYTES))
    return out


def decode_probes(csv_path: pathlib.Path = DECODE_PROBE) -> list[Probe]:
    """The decode probe's launches (q_len = 1, the one-split flash_fwd_kernel): tile from the kernel's traits,
    one key block of BLOCK_N keys per iteration of each CTA."""
    from validation.mapping import FA2_TRAITS
    out = []
    for launch in parse_raw(csv_path.read_text()):
        case = Case.from_id(launch["range"])
        d, block_m, block_n = map(int, FA2_TRAITS.search(launch["kernel"]).groups())
        ctas = int(launch["launch__grid_size"])
        out.append(Probe(case.id, (d, block_m, block_n), ctas, ctas * -(-case.kv_len // block_n),
                         launch[LOCAL_STORE_SECTORS] * SECTOR_BYTES))
    return out


@dataclasses.dataclass(frozen=True)
class OurProbe:
    case: str
    key: tuple[str, int, bool]  # our kernel, head_dim, causal
    ctas: int
    stored_bytes: float


def ours_probes(csv_path: pathlib.Path = OURS_PROBE) -> list[OurProbe]:
    """The spilling launch of each of our probed cases (OUR_SPILLING_LAUNCHES), with its CTAs and local stores."""
    out = []
    for launch in parse_raw(csv_path.read_text()):
        case = Case.from_id(launch["range"])
        if launch["kernel"] != OUR_SPILLING_LAUNCHES.get(case.kernel):
            continue
        out.append(OurProbe(case.id, (case.kernel, case.head_dim, case.causal), int(launch["launch__grid_size"]),
                            launch[LOCAL_STORE_SECTORS] * SECTOR_BYTES))
    return out


def fit_per_cta(found: list[OurProbe]) -> dict[tuple[str, int, bool], int]:
    """(kernel, head_dim, causal) -> local-store bytes per CTA, where every probed shape of it stores the same
    whole number of bytes per CTA (a per-CTA spill, as our kernels' are); keys whose shapes differ are left out."""
    by_key = defaultdict(set)
    for p in found:
        by_key[p.key].add(p.stored_bytes / p.ctas)
    fitted = {}
    for key, values in sorted(by_key.items()):
        per_cta = values.pop()
        if not values and float(per_cta).is_integer():
            fitted[key] = round(per_cta)
    return fitted


def fit(found: list[Probe]) -> dict[tuple[int, int, int], tuple[int, int]]:
    """(head_dim, BLOCK_M, BLOCK_N) -> (bytes per CTA per key block, bytes per CTA), whole bytes; tiles probed at
    fewer than two shapes have no fit."""
    by_tile = defaultdict(list)
    for p in found:
        by_tile[p.tile].append(p)
    out = {}
    for tile, group in sorted(by_tile.items()):
        if len({(p.iterations, p.ctas) for p in group}) < 2:
            continue
        a = np.array([[p.iterations, p.ctas] for p in group], dtype=float)
        b = np.array([p.stored_bytes for p in group])
        (per_iteration, per_cta), *_ = np.linalg.lstsq(a, b, rcond=None)
        out[tile] = (round(per_iteration), round(per_cta))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="?", type=pathlib.Path, help="ncu --page raw output; default: the recorded probe")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--decode", action="store_true", help="the one-split decode kernel's probe (q_len = 1)")
    which.add_argument("--ours", action="store_true", help="our FP8 forward and backward dK/dV kernels' probe")
    args = parser.parse_args(argv)
    csv = args.csv or (DECODE_PROBE if args.decode else OURS_PROBE if args.ours else PROBE)
    if not csv.is_file():
        parser.error(f"{csv}: no such file")
    if args.ours:
        return _print_ours(ours_probes(csv))
    found = decode_probes(csv) if args.decode else probes(csv)
    fitted = fit(found)
    print("head_dim BLOCK_M BLOCK_N   bytes per key block   bytes per CTA")
    for (d, bm, bn), (per_iteration, per_cta) in fitted.items():
        print(f"{d:8d} {bm:7d} {bn:7d}   {per_iteration:19d}   {per_cta:13d}")
    print("\ncase                                         measured MB   fitted MB")
    for p in found:
        if p.tile not in fitted:
            print(f"{p.case:44s} {p.stored_bytes / 1e6:11.2f}   (one shape of this tile: no fit)")
            continue
        per_iteration, per_cta = fitted[p.tile]
        print(f"{p.case:44s} {p.stored_bytes / 1e6:11.2f}   {(per_iteration * p.iterations + per_cta * p.ctas) / 1e6:9.2f}")
    return 0


def _print_ours(found: list[OurProbe]) -> int:
    fitted = fit_per_cta(found)
    print("case                                        CTAs   local-store bytes per CTA")
    for p in found:
        print(f"{p.case:42s} {p.ctas:6d}   {p.stored_bytes / p.ctas:12.1f}")
    print("\nkernel       head_dim causal   bytes per CTA")
    for (kernel, d, causal), per_cta in fitted.items():
        print(f"{kernel:12s} {d:8d} {str(causal):6s}   {per_cta:13d}")
    for key in sorted({p.key for p in found} - set(fitted)):
        print(f"{key}: bytes per CTA differ between shapes: no fit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
