"""A scenario's results as rich tables: its description, then each step's title and tables."""

from rich.console import Console
from rich.rule import Rule
from rich.text import Text

from memsim.scenario.run import ScenarioResult


def print_result(result: ScenarioResult, console: Console | None = None) -> None:
    out = console or Console()
    out.print(f"{result.scenario.name}: {result.scenario.description}", highlight=False, markup=False)
    for r in result.steps:
        heading = f"{r.step.name} ({r.step.kind.name})" + (f": {r.step.title}" if r.step.title else "")
        out.print(Rule(Text(heading), align="left", style="dim"))
        for item in r.step.kind.tables(r.output):
            out.print(item, highlight=False, markup=False, soft_wrap=isinstance(item, str))
