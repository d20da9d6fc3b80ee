"""`adaptermerge data build` and `adaptermerge train`: thin shells over adaptermerge.training."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..base import DTYPE_CHOICES
from ..chat.data import build_records
from ..chat.records import jsonl_text, write_jsonl
from ..training.presets import ALL_PROJECTIONS
from .options import COUNT, FRACTION, POSITIVE, SEED, THREADS
from .progress import main_process
from .startup import load_api

TASK_CHOICES = ("domain", "structured", "safety", "custom")


def register(group: click.Group) -> None:
    group.add_command(data_group)
    group.add_command(train_cmd)


@click.group("data")
def data_group() -> None:
    """Built-in task data sets."""


@data_group.command("build")
@click.option("--task", required=True, help="domain, structured or safety.")
@click.option("--split", default="train", show_default=True, help="train, eval or dev (dev: for choosing settings; neither trained nor reported on).")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="JSONL file (default: stdout).")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
def data_build(task: str, split: str, seed: int, output: Path | None, force: bool) -> None:
    """Write a built-in data set as JSONL chat records."""
    records = build_records(task, split, seed)
    if output is None:
        click.echo(jsonl_text(records), nl=False)
        return
    write_jsonl(records, output, force=force)
    click.echo(f"{len(records)} {task} {split} records -> {output}", err=True)


@click.command("train")
@click.option("--task", required=True, help="domain, structured, safety or custom (custom needs --data).")
@click.option("--data", type=click.Path(path_type=Path), default=None, help="JSONL chat records (overrides built-in data).")
@click.option("--base", default=None, help="HF id or local folder (default: the embedded SmolLM2-135M-Instruct).")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Adapter folder to write.")
@click.option("--max-steps", type=COUNT, default=None, help="Optimizer steps (preset default).")
@click.option("--epochs", type=POSITIVE, default=None, help="Passes over the data (with --max-steps: whichever ends first).")
@click.option("--lr", type=POSITIVE, default=None, help="Peak learning rate.")
@click.option("--rank", type=COUNT, default=None)
@click.option("--alpha", type=POSITIVE, default=None)
@click.option("--targets", default=None, help="Comma-separated module names (default: all seven projections).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--batch-size", type=COUNT, default=None)
@click.option("--max-length", type=COUNT, default=None, help="Tokens per example; longer ones are cut.")
@click.option("--no-qlora", is_flag=True, help="Plain LoRA on the fp32 base instead of an NF4 base.")
@click.option("--dora", is_flag=True, help="Train a DoRA adapter.")
@click.option("--on-top-of", type=click.Path(path_type=Path), default=None, help="Adapter merged into the base first (sequential training).")
@click.option("--anchor-fraction", type=FRACTION, default=None,
              help="Share of rows that are general prompts answered as the base answers them, so the adapter acts only "
                   "on its task and merges compose (preset default; 0 turns it off).")
@click.option("--anchor-tasks", default=None,
              help="Comma-separated built-in tasks whose training prompts join the anchors, answered as the base "
                   "answers them: the requests the adapter meets next to the others in a merge (preset default; "
                   "'none' turns it off).")
@click.option("--compute-dtype", type=click.Choice(DTYPE_CHOICES), default="auto", show_default=True,
              help="The frozen base's compute dtype (LoRA factors train in float32). auto: bfloat16 where the "
                   "hardware has it natively, else float32.")
@click.option("--threads", type=THREADS, default=None,
              help="torch CPU threads (default: all of this machine's). Recorded in training.json: in bfloat16 "
                   "another count rounds differently, so it is part of what makes a run repeatable.")
@click.option("--force", is_flag=True, help="Overwrite an existing output folder.")
def train_cmd(task, data, base, output, max_steps, epochs, lr, rank, alpha, targets, seed, batch_size, max_length,
              no_qlora, dora, on_top_of, anchor_fraction, anchor_tasks, compute_dtype, threads, force) -> None:
    """Train a (Q)LoRA or DoRA adapter for a task preset or your own data."""
    api = load_api()
    names = tuple(t.strip() for t in targets.split(",") if t.strip()) if targets else ALL_PROJECTIONS
    if anchor_tasks is not None:
        anchor_tasks = () if anchor_tasks.strip().lower() == "none" else tuple(t.strip() for t in anchor_tasks.split(",") if t.strip())
    config = api.TrainConfig(
        task=task, output=output, data=data, base=base, max_steps=max_steps, epochs=epochs, lr=lr, rank=rank,
        alpha=alpha, targets=names, seed=seed, batch_size=batch_size, max_length=max_length, qlora=not no_qlora,
        dora=dora, on_top_of=on_top_of, anchor_fraction=anchor_fraction, anchor_tasks=anchor_tasks,
        compute_dtype=compute_dtype, threads=threads, force=force,
    ).resolved()  # every check, before the progress bar appears
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    with Progress(*columns, console=Console(stderr=True), transient=False, disable=not main_process()) as bar:
        job = bar.add_task(f"train {task}", total=None, loss="-")

        def progress(step: int, total: int, loss: float) -> None:
            bar.update(job, completed=step, total=total, loss=f"{loss:.3f}")

        path = api.train(config, progress=progress)
    if main_process():  # under a launcher, the first process reports
        click.echo(str(path))
