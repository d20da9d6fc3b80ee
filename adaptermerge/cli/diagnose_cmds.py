"""`adaptermerge diagnose A B C [--calib ...]`: which task a merge will lose, and why, before any
evaluation. A thin shell over api.diagnose (the statistics: adaptermerge.diagnostics); this module
parses and prints. Output: the tables (or --json) on stdout, progress on stderr; with -o, the
report folder (diagnostics.json, heatmap.png)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from .options import COUNT, FRACTION, SEED, float_list
from .progress import progress_bar, results
from .startup import load_api


def _number(x, digits: str = ".3f") -> str:
    return "-" if x is None else format(x, digits)


def pair_table(report: dict) -> Table:
    table = Table(title="adapter pairs (model-wide)")
    columns = ["pair", "sign conflict", "overlap A (inputs)", "overlap B (outputs)", "norm ratio a/b", "delta cosine"]
    if report["calibrated"]:
        columns += ["a on b's inputs", "b on a's inputs"]
    for col in columns:
        table.add_column(col, justify="left" if col == "pair" else "right")
    for p in report["pairs"]:
        row = [f"{p['a']} / {p['b']}", _number(p["sign_conflict"]), _number(p["overlap_A"]), _number(p["overlap_B"]),
               _number(p["norm_ratio"]), _number(p["cosine"])]
        if report["calibrated"]:
            row += [_number(v) for v in p["cross_activation"].values()]
        table.add_row(*row)
    return table


def task_table(report: dict) -> Table:
    """Rows: the plain sum, the average and each merged adapter; per task P (kept, interference)."""
    where = "on each task's inputs" if report["calibrated"] else "data-free (no --calib)"
    table = Table(title=f"predicted interference P per task: relative output error {where}; (kept share, interference)")
    predicted = report["predicted_interference"]
    table.add_column("merge")
    for task in predicted:
        table.add_column(task, justify="right")
    for label in ("sum", "average", *report["merged"]):
        cells = []
        for p in predicted.values():
            value = p[label] if label in ("sum", "average") else p["merged"][label]
            kept, rest = p["kept"].get(label), p["interference"].get(label)
            cells.append(f"{_number(value)} ({_number(kept, '.2f')}, {_number(rest, '.2f')})" if value is not None else "-")
        table.add_row(label, *cells)
    return table


def why_table(report: dict) -> Table:
    """Per task: the adapter that fires hardest on its inputs, and where."""
    table = Table(title="why: the other adapter strongest on each task's inputs (ratio to the task's own delta)")
    for col in ("task", "strongest other", "worst layers", "own delta / base output"):
        table.add_column(col, justify="right" if col == "own delta / base output" else "left")
    strength = report.get("own_strength") or {}
    for task, p in report["predicted_interference"].items():
        other = p["strongest_other"]
        layers = ", ".join(f"{w['layer']} ({w['ratio']:.2f})" for w in p["worst_layers"]) or "-"
        table.add_row(task, f"{other['adapter']} ({_number(other['ratio'], '.2f')})" if other["adapter"] else "-", layers,
                      _number(strength.get(task), ".4f"))
    return table


def register(group: click.Group) -> None:
    @group.command("diagnose")
    @click.argument("adapters", nargs=-1, required=True, type=click.Path(path_type=Path))
    @click.option("--calib", help="Each adapter's task inputs, comma-separated, one per adapter: a built-in task "
                  "(domain, structured, safety), a JSONL file of chat records, or 'train' (its training data; "
                  "'train' alone: for all). Adds cross-activation; without it the statistics are data-free.")
    @click.option("--merged", "merged", multiple=True, type=click.Path(path_type=Path),
                  help="A merged adapter to score per task (repeatable).")
    @click.option("--weights", help="The merge's weights, comma-separated, one per adapter (default: 1 each).")
    @click.option("--density", type=FRACTION, default=0.2, show_default=True,
                  help="Fraction of each delta's entries counted as significant for sign conflicts.")
    @click.option("--calib-size", type=COUNT, default=64, show_default=True, help="Calibration records per task.")
    @click.option("--calib-max-length", type=COUNT, default=512, show_default=True, help="Tokens per record at most.")
    @click.option("--seed", type=SEED, default=0, show_default=True, help="Seed that draws the calibration records.")
    @click.option("--base", help="Base model: HF id or folder (default: the adapters' base).")
    @click.option("--ignore-base-mismatch", is_flag=True, help="Diagnose adapters whose recorded base models differ.")
    @click.option("-o", "--output", type=click.Path(path_type=Path), help="Report folder (diagnostics.json, heatmap.png).")
    @click.option("--force", is_flag=True, help="Replace an existing report folder.")
    @click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of the tables.")
    def diagnose(adapters, calib, merged, weights, density, calib_size, calib_max_length, seed, base, ignore_base_mismatch,
                 output, force, as_json) -> int:
        """Interference of ADAPTERS before merging: per layer and pair, sign conflicts, subspace overlap,
        norm ratios and (with --calib) cross-activation; per task, the predicted interference.
        docs/diagnose.md describes each statistic."""
        api = load_api()
        with progress_bar("diagnose") as update:
            report = api.diagnose(list(adapters), calib=calib, merged=list(merged), weights=float_list(weights, "weights"),
                                  density=density, calib_size=calib_size, calib_max_length=calib_max_length, seed=seed,
                                  base=base, check_base=not ignore_base_mismatch, out=output, force=force, progress=update)
        if as_json:
            click.echo(json.dumps(report, indent=1))
            return 0
        results.print(pair_table(report))
        results.print(task_table(report))
        results.print(why_table(report))
        if output is not None:
            click.echo(f"wrote {output} (diagnostics.json, heatmap.png)")
        return 0
