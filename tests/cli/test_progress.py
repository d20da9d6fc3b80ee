"""The console the CLI prints tables and progress to."""

from __future__ import annotations

import io


def test_tables_do_not_fold_in_a_log_file(monkeypatch):
    from rich.console import Console
    from rich.table import Table

    from adaptermerge.cli import progress

    monkeypatch.delenv("COLUMNS", raising=False)
    log = io.StringIO()  # not a terminal
    assert progress._width(log) == progress.LOG_WIDTH
    table = Table("approach", *[f"metric {i}" for i in range(8)])
    table.add_row("sweep_task_arithmetic_w0.595-1.2-1", *["0.650/0.600/0.760"] * 2, *["0.500"] * 6)
    out = io.StringIO()
    Console(file=out, width=progress._width(log)).print(table)
    assert any("sweep_task_arithmetic_w0.595-1.2-1" in line for line in out.getvalue().splitlines())
    monkeypatch.setenv("COLUMNS", "100")
    assert progress._width(log) is None  # the user's choice stands
