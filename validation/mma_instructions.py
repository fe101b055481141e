"""Which matrix instruction each compiled Triton kernel uses: Hopper's warpgroup MMA (wgmma),
the warp-level mma.sync of earlier GPUs, or neither (FMA on the CUDA cores).

    TRITON_CACHE_DIR=DIR python3 -m validation.measure ...      # on the GPU machine: compile the kernels
    python3 -m validation.mma_instructions DIR [DIR ...] [--out FILE]

Reads every kernel in the given Triton cache folders (TRITON_CACHE_DIR, and inductor's
TORCHINDUCTOR_CACHE_DIR for flex_attention) from its PTX and its metadata, and prints one row
per compiled variant: name, warps, shared memory, and how many wgmma and mma.sync instructions
its PTX holds. With --out, writes the rows as JSON. Imports only the standard library.
"""

import argparse
import json
import re
import sys
from pathlib import Path

WGMMA = re.compile(r"\bwgmma\.mma_async\b")
MMA_SYNC = re.compile(r"\bmma\.sync\b")


def instruction(wgmma: int, mma_sync: int) -> str:
    """The path the kernel's matrix products take (memsim's TileConfig.mma)."""
    if wgmma:
        return "warpgroup"
    if mma_sync:
        return "warp"
    return "none"


def scan(folder: Path) -> list[dict]:
    rows = []
    for ptx in sorted(folder.rglob("*.ptx")):
        meta_path = ptx.with_suffix(".json")
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        text = ptx.read_text(errors="replace")
        wgmma, mma_sync = len(WGMMA.findall(text)), len(MMA_SYNC.findall(text))
        target = re.search(r"^\.target\s+(\S+)", text, re.MULTILINE)
        rows.append({
            "kernel": meta.get("name", ptx.stem), "num_warps": meta.get("num_warps"),
            "num_stages": meta.get("num_stages"), "shared_bytes": meta.get("shared"),
            "target": target.group(1) if target else None, "wgmma": wgmma, "mma_sync": mma_sync,
            "mma": instruction(wgmma, mma_sync), "triton": meta.get("triton_version"),
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="Triton cache folders")
    parser.add_argument("--out", type=Path, help="write the rows here as JSON")
    args = parser.parse_args(argv)
    missing = [str(f) for f in args.folders if not f.is_dir()]
    if missing:
        print(f"mma_instructions: no such folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    rows = [row for folder in args.folders for row in scan(folder)]
    rows.sort(key=lambda r: (r["kernel"], r["num_warps"] or 0, r["shared_bytes"] or 0))
    for r in rows:
        print(f"{r['kernel'][:60]:60s} warps={r['num_warps']} smem={r['shared_bytes']} {r['target']} "
              f"wgmma={r['wgmma']} mma.sync={r['mma_sync']} -> {r['mma']}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
