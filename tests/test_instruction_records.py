"""Instruction counts as validation.mapping derives them from the ncu records (validation.instruction_mix), checked
against the static SASS of the same kernels (validation.sass_loop): memsim's loop iterations are the kernel's."""

import json
from pathlib import Path

import pytest

from validation.compare import load_rows
from validation.mapping import RESULTS, map_case
from validation.sass_loop import INSTRUCTION, opcode

ROWS = {row["id"]: row for row in load_rows(RESULTS)}


def sass_loop_instructions(kernel: str) -> int:
    """The one loop of the split kernel in the committed SASS record of the B8 H32/8 32K-key decode case."""
    record = json.loads(next(Path(RESULTS).glob(f"sass-loops-{kernel}-b8h32k8n1m32768d128-*.json")).read_text())
    (loop,) = record["launches"][0]["loops"]
    return loop["instructions"]


@pytest.mark.parametrize("kernel", ["flash_decoding", "kv_int8"])
def test_counted_instructions_per_iteration_match_the_loop_in_the_sass(kernel):
    # ncu's count spreads the prologue and epilogue over the iterations: a little more than the loop, never less.
    resources = map_case(ROWS[f"{kernel}.b8h32k8n1m32768d128c0.bf16"]).resources["flash_decoding_split"]
    loop = sass_loop_instructions(kernel)
    assert loop <= resources.loop_instructions <= 1.05 * loop


def test_every_case_of_ours_with_a_loop_gets_its_instruction_count():
    ours = [row for row in ROWS.values() if row["kernel"] in ("flash2", "flash1", "lightning", "moba", "ring")]
    for row in ours:
        counts = [r.loop_instructions for r in (map_case(row).resources or {}).values() if r.loop_instructions]
        assert counts and all(100 < c < 5000 for c in counts), row["id"]


def test_instructions_pair_launch_by_launch_and_the_registers_only_where_grids_agree():
    # Our linear attention's call runs a PyTorch fill of its state before its two kernels, as memsim's schedule
    # does (linear_state_zero: no loop, so no instructions; 258 CTAs for memsim's state with its normaliser against
    # the fill's 256, so none of its registers); the state and output kernels take their counts and registers.
    resources = map_case(ROWS["linear.b1h16k16n4096m4096d128c0.bf16"]).resources
    assert set(resources) == {"linear_state", "linear_output"}
    for name in ("linear_state", "linear_output"):
        assert resources[name].loop_instructions and resources[name].registers_per_thread


def loop_body(sass_text: str, first: str, last: str) -> list[str]:
    """The opcodes of the instructions from address `first` to `last` (hex) of a cuobjdump listing."""
    return [opcode(text) for address, text in INSTRUCTION.findall(sass_text)
            if int(first, 16) <= int(address, 16) <= int(last, 16)]


def test_lightnings_loop_waits_for_every_copy_it_issued_after_its_matmuls_so_it_is_mapped_as_one_stage():
    """The committed sm_90 SASS of our Lightning scan (launched with 2 stages): the loop opens by waiting for no
    copy group to remain in flight, and issues the next iteration's copies only after its last matrix instruction;
    validation maps it as one stage (no load overlapping the iteration's compute)."""
    record = json.loads(next(Path(RESULTS).glob("sass-loops-lightning-b1h16k16n4096m4096d128c1-*.json")).read_text())
    (launch,) = record["launches"]
    (loop,) = launch["loops"]
    assert launch["num_stages"] == 2
    text = next(Path(RESULTS).glob("sass-lightning-b1h16k16n4096m4096d128c1-*.sass")).read_text()
    first = next(body for address, body in INSTRUCTION.findall(text) if int(address, 16) == int(loop["from"], 16))
    assert first.split() == ["DEPBAR.LE", "SB0,", "0x0"]
    body = loop_body(text, loop["from"], loop["to"])
    last_mma = max(i for i, op in enumerate(body) if op.startswith("HGMMA"))
    copies = [i for i, op in enumerate(body) if op.startswith("LDGSTS")]
    assert len(body) == loop["instructions"] and copies and min(copies) > last_mma
    assert map_case(ROWS["lightning.b1h16k16n4096m4096d128c1.bf16"]).tiles.num_stages == 1


def test_linear_attention_takes_its_stages_from_its_state_kernel():
    # The output kernel (the first with a BLOCK_M tile) is one matmul per CTA, launched with 1 stage; the state
    # kernel streams K and V through 3.
    row = ROWS["linear.b1h16k16n4096m4096d128c0.bf16"]
    state = next(c for c in row["launch_configs"] if c["kernel"] == "linear_state_kernel")
    assert state["num_stages"] == 3 and map_case(row).tiles.num_stages == 3
