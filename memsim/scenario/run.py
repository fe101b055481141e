"""Running a scenario: each step through the library, in order, and its plots where asked."""

from dataclasses import dataclass
from pathlib import Path

from memsim.errors import MemsimError
from memsim.scenario.load import Scenario, Step, load_scenario


@dataclass(frozen=True)
class StepResult:
    step: Step
    output: object  # what the step's kind returns: predictions, a capacity plan, ...

    def as_dict(self) -> dict:
        return {"name": self.step.name, "kind": self.step.kind.name, "title": self.step.title,
                "result": self.step.kind.as_dict(self.output)}


@dataclass(frozen=True)
class ScenarioResult:
    scenario: Scenario
    steps: tuple[StepResult, ...]
    plots: tuple[str, ...] = ()  # PNG files written

    def as_dict(self) -> dict:
        """The JSON object `memsim run --json` prints and scenarios/expected/<name>.json holds."""
        return {"scenario": self.scenario.name, "description": self.scenario.description,
                "steps": [s.as_dict() for s in self.steps]}


def _run_step(step: Step) -> StepResult:
    try:
        return StepResult(step, step.kind.run(step.keys))
    except MemsimError as err:
        raise MemsimError(f"{step.where.file}: {step.where.path} ({step.name}): {err}") from None


def _plot_folder(plot_dir: str | Path) -> Path:
    folder = Path(plot_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MemsimError(f"cannot make the plot folder {folder}: {err.strerror}") from None
    return folder


def _plot(result: StepResult, folder: Path) -> str:
    step = result.step
    try:
        return step.kind.plot(result.output, step.keys, folder / step.plot)
    except MemsimError as err:
        raise MemsimError(f"{step.where.file}: {step.where.key('plot').path} ({step.name}): {err}") from None


def run_scenario(scenario: Scenario | str | Path, plot_dir: str | Path | None = None) -> ScenarioResult:
    """Run every step of `scenario` (a Scenario or the path of its file); with `plot_dir`, write the PNG of
    every step that has `plot:` into that folder."""
    scenario = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    results = tuple(_run_step(step) for step in scenario.steps)
    plots = ()
    if plot_dir is not None:
        folder = _plot_folder(plot_dir)
        plots = tuple(_plot(r, folder) for r in results if r.step.plot)
    return ScenarioResult(scenario, results, plots)
