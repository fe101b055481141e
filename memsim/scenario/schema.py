"""Checking the values of a scenario file: every key has a checker that returns the value (or what it
names: a GPUSpec for a GPU, a ModelSpec for a model) or refuses it in one line naming the file, the
key, the value and what would be right.

A checker is a function (value, where) -> checked value. `where` (a Where) knows the file and the
key's path in it, e.g. `scenarios/chat.yaml: steps[1].shape.q_heads`.
"""

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from memsim.errors import MemsimError

OMIT = object()  # a key's default when the library's own default applies: the key is not passed on
REQUIRED = object()  # a key's default when it must be given


@dataclass(frozen=True)
class Where:
    """A key's place: the scenario file, the key's path in it, and the folder relative paths start from."""

    file: str
    path: str = ""
    folder: Path = Path(".")

    def key(self, name: str) -> "Where":
        return Where(self.file, f"{self.path}.{name}" if self.path else name, self.folder)

    def index(self, i: int) -> "Where":
        return Where(self.file, f"{self.path}[{i}]", self.folder)

    def refuse(self, value: object, what: str) -> MemsimError:
        """`file: path = value what`, e.g. "... = 'lots' must be a whole number >= 1"."""
        return MemsimError(f"{self.file}: {self.path} = {value!r} {what}")

    def wrap(self, err: MemsimError) -> MemsimError:
        """A library error about this key, prefixed with the file and the key."""
        return MemsimError(f"{self.file}: {self.path}: {err}")


Checker = Callable[[object, Where], object]


@dataclass(frozen=True)
class Field:
    check: Checker
    default: object = REQUIRED


def whole(least: int = 1, example: int = 1) -> Checker:
    def check(value, where):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise where.refuse(value, f"must be a whole number >= {least}, e.g. {example}")
        return value
    return check


def number(least: float = 0.0, below: float | None = None, example: float = 0.1) -> Checker:
    """A real number in [least, below)."""
    def check(value, where):
        ok = not isinstance(value, bool) and isinstance(value, (int, float))
        if not ok or value < least or (below is not None and value >= below):
            span = f"in [{least}, {below})" if below is not None else f">= {least}"
            raise where.refuse(value, f"must be a number {span}, e.g. {example}")
        return float(value)
    return check


def flag(value, where) -> bool:
    if not isinstance(value, bool):
        raise where.refuse(value, "must be true or false")
    return value


def text(value, where) -> str:
    if not isinstance(value, str) or not value.strip():
        raise where.refuse(value, "must be a line of text")
    return value.strip()


def one_of(options, what: str) -> Checker:
    """A string from `options` (a sequence, or a mapping whose keys are the options); `what` names one."""
    names = list(options)

    def check(value, where):
        if not isinstance(value, str) or value not in names:
            close = difflib.get_close_matches(str(value), names, n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise where.refuse(value, f"is not a known {what}; {hint}use one of {', '.join(names)}")
        return value
    return check


def named(load: Callable[[str], object], what: str) -> Checker:
    """A preset name or a YAML file (relative to the scenario's folder) that `load` reads, e.g. load_gpu."""
    def check(value, where):
        if not isinstance(value, str) or not value.strip():
            raise where.refuse(value, f"must name a {what} preset or a YAML file")
        if value.endswith((".yaml", ".yml")) and not Path(value).is_absolute():
            value = str(where.folder / value)
        try:
            return load(value)
        except MemsimError as err:
            raise where.wrap(err) from None
    return check


def list_of(item: Checker, least: int = 1, example: str = "[1024, 4096]") -> Checker:
    def check(value, where):
        if not isinstance(value, list) or len(value) < least:
            raise where.refuse(value, f"must be a list of at least {least} value{'s' if least > 1 else ''}, "
                                      f"e.g. {example}")
        return [item(v, where.index(i)) for i, v in enumerate(value)]
    return check


def png_name(value, where) -> str:
    """A PNG file name, written into the folder `memsim run --plot DIR` names."""
    if not isinstance(value, str) or not value.endswith(".png") or "/" in value or "\\" in value \
            or value.startswith("."):
        raise where.refuse(value, "must be a file name ending in .png, without folders, e.g. roofline.png")
    return value


def mapping(fields: dict[str, Field], refused: dict[str, str] | None = None) -> Checker:
    """A mapping whose keys are `fields`: unknown keys refused (with the close names), required ones
    demanded, each value checked; absent keys take their default (checked too), OMIT ones are left out.
    `refused` names keys that look right but are not taken here, with the reason."""
    refused = refused or {}

    def check(value, where):
        if not isinstance(value, dict):
            raise where.refuse(value, f"must be a mapping with keys {', '.join(fields)}")
        for key in value:
            if key in refused:
                raise MemsimError(f"{where.file}: {where.key(str(key)).path}: not taken here ({refused[key]}); "
                                  f"remove it")
            if key not in fields:
                raise unknown_key(key, fields, where)
        out = {}
        for key, spec in fields.items():
            if key in value:
                out[key] = spec.check(value[key], where.key(key))
            elif spec.default is REQUIRED:
                raise MemsimError(f"{where.file}: {where.key(key).path} is missing; it is required")
            elif spec.default is not OMIT:
                out[key] = spec.check(spec.default, where.key(key))  # a default is checked as if written
        return out
    return check


def unknown_key(key: object, fields, where: Where) -> MemsimError:
    close = difflib.get_close_matches(str(key), list(fields), n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"known keys: {', '.join(fields)}"
    return MemsimError(f"{where.file}: {where.key(str(key)).path}: unknown key {key!r}; {hint}")
