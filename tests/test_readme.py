"""The README's examples are what memsim prints today: every `$ memsim ...` line in an indented block is run,
and each output line shown under it (up to the next command; `...` stands for lines left out) must be a line
of what the command printed, spaces aside, with the exit status a shown error implies."""

import shlex
from pathlib import Path

import pytest

from memsim.cli.main import main

README = Path(__file__).resolve().parents[1] / "README.md"
PROMPT = "$ memsim "
README_COLUMNS = 100  # wide enough that no table row of the README wraps


def examples(text: str) -> list[tuple[str, list[str]]]:
    """(command, the output lines shown under it) for each `$ memsim` line of an indented block."""
    found: list[tuple[str, list[str]]] = []
    shown: list[str] | None = None  # the output lines of the command being read, None outside a block
    for line in text.splitlines():
        stripped, indented = line.strip(), line.startswith("    ")
        if indented and stripped.startswith(PROMPT):
            shown = []
            found.append((stripped[len("$ "):], shown))
        elif indented and stripped and shown is not None:
            shown.append(stripped)
        elif stripped and not indented:
            shown = None  # prose ends a block: what follows belongs to no command
    return found


def squeeze(line: str) -> str:
    return " ".join(line.split())


def test_the_readme_has_examples_to_check():
    commands = [cmd for cmd, _ in examples(README.read_text())]
    assert any(cmd.startswith("memsim predict") for cmd in commands)
    assert any(cmd.startswith("memsim capacity") for cmd in commands)


def test_examples_parser_stops_at_prose():
    text = "    $ memsim a\n    out 1\n\nprose\n    not output\n    $ memsim b\n    out 2\n"
    assert examples(text) == [("memsim a", ["out 1"]), ("memsim b", ["out 2"])]


@pytest.mark.parametrize("command,shown", examples(README.read_text()), ids=lambda v: v if isinstance(v, str) else "")
def test_readme_example_prints_what_the_readme_shows(command, shown, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", str(README_COLUMNS))
    code = main(shlex.split(command)[1:])
    out, err = capsys.readouterr()
    printed = {squeeze(line) for line in (out + err).splitlines()}
    missing = [line for line in shown if line != "..." and squeeze(line) not in printed]
    assert not missing, f"{command!r} no longer prints these README lines:\n" + "\n".join(missing)
    shows_error = any(line.startswith("memsim: error:") for line in shown)
    assert (code != 0) == shows_error, f"{command!r} exited {code}"
