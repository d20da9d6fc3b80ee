"""`adaptermerge run RECIPE.yaml`: train or take the recipe's adapters, merge them every way it
lists, evaluate every candidate with its gates, choose, and write the winner and the report.

Exit status: 0 the chosen merge passes every gate (with --seeds, at every seed) and was written, 1
it misses a gate (or no merge was usable), 2 bad input (the recipe's errors name its file and key).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .eval_cmds import dtype_option
from .options import THREADS, seeds as parse_seeds
from .progress import console, results
from .startup import load_api, require_eval_extra

if TYPE_CHECKING:
    from ..recipe import RecipeResult


def register(group: click.Group) -> None:
    group.add_command(run_cmd)


def run_options(output_default: Path | None = None):
    """The options of a run that do not change what the recipe compares (shared with `demo`)."""
    output = (click.option("-o", "--output", type=click.Path(path_type=Path), default=output_default, show_default=True,
                           help="Output folder (report, merges, winner).") if output_default is not None else
              click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Output folder (report, merges, winner)."))
    return lambda command: _with(command, [
        output,
        click.option("--quick", is_flag=True, help="The recipe's quick settings: fewer training steps (or cached full adapters), evaluation subsets, fewer MMLU questions."),
        click.option("--mmlu-data", default=None, help="Local cais/mmlu CSV folder (default: $ADAPTERMERGE_MMLU_DATA, else the hub)."),
        click.option("--mergekit", default=None, help="mergekit-yaml executable (default: $ADAPTERMERGE_MERGEKIT, else on PATH; else that row is skipped)."),
        click.option("--threads", type=THREADS, default=None, help="torch CPU threads of each evaluation process (default: the machine's, shared between two)."),
        dtype_option,
        click.option("--force", is_flag=True, help="Replace an existing output folder."),
    ])


def _with(command, options):
    for option in reversed(options):
        command = option(command)
    return command


SEEDS_HELP = ("Train (or take) the adapters at each of these seeds, e.g. 0,1,2, and choose the merge whose worst seed "
              "ranks best on the dev split (the recipe's `seeds:`; replaces its seed). About that many times a one-seed run's compute.")


@click.command("run")
@click.argument("recipe_path", metavar="RECIPE.yaml", type=click.Path(path_type=Path))
@run_options()
@click.option("--seeds", "seeds", default=None, help=SEEDS_HELP)
def run_cmd(recipe_path, output, quick, mmlu_data, mergekit, threads, dtype, force, seeds) -> int:
    """Run a recipe: train or take its adapters, merge them with every candidate it lists (and the
    PEFT, mergekit and sequential-training baselines it asks for), evaluate all of them against its
    gates, choose the winner (on the dev split when none passes), and write report.md, report.json,
    chart.png and the winner (PEFT adapter, and a re-quantized model when asked).

    \b
      adaptermerge run examples/manga-assist.yaml -o demo/
      adaptermerge run my-recipe.yaml -o out/ --quick
    """
    load_api()  # torch, transformers: loaded when a command runs (start-up time)
    from ..recipe import load_recipe

    recipe = load_recipe(recipe_path)
    if seeds is not None:
        recipe = recipe.at_seeds(parse_seeds(seeds), "--seeds")
    if dtype != "auto":
        recipe = recipe.with_overrides(eval={"dtype": dtype})
    result = execute(recipe, output=output, quick=quick, mmlu_data=mmlu_data, mergekit=mergekit, threads=threads, force=force)
    return 0 if result.passed else 1


def execute(recipe, **kwargs) -> RecipeResult:
    """Run `recipe` under progress bars, then print the table and the verdict."""
    # (datasets' and lm-eval's own tqdm bars are off: main() sets TQDM_DISABLE before tqdm is imported)
    require_eval_extra("run")
    api = load_api()
    with Progress(TextColumn("[bold]{task.description:<7}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[label]}", style="dim"), console=console) as bar:
        tasks = {}

        def progress(stage: str, done: int, total: int, label: str = "") -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=None, label="")
            bar.update(tasks[stage], completed=done, total=total or None, label=label[-60:])

        result = api.run_recipe(recipe, progress=progress, **kwargs)
    show(result)
    return result


def _table(data: dict) -> Table:
    from ..recipe.report import table_rows  # with the api: start-up time

    rows = table_rows(data)
    winner = data["winner"]["name"] if data["winner"] else None
    table = Table(title=f"{data['recipe']} (winner: {winner or 'none'})")
    for i, head in enumerate(rows[0]):
        table.add_column(head.replace(" (", "\n(", 1), justify="left" if i in (0, len(rows[0]) - 1) else "right",
                         overflow="fold", no_wrap=i == 0)
    for r in rows[1:]:
        style = "bold green" if r[0] == winner else ("dim" if r[-1].startswith(("error", "skipped")) else None)
        table.add_row(*r, style=style)
    return table


def _seed_table(data: dict) -> Table | None:
    from ..recipe.report import seed_rows

    rows = seed_rows(data)
    if rows is None:
        return None
    table = Table(title=f"{data['seeds']['chosen']} at each seed, eval split (chosen by its worst seed on the {data['seeds']['split']} split)")
    for i, head in enumerate(rows[0]):
        table.add_column(head, justify="left" if i in (0, len(rows[0]) - 1) else "right")
    for r in rows[1:]:
        table.add_row(*r, style="bold" if r[0] == "min over seeds" else None)
    return table


def show(result: RecipeResult) -> None:
    results.print(_table(result.report))
    seeds = _seed_table(result.report)
    if seeds is not None:
        results.print(seeds)
    click.echo(f"wrote {result.output}/report.md, report.json" + (f", winner/ ({result.winner.name})" if result.winner else ""))
    if not result.best_rows:
        click.echo("no merge produced a usable result")
        return
    for best in result.best_rows:  # one, or the chosen merge at each seed
        click.echo(f"best merge: {best.name}, {verdict(best.gates)}" + ("" if result.winner else "; writing it failed (see report.md, Notes)"))
        for g in best.gates:
            if not g.passed:
                click.echo(f"  missed {g.rule}: {g.detail}")


def verdict(gates) -> str:
    """Which gates the best merge passes: the targets against the base (retention, max_drop) apart
    from the tasks' own minimums, which a reader weighs differently."""
    targets = [g for g in gates if g.kind in ("retention", "max_drop")]
    minimums = [g for g in gates if g.kind == "min"]
    if all(g.passed for g in gates):
        return "passes every gate"
    parts = [f"retention and reference targets {'met' if all(g.passed for g in targets) else 'missed'}",
             f"task minimums {'met' if all(g.passed for g in minimums) else 'missed'}"]
    return ", ".join(parts) + " (see the gates column)"
