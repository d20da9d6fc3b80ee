"""The sweep, chosen on the dev split: when no merge passes on the eval split, the sweep's points
(sweep.py) are scored on the dev split, the best of them (with the merges it starts from) is
chosen there, and only that one is then scored on the eval split, for the table.

So the table's row of the chosen merge is not a best-of-several on the documents it reports: its
settings were picked on other documents (the dev split's: other items for structured and safety,
the other phrasing of each fact for domain, MMLU's dev questions). The candidates themselves are
sweep.py's fixed steps: regmean's read off a grid on the dev split, the other methods' fallback
points off older eval-split grids; the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..train.data import TASKS
from . import plan, results, sweep

SPLIT = "dev"


@dataclass
class SweepOutcome:
    chosen: dict | None  # the chosen merge's entry (a sweep point, or one the sweep started from)
    dev_rows: list[dict]  # the merges' rows on the dev split, in the order scored
    eval_tasks: dict[str, str]  # task -> its evaluation task name on the dev split
    points: list[dict] = field(default_factory=list)  # the sweep points' entries (all merged, scored on dev)


def run_sweep(starts: list[dict], entries: list[dict], config, has_mmlu: bool, data_dir: Path,
              merge_point: Callable[[object], dict], evaluate_on: Callable, searched=None) -> SweepOutcome:
    """`starts`: the entries the sweep begins from (the best merge on the eval split, and the best of a
    registered method when that is another one). `merge_point(approach)` merges one point and returns
    its entry; `evaluate_on(entries, gate_config, split)` scores entries (the base first) and returns
    EvalReport.scores."""
    gate_config = plan.gate_config(config, data_dir, split=SPLIT)
    names = {task: plan.eval_task_name(task, config, SPLIT) for task in TASKS}
    scored = [e for e in entries if e["kind"] in ("base", "adapter")] + list(starts)

    def rows() -> list[dict]:
        scores = evaluate_on(scored, gate_config, SPLIT)
        return results.build_rows(scored, scores, gate_config, names, has_mmlu)

    dev_rows = rows()
    method_rows = [r for r in dev_rows if (r.get("approach") or {}).get("kind") == "method"]
    points = [merge_point(p) for p in sweep.sweep_points(results.best_merge(method_rows), config.quick, searched)]
    scored += [p for p in points if p.get("error") is None]
    dev_rows = rows()
    best = results.best_merge(dev_rows)
    merges = [r for r in dev_rows if r["kind"] == "merge"]
    chosen = None if best is None else next(e for e in scored if e["name"] == best["name"])
    return SweepOutcome(chosen, merges, names, points)


def summary(outcome: SweepOutcome) -> dict:
    """report.json's `sweep`: the split it chose on, its rows there (scores, retention, gates and the
    rules each missed: the choice is the nearest miss, so which gates matter), the choice."""
    keep = ("name", "approach", "scores", "retention", "mmlu_delta", "gates_passed", "gates_total", "passed", "sweep")
    return {"split": SPLIT, "eval_tasks": outcome.eval_tasks, "chosen": outcome.chosen["name"] if outcome.chosen else None,
            "rows": [{**{k: r.get(k) for k in keep}, "missed": [g["rule"] for g in r.get("gates") or [] if not g["passed"]]}
                     for r in outcome.dev_rows],
            "errors": {p["name"]: p["error"] for p in outcome.points if p.get("error")}}


def selection_note(sweep_data: dict | None, winner_name: str | None) -> str | None:
    """The report's note on how the winner was chosen when the sweep ran."""
    if not sweep_data:
        return None
    n = len(sweep_data["rows"])
    chosen = sweep_data["chosen"]
    if chosen is None:
        return "the sweep produced no usable merge"
    which = "a sweep point" if any(r["name"] == chosen and r.get("sweep") for r in sweep_data["rows"]) else "the merge it started from"
    return (f"the sweep chose {chosen} ({which}) among {n} merges by their scores on the dev split (other documents "
            "than the table's); the table's row of it is its first evaluation on the eval split, not a best of several "
            "there. The sweep's points are fixed steps (demo/sweep.py): regmean's read off a grid on the dev split, the other "
            "methods' fallback points off older eval-split grids"
            + ("" if winner_name == chosen else f"; the winner written is {winner_name}"))
