"""validation/sass_loop.py: loops read from SASS, and the compiled fact that validation.mapping relies on for our
int8 decode (TileConfig.v_prefetch = False): its loop fetches V codes into registers, K through cp.async."""

import json
import os
import subprocess
import sys
from pathlib import Path

from validation.mapping import KERNEL_STRUCTURE
from validation.sass_loop import loops

ROOT = Path(__file__).resolve().parent.parent

SASS = """
        /*0100*/                   MOV R1, c[0x0][0x28] ;
        /*0110*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0120*/                   PRMT R8, R4, 0x7632, R8 ;
        /*0130*/              @!P0 BRA 0x110 ;
        /*0140*/                   EXIT ;
"""


def test_a_loop_is_the_span_of_a_backward_branch_counted_by_opcode():
    (loop,) = loops(SASS)
    assert (loop["from"], loop["to"], loop["instructions"]) == ("0x110", "0x130", 3)
    assert loop["opcodes"] == {"LDG.E.128": 1, "PRMT": 1, "BRA": 1}


def compiled_launches(kernel: str, batch: int = 2, kv_len: int = 4096) -> list[dict]:
    """The command line as a user runs it, outside the test session's Triton interpreter (which would pick the
    interpreter's tiles and compile nothing): every launch compiled for sm_90."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-m", "validation.sass_loop", kernel, "--batch", str(batch), "--heads", "32",
                          "--kv-heads", "8", "--q-len", "1", "--kv-len", str(kv_len)],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out)["launches"]


def first_launch(kernel: str) -> dict:
    return compiled_launches(kernel)[0]


def test_our_int8_decode_loads_v_codes_into_registers_where_the_bf16_one_prefetches():
    assert KERNEL_STRUCTURE["kv_int8"] == {"v_prefetch": False}
    int8, bf16 = first_launch("kv_int8"), first_launch("flash_decoding")
    (int8_loop,), (bf16_loop,) = int8["loops"], bf16["loops"]
    assert int8_loop["opcodes"].get("LDG.E.128", 0) >= 1 and int8_loop["opcodes"].get("LDGSTS.E.BYPASS.128", 0) >= 1
    assert not any(op.startswith("LDG.") for op in bf16_loop["opcodes"])
    assert int8_loop["instructions"] > bf16_loop["instructions"]


def test_flash_decoding_pp_compiles_for_sm90_with_one_split_and_with_several():
    """The interpreter runs what the GPU's compiler refuses (a global that is not constexpr): compile both paths.
    B=64 fills the H100 with one split (unified_max_single alone); B=8 N=32768 takes 4 splits and the combine."""
    one = compiled_launches("flash_decoding_pp", batch=64, kv_len=8192)
    several = compiled_launches("flash_decoding_pp", batch=8, kv_len=32768)
    assert [(launch["kernel"], launch["grid"][2]) for launch in one] == [("unified_max_single", 1)]
    assert [launch["kernel"] for launch in several] == ["unified_max_split", "unified_max_combine"]
    assert several[0]["grid"][2] == 4
    assert all(len(launch["loops"]) == 1 for launch in (one[0], several[0]))  # the loop over key blocks
