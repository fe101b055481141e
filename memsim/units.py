"""Quantities with units, as written in hardware YAML files.

A value may be a plain number (already in the field's base unit) or a string
such as "50 MiB", "3.35 TB/s", "1980 MHz", "989.4 TFLOP/s" or "600 ns". The unit
must measure the same thing as the field's name says (a field ending in
`_bytes_per_s` takes "TB/s", not "MiB"); anything else is refused by name.
"""

import re

from memsim.errors import MemsimError

# dimension -> {unit spelling: factor to the base unit}
_DECIMAL = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
_BINARY = {"Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40}


def _prefixed(symbols: tuple[str, ...], prefixes: dict[str, float]) -> dict[str, float]:
    return {p + s: f for p, f in prefixes.items() for s in symbols}


UNITS: dict[str, dict[str, float]] = {
    "bytes": {**_prefixed(("B",), _DECIMAL), **_prefixed(("B",), _BINARY)},
    "bytes_per_s": {**_prefixed(("B/s",), _DECIMAL), **_prefixed(("B/s",), _BINARY)},
    "flops_per_s": _prefixed(("FLOP/s", "FLOPS", "OP/s", "OPS"), _DECIMAL),
    "ops_per_s": _prefixed(("OP/s", "OPS"), _DECIMAL),
    "hz": _prefixed(("Hz",), _DECIMAL),
    "s": {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9},
}

_EXAMPLES = {
    "bytes": "B, KiB, MiB, GiB, KB, MB, GB",
    "bytes_per_s": "GB/s, TB/s, GiB/s",
    "flops_per_s": "TFLOP/s, PFLOP/s, TOPS",
    "ops_per_s": "GOP/s, TOP/s",
    "hz": "MHz, GHz",
    "s": "s, ms, us, ns",
}

# The ending of a field name says which dimension its value has.
_SUFFIX_DIMENSION = (
    ("_bytes_per_s", "bytes_per_s"),
    ("_flops_per_s", "flops_per_s"),
    ("_ops_per_s", "ops_per_s"),
    ("_per_s", "ops_per_s"),
    ("_bytes", "bytes"),
    ("_hz", "hz"),
    ("_s", "s"),
)

_QUANTITY = re.compile(r"^\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z/]*)\s*$")


def dimension_of(field: str) -> str | None:
    """The dimension a field's name implies, or None for a plain count."""
    for suffix, dimension in _SUFFIX_DIMENSION:
        if field.endswith(suffix):
            return dimension
    return None


def parse_quantity(value: object, field: str, where: str, unit_of: str | None = None) -> float:
    """The value of `field` in its base unit; `where` names the file for errors.

    `unit_of` names the field whose ending gives the unit when `field` itself is a
    nested key (`tensor_flops_per_s.bf16` takes the unit of `tensor_flops_per_s`).
    """
    if isinstance(value, bool):
        raise MemsimError(f"{where}: {field} = {value!r} is not a number")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        number = _parse_string(value, field, where, unit_of or field)
    else:
        raise MemsimError(f"{where}: {field} = {value!r} is not a number or a quantity like '50 MiB'")
    if number < 0:
        raise MemsimError(f"{where}: {field} = {value!r} is negative; it must be >= 0")
    return number


def _parse_string(text: str, field: str, where: str, unit_of: str) -> float:
    match = _QUANTITY.match(text)
    if not match:
        raise MemsimError(f"{where}: {field} = {text!r} is not a quantity like '50 MiB' or '3.35 TB/s'")
    number, unit = float(match.group(1)), match.group(2)
    dimension = dimension_of(unit_of)
    if not unit:
        return number
    if dimension is None:
        raise MemsimError(f"{where}: {field} = {text!r} takes a plain count, without a unit")
    factors = UNITS[dimension]
    if unit not in factors:
        raise MemsimError(
            f"{where}: {field} = {text!r} has unit {unit!r}, which does not measure {dimension}; use one of {_EXAMPLES[dimension]}"
        )
    return number * factors[unit]
