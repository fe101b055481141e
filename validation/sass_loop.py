"""What one of our Triton kernels compiles to on the H100 (sm_90), read on any machine, no GPU needed:
registers, shared memory, and the instructions of each loop of its SASS by opcode.

    python3 -m validation.sass_loop kv_int8 --batch 8 --heads 32 --kv-heads 8 --q-len 1 --kv-len 32768 [--out DIR]

The kernel's own host function (validation.runners) is called on empty CPU tensors with kernels.launch.launch
replaced by a recorder, so each launch is compiled with exactly the arguments, constexprs, warps and stages the
real call would pass. Triton specialises them for an sm_90 target (its launcher's own binder), compiles to a
cubin with its bundled ptxas, and cuobjdump (bundled too) disassembles it. A loop is the span of a backward
branch; each is listed with its instruction count per warp per iteration and the count of each opcode.

The binder is Triton's internal `create_function_from_signature` (triton 3.9); another Triton version may
compile differently from the one that ran the measurements (results/h100/README.md names it).
"""

import argparse
import collections
import contextlib
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

import kernels.flash2
import kernels.flash2_fp8
import kernels.launch
from kernels.flash2 import _check_tensor
from validation.cases import OURS_SHAPES, Case
from validation.runners import DTYPES, _ours

OURS = sorted({"flash2", *OURS_SHAPES})  # the kernels validation.runners can call
SM90 = GPUTarget("cuda", 90, 32)
TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
BRANCH = re.compile(r"\bBRA\s+(?:`\(\.L_x_\d+\)|(0x[0-9a-f]+))")


def recorded_launches(case: Case) -> list[tuple]:
    """[(kernel, config, args, constexprs)] of every launch the case's host function makes, none run."""
    seen = []

    def record(kernel, config, *args, launched=None, **constexprs):  # kernels.launch.launch
        seen.append((kernel, config, args, constexprs))
        return config

    def record_flash2(kernel, config, key, args, constexprs):  # kernels.flash2._launch
        seen.append((kernel, config, args, constexprs))

    def record_fp8(config, key, args, constexprs):  # kernels.flash2_fp8._launch
        seen.append((kernels.flash2_fp8._flash2_fp8_fwd, config, args, constexprs))

    dtype = DTYPES[case.dtype]
    q = torch.zeros(case.batch, case.q_heads, case.q_len, case.head_dim, dtype=dtype)
    k = torch.zeros(case.batch, case.kv_heads, case.kv_len, case.head_dim, dtype=dtype)
    call = _ours(case)  # imports the kernel's module first, so that its own name for launch is replaced below
    real = kernels.launch.launch
    with contextlib.ExitStack() as patches:
        for module in [m for m in list(sys.modules.values()) if getattr(m, "launch", None) is real]:
            patches.enter_context(mock.patch.object(module, "launch", record))
        patches.enter_context(mock.patch.object(kernels.flash2, "_launch", record_flash2))
        patches.enter_context(mock.patch.object(kernels.flash2_fp8, "_launch", record_fp8))
        for module in (kernels.flash2, kernels.flash2_fp8):  # their input checks want CUDA tensors
            patches.enter_context(mock.patch.object(module, "_check_tensor", _check_tensor_on_cpu))
        call(q, k, k.clone())
    return seen


def _check_tensor_on_cpu(name: str, x, ndim: int) -> None:
    """kernels.flash2's tensor check, the device aside (these tensors are only recorded, never read)."""
    with mock.patch.object(kernels.flash2, "INTERPRETING", True):
        _check_tensor(name, x, ndim)


def compile_sm90(kernel, config, args, constexprs):
    """The kernel compiled for sm_90 as the launch would specialise it."""
    backend = make_backend(SM90)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, _ = binder(*args, **constexprs, num_warps=config.num_warps, num_stages=config.num_stages)
    names = list(bound.keys())
    signature = {n: t for n, (t, _) in zip(names, specialization)}
    consts = {(i,): v for i, (t, v) in enumerate(specialization) if t == "constexpr"}
    attrs = {(i,): backend.parse_attr(v) for i, (t, v) in enumerate(specialization)
             if t != "constexpr" and isinstance(v, str)}
    source = ASTSource(fn=kernel, signature=signature, constexprs=consts, attrs=attrs)
    return triton.compile(source, target=SM90, options={"num_warps": config.num_warps, "num_stages": config.num_stages})


def sass(cubin: Path) -> str:
    return subprocess.run([str(TOOLS / "cuobjdump"), "-sass", str(cubin)], capture_output=True, text=True,
                          check=True).stdout


def registers(cubin: Path) -> int | None:
    out = subprocess.run([str(TOOLS / "cuobjdump"), "-res-usage", str(cubin)], capture_output=True, text=True).stdout
    found = re.search(r"REG:(\d+)", out)
    return int(found.group(1)) if found else None


def opcode(instruction: str) -> str:
    """An instruction's opcode, its predicate (@P0, @!UP1, ...) left aside."""
    return re.sub(r"^@!?U?P\w+\s+", "", instruction).split()[0]


def loops(text: str) -> list[dict]:
    """Each backward branch's span: address range, instructions per iteration and per opcode."""
    code = [(int(a, 16), body) for a, body in INSTRUCTION.findall(text)]
    out = []
    for address, body in code:
        target = BRANCH.search(body)
        if target and target.group(1) and int(target.group(1), 16) < address:
            start = int(target.group(1), 16)
            span = [b for a, b in code if start <= a <= address]
            opcodes = collections.Counter(map(opcode, span))
            out.append({"from": hex(start), "to": hex(address), "instructions": len(span),
                        "opcodes": dict(opcodes.most_common())})
    return out


def describe(case: Case, out: Path | None) -> list[dict]:
    """One row per launch of the case; with `out`, each kernel's cubin and SASS are kept there."""
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = out or Path(scratch)
        for kernel, config, args, constexprs in recorded_launches(case):
            compiled = compile_sm90(kernel, config, args, constexprs)
            name = kernel.fn.__name__
            cubin = folder / f"{name}.cubin"
            cubin.write_bytes(compiled.asm["cubin"])
            text = sass(cubin)
            if out is not None:
                (out / f"{name}.sass").write_text(text)
            rows.append({"kernel": name, "grid": list(config.grid), "num_warps": config.num_warps,
                         "num_stages": config.num_stages, "registers_per_thread": registers(cubin),
                         "shared_bytes": compiled.metadata.shared, "loops": loops(text)})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kernel", choices=OURS, help="one of our kernels, as validation.cases names them")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int)
    parser.add_argument("--q-len", type=int, default=1)
    parser.add_argument("--kv-len", type=int, default=4096)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--out", type=Path, help="also write each kernel's SASS here")
    a = parser.parse_args(argv)
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
    case = Case(kernel=a.kernel, batch=a.batch, q_heads=a.heads, kv_heads=a.kv_heads or a.heads, q_len=a.q_len,
                kv_len=a.kv_len, head_dim=a.head_dim, dtype=a.dtype, causal=a.causal)
    rows = describe(case, a.out)
    report = {"target": "sm_90", "triton": triton.__version__, "case": case.id, "launches": rows}
    print(json.dumps(report, indent=1))
    if a.out is not None:
        (a.out / f"sass-loops-{a.kernel}.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
