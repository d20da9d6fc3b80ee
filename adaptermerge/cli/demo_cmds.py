"""`adaptermerge demo`: train three task adapters, merge them every way, evaluate, show the table.

Exit status: 0 the demo ran (whether or not a merge met every target: that is its result, shown in
the table, not an error), 2 bad input.
"""

from __future__ import annotations

from pathlib import Path

import click

from .eval_cmds import dtype_option

STAGES = ("base", "train", "merge", "eval", "sweep", "winner")


def register(group: click.Group) -> None:
    group.add_command(demo_cmd)


def _table(data: dict):
    from rich.table import Table

    from ..demo.report import table_rows

    rows = table_rows(data)
    winner = data["winner"]["name"] if data["winner"] else None
    table = Table(title=f"adaptermerge demo (winner: {winner or 'none'})")
    heads = ["approach", "domain", "structured", "safety", "MMLU", "retention\nd/s/s", "MMLU Δ", "gates"]
    for i, head in enumerate(heads):
        table.add_column(head, justify="left" if i in (0, len(heads) - 1) else "right", overflow="fold",
                         no_wrap=i == 0)
    for r in rows[1:]:
        style = "bold green" if r[0] == winner else ("dim" if r[-1].startswith(("error", "skipped")) else None)
        table.add_row(*r, style=style)
    return table


def _parse_steps(text: str | None) -> dict[str, int] | None:
    from ..errors import AdapterMergeError
    from ..train.data import TASKS

    if not text:
        return None
    out = {}
    for part in text.split(","):
        task, _, n = part.partition("=")
        if not n.strip().isdigit():
            raise AdapterMergeError(f"--train-steps {text!r}: expected task=steps,... e.g. domain=30,structured=12")
        if task.strip() not in TASKS:
            raise AdapterMergeError(f"--train-steps: unknown task {task.strip()!r}: expected {', '.join(TASKS)}")
        out[task.strip()] = int(n)
    return out


@click.command("demo")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("demo"), show_default=True, help="Demo folder.")
@click.option("--quick", is_flag=True, help="A short version: fewer training steps (or cached full adapters), eval subsets, 1 MMLU question per subject, no weight search.")
@click.option("--base", default=None, help="Base model: HF id or folder (default: the embedded SmolLM2-135M-Instruct).")
@click.option("--mmlu-data", default=None, help="Local cais/mmlu CSV folder (default: $ADAPTERMERGE_MMLU_DATA, else ../shared/data/mmlu).")
@click.option("--mmlu-limit", type=int, default=None, help="MMLU questions per subject (default 3; --quick 1).")
@click.option("--train-steps", default=None, help="Override training steps per task, e.g. domain=30,structured=12.")
@click.option("--methods", default=None, help="Comma-separated registered methods to run (default: all).")
@click.option("--no-baselines", is_flag=True, help="Skip the PEFT, mergekit and sequential-training rows.")
@click.option("--no-sweep", is_flag=True, help="Do not run the sweep (a few more settings, chosen on the dev split) when the defaults miss the targets.")
@click.option("--weight-search/--no-weight-search", default=False,
              help="Run the proxy weight search of task-arithmetic weights before the sweep (default: off; regmean does better).")
@click.option("--mergekit", default=None, help="mergekit-yaml executable (default: $ADAPTERMERGE_MERGEKIT, else on PATH; else that row is skipped).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of training (initialization, data order), random merges (DARE), calibration and MMLU samples; the built-in task data is fixed.")
@click.option("--threads", type=int, default=None,
              help="torch CPU threads of each evaluation process (default: the machine's, shared between two).")
@dtype_option
@click.option("--force", is_flag=True, help="Replace an existing demo folder.")
def demo_cmd(output, quick, base, mmlu_data, mmlu_limit, train_steps, methods, no_baselines, no_sweep, weight_search, mergekit, seed, threads, dtype,
             force) -> int:
    """Train the domain, structured and safety adapters, merge them with every method and with
    PEFT / mergekit / sequential training for comparison, evaluate all of them against the gates,
    and write report.md, report.json and the winning merge (PEFT adapter and NF4 model).

    \b
      adaptermerge demo -o demo/
      adaptermerge demo --quick -o demo-quick/
    """
    import os

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..demo import DemoConfig, run_demo
    from .progress import console, results

    config = DemoConfig(output=output, base=base, quick=quick, force=force, mmlu_data=mmlu_data, mmlu_limit=mmlu_limit,
                        train_steps=_parse_steps(train_steps), seed=seed, threads=threads, sweep=not no_sweep,
                        weight_search=weight_search, mergekit=mergekit, eval_dtype=dtype, methods=methods.split(",") if methods else None, baselines=not no_baselines)
    # As in `eval`: datasets and lm-eval draw tqdm bars of their own between the rich bars below.
    os.environ.setdefault("TQDM_DISABLE", "1")
    with Progress(TextColumn("[bold]{task.description:<7}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[label]}", style="dim"), console=console) as bar:
        tasks = {}

        def progress(stage: str, done: int, total: int, label: str = "") -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=None, label="")
            bar.update(tasks[stage], completed=done, total=total or None, label=label[-60:])

        result = run_demo(config, progress)
    results.print(_table(result.report))
    click.echo(f"wrote {result.output}/report.md, report.json" + (f", winner/ ({result.winner})" if result.winner else ""))
    best = next((r for r in result.rows if r["name"] == result.best), None)
    if best is None:
        click.echo("no merge produced a usable result")
    else:
        click.echo(f"best merge: {best['name']}, {_verdict(best.get('gates') or [])}"
                   + ("" if result.winner else "; writing it failed (see report.md, Notes)"))
        for g in best.get("gates") or []:
            if not g["passed"]:
                click.echo(f"  missed {g['rule']}: {g['detail']}")
    return 0


def _verdict(gates: list[dict]) -> str:
    """Which of the demo's gates the best merge passes: issue 6's targets (retention and MMLU
    against the base) apart from the presets' own minimums, which a reader weighs differently."""
    targets = [g for g in gates if g["kind"] in ("retention", "max_drop")]
    minimums = [g for g in gates if g["kind"] == "min"]
    if all(g["passed"] for g in gates):
        return "passes every gate"
    parts = [f"retention and MMLU targets {'met' if all(g['passed'] for g in targets) else 'missed'}",
             f"preset minimums {'met' if all(g['passed'] for g in minimums) else 'missed'}"]
    return ", ".join(parts) + " (see the gates column)"
