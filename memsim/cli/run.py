"""`memsim run`: parse, call memsim.scenario.run_scenario, render.

`register(cli)` adds the command to a click group (memsim.cli.main's `cli`)."""

import click

from memsim.errors import MemsimError
from memsim.scenario import STEP_KINDS, check_expected, expected_path, run_scenario, to_json, write_expected
from memsim.scenario.render import print_result

SHOWN_DIFFERENCES = 3  # of a failed --check, on its one line


def _check(result) -> str:
    """'matches ...', or a ClickException (exit 1) naming the first differences."""
    found = check_expected(result)
    path = expected_path(result.scenario.path)
    if not found:
        return f"matches {path}"
    more = f"; and {len(found) - SHOWN_DIFFERENCES} more" if len(found) > SHOWN_DIFFERENCES else ""
    raise click.ClickException(
        f"{result.scenario.path}: {len(found)} difference(s) from {path}: {'; '.join(found[:SHOWN_DIFFERENCES])}"
        f"{more} (if the change is meant, regenerate with --update-expected)")


KINDS_HELP = "\b\nKinds of step (scenarios/README.md):\n" + "\n".join(f"  {k.name}: {k.summary}" for k in STEP_KINDS.values())


@click.command("run", epilog=KINDS_HELP)
@click.argument("scenario", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False),
              help="Write the PNG of every step with a plot: key into this folder.")
@click.option("--update-expected", is_flag=True,
              help="Write the JSON output as the expected output (expected/<name>.json beside the file).")
@click.option("--check", "check", is_flag=True,
              help="Compare with the expected output; exit 1 if a figure moved by more than a relative 1e-9.")
def run_cmd(scenario, as_json, plot_dir, update_expected, check):
    """Run a scenario file (scenarios/*.yaml): its steps through memsim, as tables or JSON."""
    if check and update_expected:
        raise MemsimError("give --check or --update-expected, not both: --update-expected overwrites what "
                          "--check compares with")
    result = run_scenario(scenario, plot_dir=plot_dir)
    if as_json:
        click.echo(to_json(result), nl=False)
    else:
        print_result(result)
    notes = [f"plot written to {path}" for path in result.plots]
    if update_expected:
        notes.append(f"expected output written to {write_expected(result)}")
    if check:
        notes.append(_check(result))
    for note in notes:
        click.echo(note, err=as_json)


def register(cli: click.Group) -> None:
    """Add `run` to the memsim command group."""
    cli.add_command(run_cmd)
