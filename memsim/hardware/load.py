"""Reading GPU specs from YAML: the presets shipped with memsim, or a user's own file.

A number in the file is either plain (`sm_count: 132`) or cited
(`sm_count: {value: 132, source: wp}`), where `source` is a key of the file's
`references` block or a citation written out. Quantities may carry units
("50 MiB", "3.35 TB/s"); the unit must fit the field's name.
"""

import dataclasses
import difflib
from functools import cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType

import yaml

from memsim.errors import MemsimError
from memsim.presets import preset_index, read_yaml
from memsim.hardware.spec import Calibration, GPUSpec, LinkSpec
from memsim.units import parse_quantity

PRESET_DIR = resources.files("memsim.hardware") / "presets"
DEFAULT_GPU = "H100-SXM5-80GB"

_TEXT_FIELDS = {"name", "vendor", "architecture"}
_NESTED_FIELDS = {"tensor_flops_per_s", "mma_sync_flops_per_s", "links", "calibration", "sources"}
_OPTIONAL_FIELDS = {"links", "calibration", "sources", "aliases", "references", "notes", "mma_sync_flops_per_s"}
_INT_FIELDS = {f.name for f in dataclasses.fields(GPUSpec) if f.type is int or f.type == "int"}
_NUMBER_FIELDS = {f.name for f in dataclasses.fields(GPUSpec)} - _TEXT_FIELDS - _NESTED_FIELDS
TENSOR_DTYPES = ("fp64", "tf32", "fp16", "bf16", "fp8", "int8", "fp4")


class _Reader:
    """Turns one YAML mapping into checked numbers, collecting each number's citation."""

    def __init__(self, where: str, references: dict[str, str]):
        self.where = where
        self.references = references
        self.sources: dict[str, str] = {}

    def number(self, raw: object, key: str, integer: bool = False, unit_of: str | None = None) -> float | int:
        value, source = raw, None
        if isinstance(raw, dict):
            unknown = set(raw) - {"value", "source"}
            if "value" not in raw or unknown:
                raise MemsimError(f"{self.where}: {key} = {raw!r} must be a number or {{value: ..., source: ...}}")
            value, source = raw["value"], raw.get("source")
        number = parse_quantity(value, key, self.where, unit_of)
        if source is not None:
            self.sources[key] = self.references.get(str(source), str(source))
        if integer:
            if number != int(number):
                raise MemsimError(f"{self.where}: {key} = {value!r} must be a whole number")
            return int(number)
        return number

    def mapping(self, raw: object, key: str) -> dict:
        if not isinstance(raw, dict):
            raise MemsimError(f"{self.where}: {key} must be a mapping of names to values, got {raw!r}")
        return raw


def _check_keys(data: dict, allowed: set[str], required: set[str], where: str, prefix: str = "") -> None:
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; known keys: {', '.join(sorted(allowed))}"
            raise MemsimError(f"{where}: unknown key '{prefix}{key}'{hint}")
    for key in sorted(required):
        if key not in data:
            raise MemsimError(f"{where}: missing key '{prefix}{key}'")


def _tensor_rates(reader: _Reader, raw: object, key: str) -> MappingProxyType:
    rates = reader.mapping(raw, key)
    _check_keys(rates, set(TENSOR_DTYPES), set(), reader.where, prefix=f"{key}.")
    return MappingProxyType({d: reader.number(v, f"{key}.{d}", unit_of=key) for d, v in rates.items()})


def _links(reader: _Reader, raw: object) -> MappingProxyType:
    links = {}
    for name, body in reader.mapping(raw, "links").items():
        body = reader.mapping(body, f"links.{name}")
        _check_keys(body, {"bandwidth_bytes_per_s", "latency_s"}, {"bandwidth_bytes_per_s", "latency_s"},
                    reader.where, prefix=f"links.{name}.")
        links[name] = LinkSpec(
            name=str(name),
            bandwidth_bytes_per_s=reader.number(body["bandwidth_bytes_per_s"], f"links.{name}.bandwidth_bytes_per_s",
                                                unit_of="bandwidth_bytes_per_s"),
            latency_s=reader.number(body["latency_s"], f"links.{name}.latency_s", unit_of="latency_s"),
        )
    return MappingProxyType(links)


