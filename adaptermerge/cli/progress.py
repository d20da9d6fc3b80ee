"""rich progress bars for library callbacks `(done, total, label)`."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..evalsuite.spread import world

LOG_WIDTH = 160


def _width(stream) -> int | None:
    """Off a terminal (a CI log, `> file`) rich assumes 80 columns, which folds the results tables
    (nine columns) into unreadable stacks of cell fragments; a log file can be wide. On a terminal,
    or with $COLUMNS set, rich's own choice stands."""
    return None if stream.isatty() or "COLUMNS" in os.environ else LOG_WIDTH


def main_process() -> bool:
    """Under `accelerate launch` or torchrun every process runs the command; the first one
    reports, the others work quietly."""
    return world().rank == 0


console = Console(stderr=True, width=_width(sys.stderr))  # progress, warnings: beside the results
results = Console(width=_width(sys.stdout))  # tables and verdicts on stdout, so `> file` keeps them


@contextmanager
def progress_bar(description: str):
    """Yield a callback(done, total, label) that drives one progress bar. The bar is drawn at the
    first call, so work that fails before reporting any progress (an input refused while loading)
    prints its error alone, not under an empty bar."""
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[label]}", style="dim"),
        console=console,
        transient=False,
        disable=not main_process(),
    )
    task = None

    def update(done: int, total: int, label: str = "") -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task(description, total=None, label="")
        bar.update(task, completed=done, total=total, label=label[-48:])

    try:
        yield update
    finally:
        if task is not None:
            bar.stop()
