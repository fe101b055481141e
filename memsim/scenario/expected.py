"""Expected outputs: scenarios/expected/<name>.json holds what `memsim run <name>.yaml --json` printed when
it was last written (`--update-expected`). A run matches when every number is within a relative 1e-9 of
the expected one and everything else is equal, so a change to the model that moves a figure shows."""

import json
import math
from pathlib import Path

from memsim.errors import MemsimError
from memsim.scenario.run import ScenarioResult

REL_TOLERANCE = 1e-9


def to_json(result: ScenarioResult) -> str:
    return json.dumps(result.as_dict(), indent=2) + "\n"


def expected_path(scenario_path: str | Path) -> Path:
    """scenarios/<name>.yaml -> scenarios/expected/<name>.json"""
    path = Path(scenario_path)
    return path.parent / "expected" / f"{path.stem}.json"


def write_expected(result: ScenarioResult) -> Path:
    path = expected_path(result.scenario.path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(to_json(result))
    except OSError as err:
        raise MemsimError(f"cannot write expected output {path}: {err.strerror}") from None
    return path


def read_expected(scenario_path: str | Path) -> object:
    path = expected_path(scenario_path)
    try:
        return json.loads(path.read_text())
    except OSError:
        raise MemsimError(f"{path}: no expected output for {scenario_path}; write it with "
                          f"memsim run {scenario_path} --update-expected") from None
    except json.JSONDecodeError as err:
        raise MemsimError(f"{path}: not valid JSON at line {err.lineno}: {err.msg}; regenerate it with "
                          f"memsim run {scenario_path} --update-expected") from None


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _same_number(expected: float, actual: float, rel: float) -> bool:
    both_nan = isinstance(expected, float) and isinstance(actual, float) and math.isnan(expected) and math.isnan(actual)
    return both_nan or math.isclose(expected, actual, rel_tol=rel, abs_tol=0.0)


def differences(expected: object, actual: object, rel: float = REL_TOLERANCE, path: str = "") -> list[str]:
    """Every place where `actual` (parsed JSON) differs from `expected`: 'path: expected X, got Y'."""
    here = path or "(top)"
    if isinstance(expected, bool) or isinstance(actual, bool):  # True == 1 in Python; not in the output
        return [] if expected is actual else [f"{here}: expected {expected!r}, got {actual!r}"]
    if _is_number(expected) and _is_number(actual):
        return [] if _same_number(expected, actual, rel) else [f"{here}: expected {expected!r}, got {actual!r}"]
    if isinstance(expected, dict) and isinstance(actual, dict):
        found = [f"{path}.{k}: expected {expected[k]!r}, missing" for k in expected if k not in actual]
        found += [f"{path}.{k}: not expected, got {actual[k]!r}" for k in actual if k not in expected]
        for k in expected.keys() & actual.keys():
            found += differences(expected[k], actual[k], rel, f"{path}.{k}" if path else k)
        return found
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{here}: expected {len(expected)} items, got {len(actual)}"]
        return [d for i, (e, a) in enumerate(zip(expected, actual)) for d in differences(e, a, rel, f"{path}[{i}]")]
    return [] if expected == actual else [f"{here}: expected {expected!r}, got {actual!r}"]


def check_expected(result: ScenarioResult) -> list[str]:
    """Differences between `result` and its scenario's expected output (empty: it matches)."""
    return differences(read_expected(result.scenario.path), json.loads(to_json(result)))
