"""Reading a scenario file: YAML with a description and a list of steps, every key checked before any
step runs, so that a mistake in the last step is reported at once.

    description: what the scenario asks
    steps:
      - kind: predict          # one of memsim.scenario.steps.STEP_KINDS
        name: prefill          # unique in the file; names the step in the output
        title: ...             # optional: one line printed above its tables
        plot: roofline.png     # optional, where the kind draws one: written under `memsim run --plot DIR`
        ...                    # the kind's own keys

Anything wrong (malformed YAML, a key written twice, an unknown key, a wrong type, an unknown model, GPU
or algorithm) raises MemsimError in one line naming the file, the key, the value and what would be right.
"""

from dataclasses import dataclass
from pathlib import Path

import yaml

from memsim.errors import MemsimError
from memsim.scenario.schema import OMIT, Field, Where, list_of, mapping, one_of, png_name, text
from memsim.scenario.steps import STEP_KINDS, StepKind


@dataclass(frozen=True)
class Step:
    name: str
    kind: StepKind
    title: str
    keys: dict  # the kind's keys, checked, defaults filled in
    plot: str | None  # PNG file name, or None
    where: Where  # steps[i], for errors raised while it runs


@dataclass(frozen=True)
class Scenario:
    path: Path
    description: str
    steps: tuple[Step, ...]

    @property
    def name(self) -> str:
        """The file's stem: names the expected output, scenarios/expected/<name>.json."""
        return self.path.stem


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key written twice in one mapping (PyYAML keeps the last one silently)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: its keys may be overridden here
            continue
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, str):
            continue
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is written twice in one mapping",
                                                    key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_yaml(path: Path) -> object:
    try:
        source = path.read_text()
    except OSError as err:
        raise MemsimError(f"{path}: cannot read scenario file ({err.strerror}); give the path of a .yaml file, "
                          f"e.g. scenarios/long-document-qa.yaml") from None
    try:
        return yaml.load(source, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise MemsimError(f"{path}: not valid YAML{at}: {getattr(err, 'problem', None) or err}") from None


COMMON_FIELDS = {"kind": Field(one_of(STEP_KINDS, "step kind")), "name": Field(text), "title": Field(text, OMIT)}


def _step(value: object, where: Where) -> Step:
    if not isinstance(value, dict):
        raise where.refuse(value, f"must be a mapping with kind: ({', '.join(STEP_KINDS)}), name: and the kind's keys")
    if "kind" not in value:
        raise MemsimError(f"{where.file}: {where.key('kind').path} is missing; use one of {', '.join(STEP_KINDS)}")
    kind = STEP_KINDS[COMMON_FIELDS["kind"].check(value["kind"], where.key("kind"))]
    fields = {**COMMON_FIELDS, **kind.fields}
    if kind.plot is not None:
        fields["plot"] = Field(png_name, OMIT)
    keys = mapping(fields)(value, where)
    own = {k: v for k, v in keys.items() if k not in ("kind", "name", "title", "plot")}
    return Step(keys["name"], kind, keys.get("title", ""), own, keys.get("plot"), where)


def _check_unique(steps: list[Step]) -> None:
    for label, of in (("name", lambda s: s.name), ("plot", lambda s: s.plot)):
        seen = {}
        for s in steps:
            value = of(s)
            if value is not None and value in seen:
                raise MemsimError(f"{s.where.file}: {s.where.key(label).path} = {value!r} is already used by "
                                  f"{seen[value].where.path}; give each step its own {label}")
            seen[value] = s


def load_scenario(path: str | Path) -> Scenario:
    """Read and check a scenario file; nothing runs yet."""
    path = Path(path)
    data = read_yaml(path)
    where = Where(str(path), "", path.parent)
    if not isinstance(data, dict):
        raise MemsimError(f"{path}: a scenario file must be a mapping with keys description and steps, "
                          f"got {type(data).__name__}")
    top = mapping({"description": Field(text), "steps": Field(list_of(_step, example="[{kind: predict, ...}]"))})
    checked = top(data, where)
    _check_unique(checked["steps"])
    return Scenario(path, checked["description"], tuple(checked["steps"]))
