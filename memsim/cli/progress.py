"""A progress bar on stderr for discrete-event simulations, when stderr is a terminal.

Large causal launches take the engine seconds to minutes (every CTA of thousands is simulated); the
bar counts CTAs done and says how to get an answer at once (`--engine analytic`)."""

import sys
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


@contextmanager
def ctas_progress(label: str, enabled: bool = True):
    """Yields a callback `(ctas_done, ctas_total)` for memsim.predict.run, or None when nobody can see a bar."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("CTAs"),
               TimeElapsedColumn(), TextColumn("[dim](--engine analytic answers at once)"))
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update
