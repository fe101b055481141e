"""Reading model specs from YAML: the presets shipped with memsim, or a user's own file.

As for GPU files (memsim.hardware.load): a number is plain (`layers: 80`) or cited
(`layers: {value: 80, source: cfg}`), where `source` is a key of the file's `references`
block or a citation written out. Counts may be written as "70.6e9".
"""

import difflib
from functools import cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType

import yaml

from memsim.errors import MemsimError
from memsim.presets import preset_index, read_yaml
from memsim.models.spec import FLAG_FIELDS, NUMBER_FIELDS, ModelSpec
from memsim.units import parse_quantity

PRESET_DIR = resources.files("memsim.models") / "presets"
DEFAULT_MODEL = "Llama-3-8B"

_REQUIRED = {"name", "layers", "hidden_size", "q_heads", "kv_heads", "head_dim", "vocab_size", "ffn_size",
             "params", "max_context"}
_OPTIONAL = {"active_params", "experts", "experts_per_token", "sliding_window", *FLAG_FIELDS,
             "aliases", "references", "notes"}
_INT_FIELDS = {*NUMBER_FIELDS, "sliding_window"}


def _cited(raw: object, key: str, where: str) -> tuple[object, object]:
    """(value, source) of a plain or {value, source} entry."""
    if not isinstance(raw, dict):
        return raw, None
    if "value" not in raw or set(raw) - {"value", "source"}:
        raise MemsimError(f"{where}: {key} = {raw!r} must be a value or {{value: ..., source: ...}}")
    return raw["value"], raw.get("source")


def _count(value: object, key: str, where: str) -> int:
    number = parse_quantity(value, key, where)
    if number != int(number):
        raise MemsimError(f"{where}: {key} = {value!r} must be a whole number")
    return int(number)


def _flag(value: object, key: str, where: str) -> bool:
    if not isinstance(value, bool):
        raise MemsimError(f"{where}: {key} = {value!r} must be true or false")
    return value


def _check_keys(data: dict, where: str) -> None:
    allowed = _REQUIRED | _OPTIONAL
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; known keys: {', '.join(sorted(allowed))}"
            raise MemsimError(f"{where}: unknown key '{key}'{hint}")
    for key in sorted(_REQUIRED):
        if key not in data:
            raise MemsimError(f"{where}: missing key '{key}'")


def model_from_dict(data: object, where: str) -> ModelSpec:
    """A ModelSpec from a parsed YAML document; `where` names the file in errors."""
    if not isinstance(data, dict):
        raise MemsimError(f"{where}: a model file must be a mapping of keys to values, got {type(data).__name__}")
    _check_keys(data, where)
    references = {str(k): str(v) for k, v in (data.get("references") or {}).items()}
    values, sources = {}, {}
    for key in sorted(set(data) & (_INT_FIELDS | set(FLAG_FIELDS))):
        value, source = _cited(data[key], key, where)
        if value is None and key in ("active_params", "sliding_window"):
            continue
        values[key] = _flag(value, key, where) if key in FLAG_FIELDS else _count(value, key, where)
        if source is not None:
            sources[key] = references.get(str(source), str(source))
    try:
        return ModelSpec(name=str(data["name"]), sources=MappingProxyType(sources), **values)
    except MemsimError as err:
        raise MemsimError(f"{where}: {err}") from None


def load_file(path: Path) -> ModelSpec:
    return model_from_dict(read_yaml(path, "model"), str(path))


def _preset_index() -> dict[str, str]:
    return preset_index(PRESET_DIR)


@cache
def load_preset_file(file_name: str) -> ModelSpec:
    return model_from_dict(yaml.safe_load((PRESET_DIR / file_name).read_text()), f"preset {file_name}")


def model_names() -> list[str]:
    """The presets' canonical names, sorted."""
    return sorted({load_preset_file(f).name for f in set(_preset_index().values())})


def load_model(name_or_path: str | Path = DEFAULT_MODEL) -> ModelSpec:
    """A preset by name or alias (case does not matter), or a user's YAML file by path."""
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or Path(text).is_file():
        return load_file(Path(text))
    file_name = _preset_index().get(text.lower())
    if file_name is None:
        raise MemsimError(f"unknown model {text!r}: {_hint(text)} (or give a path to a YAML file)")
    return load_preset_file(file_name)


def _hint(text: str) -> str:
    names = model_names()
    lower = {n.lower(): n for n in names}
    index = _preset_index()
    close = difflib.get_close_matches(text.lower(), list(index), n=6, cutoff=0.5)
    picked = []
    for alias in close + [a for a in index if text.lower() in a]:
        name = load_preset_file(index[alias]).name
        if name not in picked:
            picked.append(name)
    picked = picked[:4] or [lower[c] for c in difflib.get_close_matches(text.lower(), list(lower), n=4, cutoff=0.3)]
    return f"did you mean {', '.join(picked)}?" if picked else f"presets are {', '.join(names)}"