def _calibration(reader: _Reader, raw: object) -> Calibration:
    body = reader.mapping(raw, "calibration")
    numeric = {"hbm_bandwidth_bytes_per_s", "l2_bandwidth_bytes_per_s", "hbm_latency_s", "l2_hit_latency_s",
               "cuda_core_fp32_flops_per_s", "sfu_ops_per_s", "launch_overhead_s", "l2_dirty_resident_bytes",
               "l2_dirty_lifetime_bytes", "l2_shared_tile_age_weight", "l2_ways", "dependent_step_latency_s",
               "warp_cycles_per_instruction", "ordered_atomic_latency_s"}
    _check_keys(body, numeric | {"device", "date", "tensor_flops_per_s"}, {"device", "date"},
                reader.where, prefix="calibration.")
    sub = _Reader(reader.where, reader.references)
    values = {k: sub.number(body[k], f"calibration.{k}", unit_of=k) for k in numeric if k in body}
    ways = values.get("l2_ways")
    if ways is not None and (ways < 1 or ways != int(ways)):
        raise MemsimError(f"{reader.where}: calibration.l2_ways = {ways:g} must be a whole number of ways, 1 or more")
    tensor = _tensor_rates(sub, body.get("tensor_flops_per_s", {}), "calibration.tensor_flops_per_s")
    reader.sources.update(sub.sources)
    return Calibration(device=str(body["device"]), date=str(body["date"]), tensor_flops_per_s=tensor,
                       sources=MappingProxyType(dict(sub.sources)), **values)


def spec_from_dict(data: object, where: str) -> GPUSpec:
    """A GPUSpec from a parsed YAML document; `where` names the file in errors."""
    if not isinstance(data, dict):
        raise MemsimError(f"{where}: a GPU file must be a mapping of keys to values, got {type(data).__name__}")
    required = _TEXT_FIELDS | _NUMBER_FIELDS | {"tensor_flops_per_s"}
    _check_keys(data, required | _OPTIONAL_FIELDS, required, where)
    references = {str(k): str(v) for k, v in (data.get("references") or {}).items()}
    reader = _Reader(where, references)
    numbers = {k: reader.number(data[k], k, integer=k in _INT_FIELDS) for k in sorted(_NUMBER_FIELDS)}
    tensor = _tensor_rates(reader, data["tensor_flops_per_s"], "tensor_flops_per_s")
    mma_sync = None
    if data.get("mma_sync_flops_per_s") is not None:
        mma_sync = _tensor_rates(reader, data["mma_sync_flops_per_s"], "mma_sync_flops_per_s")
    links = _links(reader, data.get("links") or {})
    calibration = _calibration(reader, data["calibration"]) if data.get("calibration") else None
    spec = GPUSpec(
        name=str(data["name"]), vendor=str(data["vendor"]), architecture=str(data["architecture"]),
        tensor_flops_per_s=tensor, mma_sync_flops_per_s=mma_sync, links=links, calibration=calibration,
        sources=MappingProxyType(dict(reader.sources)), **numbers,
    )
    _check_consistent(spec, where)
    return spec


def _check_consistent(spec: GPUSpec, where: str) -> None:
    for dtype, rate in (spec.mma_sync_flops_per_s or {}).items():
        if rate > spec.tensor_flops_per_s.get(dtype, 0.0):
            raise MemsimError(f"{where}: mma_sync_flops_per_s.{dtype} = {rate:.4g} must not exceed "
                              f"tensor_flops_per_s.{dtype} = {spec.tensor_flops_per_s.get(dtype, 0.0):.4g} "
                              f"(the fastest matrix instruction's rate)")
    if spec.smem_per_block_optin_bytes > spec.smem_per_sm_bytes:
        raise MemsimError(
            f"{where}: smem_per_block_optin_bytes = {spec.smem_per_block_optin_bytes} exceeds "
            f"smem_per_sm_bytes = {spec.smem_per_sm_bytes}; a block cannot have more than its SM")
    for key in ("sm_count", "clock_hz", "warp_size", "max_warps_per_sm", "max_ctas_per_sm",
                "hbm_bandwidth_bytes_per_s", "l2_bandwidth_bytes_per_s", "l2_bytes"):
        if getattr(spec, key) <= 0:
            raise MemsimError(f"{where}: {key} = {getattr(spec, key)} must be > 0")


def load_file(path: Path) -> GPUSpec:
    return spec_from_dict(read_yaml(path, "GPU"), str(path))


def _preset_index() -> dict[str, str]:
    return preset_index(PRESET_DIR)


def preset_names() -> list[str]:
    """The presets' canonical names, sorted."""
    return sorted({load_preset_file(f).name for f in set(_preset_index().values())})


@cache
def load_preset_file(file_name: str) -> GPUSpec:
    entry = PRESET_DIR / file_name
    return spec_from_dict(yaml.safe_load(entry.read_text()), f"preset {file_name}")


def load_gpu(name_or_path: str | Path = DEFAULT_GPU) -> GPUSpec:
    """A preset by name or alias (case does not matter), or a user's YAML file by path."""
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or Path(text).is_file():
        return load_file(Path(text))
    file_name = _preset_index().get(text.lower())
    if file_name is None:
        names = preset_names()
        lower = {n.lower(): n for n in names}
        close = [lower[c] for c in difflib.get_close_matches(text.lower(), list(lower), n=4, cutoff=0.4)]
        close += [n for n in names if text.lower() in n.lower() and n not in close]
        hint = f"did you mean {', '.join(close)}?" if close else f"presets are {', '.join(names)}"
        raise MemsimError(f"unknown GPU {text!r}: {hint} (or give a path to a YAML file)")
    return load_preset_file(file_name)
