"""`adaptermerge eval`: evaluate candidates against the base, check gates, write the report.

Exit status: 0 every gate passes, 1 a gate fails or an evaluation errors, 2 bad input.
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from ..base import DTYPE_CHOICES
from ..evalsuite.harness import TASKS_DIR
from ..fileio import check_destination
from .options import COUNT, SEED, THREADS
from .progress import console, main_process, progress_bar, results
from .startup import load_api, require_eval_extra

# Shared with `adaptermerge demo`, which evaluates the same way.
dtype_option = click.option(
    "--dtype", type=click.Choice(DTYPE_CHOICES), default="auto", show_default=True,
    help="Evaluation compute dtype. auto: bfloat16 where the hardware has native bf16 (about 2x faster on such CPUs; "
         "scores shift slightly), else float32.")

STYLE = {"pass": "green", "fail": "bold red", "error": "bold yellow", None: ""}


def register(group: click.Group) -> None:
    group.add_command(eval_cmd)


def _table(report):
    from ..evalsuite.report import headline, summary_rows  # imported when a report is shown: start-up time

    has_mmlu = "mmlu" in report.tasks
    table = Table(title=f"adaptermerge eval: {'PASS' if report.passed else 'FAIL'}", title_style="green" if report.passed else "bold red")
    table.add_column("candidate")
    for task in report.tasks:
        table.add_column(f"{task}\n{headline(report, task)}", justify="right")
    table.add_column("retention", justify="right")
    if has_mmlu:
        table.add_column("MMLU Δ\nvs base", justify="right")
    table.add_column("verdict")
    for row in summary_rows(report):
        cells = [f"[{STYLE[row['cells'][t]['status']]}]{row['cells'][t]['text']}[/]" if row["cells"][t]["status"] else row["cells"][t]["text"]
                 for t in report.tasks]
        ret = row["retention"]
        cells.append(f"[{STYLE[ret['status']]}]{ret['text']}[/]" if ret["status"] else ret["text"])
        if has_mmlu:
            cells.append(row["mmlu_delta"])
        verdict = row["verdict"]
        cells.append(f"[{STYLE.get(verdict, 'dim')}]{verdict}[/]" if verdict in STYLE else f"[dim]{verdict}[/]")
        table.add_row(row["name"], *cells)
    return table


@click.command("eval")
@click.argument("candidates", nargs=-1)
@click.option("--gates", "gates_path", type=click.Path(path_type=Path), default=None, help="Gates YAML (tasks, thresholds, retention).")
@click.option("--tasks", default=None, help="Comma-separated tasks (default: the gates file's, else domain,structured,safety,mmlu).")
@click.option("--base", default=None, help="Base model: HF id or folder (default: the adapters' base, else the embedded one).")
@click.option("--mmlu-data", default=None, help="Local cais/mmlu CSV folder (default: $ADAPTERMERGE_MMLU_DATA, else the hub).")
@click.option("--mmlu-limit", type=COUNT, default=None, help="Questions per MMLU subject (stratified, fixed seed).")
@click.option("--mmlu-shots", type=click.IntRange(0, 5), default=0, show_default=True, help="Few-shot examples from the dev split (0-5).")
@click.option("--mmlu-split", type=click.Choice(["test", "dev"]), default="test", show_default=True,
              help="Where MMLU's questions come from: dev (5 per subject, no shots) to choose settings on questions a test score never uses.")
@click.option("--mmlu-format", type=click.Choice(["auto", "cloze", "letter"]), default="auto", show_default=True,
              help="auto: cloze below 1B parameters (letter format is at chance there), letter above.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the MMLU sample (the built-in tasks' data is the one training uses).")
@click.option("--data-seed", type=SEED, default=None,
              help="Seed the built-in tasks' data is generated with (default: the one training uses); an adapter trained on another seed's data is evaluated on that seed's.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Generation batch size.")
@click.option("--threads", type=THREADS, default=None,
              help="torch CPU threads of each evaluation process (default: the machine's, shared between the two "
                   "processes a multi-core CPU runs). Part of the results cache key: bfloat16 scores depend on it.")
@click.option("--workers", type=click.IntRange(1, 2), default=None,
              help="Evaluation processes: 2 lets a helper process take models from a shared queue (default on a multi-core CPU; "
                   "needs the results cache), 1 evaluates in this process only.")
@dtype_option
@click.option("--no-cache", is_flag=True, help="Evaluate again even when cached results exist.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="Report folder (report.json, report.md, chart.png).")
@click.option("--force", is_flag=True, help="Overwrite an existing report folder.")
@click.option("--print-include-path", is_flag=True, help="Print the folder of the lm-eval task YAML files and exit.")
def eval_cmd(candidates, gates_path, tasks, base, mmlu_data, mmlu_limit, mmlu_shots, mmlu_split, mmlu_format, seed, data_seed, batch_size, threads,
             workers, dtype, no_cache, output, force, print_include_path) -> int:
    """Evaluate CANDIDATES (adapter folders, merged model folders; the base is always the reference)
    on the built-in tasks, user tasks and MMLU, and check the gates.

    \b
      adaptermerge eval merged/ adapters/domain --gates gates.yaml -o report/
      adaptermerge eval merged/ --mmlu-limit 10 --mmlu-data ~/data/mmlu -o report/
    The same tasks run on lm-eval's CLI:
      lm-eval run --model hf --model_args pretrained=HF_ID,peft=ADAPTER --device cpu --apply_chat_template \\
        --include_path $(adaptermerge eval --print-include-path) --tasks adaptermerge   # the three chat tasks (docs/lm-eval.md)
      (MMLU: --tasks adaptermerge_mmlu_cloze --metadata '{"mmlu_data": "DIR", "mmlu_limit": 10}')
    """
    if print_include_path:
        click.echo(str(TASKS_DIR))
        return 0
    # (datasets' and lm-eval's own tqdm bars are off: main() sets TQDM_DISABLE before tqdm is imported)
    require_eval_extra("eval")
    if output is not None:  # before the evaluation's minutes: the report never replaces a candidate
        check_destination(output, force, candidates)
    api = load_api()
    from ..evalsuite import gates as gates_mod
    from ..evalsuite.report import write_report

    config = gates_mod.load_gates(gates_path) if gates_path else None
    task_list = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None
    settings = api.EvalSettings(base=base, data_seed=data_seed, mmlu_data=mmlu_data, mmlu_limit=mmlu_limit, mmlu_shots=mmlu_shots, mmlu_split=mmlu_split,
                            mmlu_format=mmlu_format, seed=seed, batch_size=batch_size, threads=threads, dtype=dtype,
                            use_cache=not no_cache, workers=workers)
    with progress_bar("evaluating") as update:
        report = api.evaluate(list(candidates), task_list, config, settings, progress=update)
    if not main_process():  # the launcher's first process reports and writes; every one has the same report
        return 0 if report.passed else 1
    results.print(_table(report))
    for note in report.notes:
        results.print(f"[dim]{note}[/]")
    for g in report.gates:
        if not g.passed:
            results.print(f"[red]FAIL[/] {g.candidate}: {g.gate.describe()}: {g.detail}")
    for error in report.errors:
        console.print(f"[yellow]error[/] {error}")
    if output is not None:
        write_report(report, output, force=force, inputs=candidates)
        results.print(f"report -> {output}/report.md")
    return 0 if report.passed else 1
