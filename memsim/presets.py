"""Folders of YAML presets (GPUs, models): reading a file with one-line errors, and the name index."""

from functools import cache
from pathlib import Path

import yaml

from memsim.errors import MemsimError


def read_yaml(path: Path, kind: str) -> object:
    """The parsed YAML of a user's `kind` file ("GPU", "model"); unreadable or malformed files are refused in one line."""
    try:
        text = path.read_text()
    except OSError as err:
        raise MemsimError(f"{path}: cannot read {kind} file ({err.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise MemsimError(f"{path}: not valid YAML{at}: {getattr(err, 'problem', err)}") from None


@cache
def preset_index(directory: Path) -> dict[str, str]:
    """Lower-cased name or alias -> preset file name, for every *.yaml in `directory`."""
    index = {}
    for entry in directory.iterdir():
        if entry.name.endswith(".yaml"):
            head = yaml.safe_load(entry.read_text())
            for alias in [head["name"], *head.get("aliases", [])]:
                index[str(alias).lower()] = entry.name
    return index
