"""Choosing the winner: the best candidate on the eval split, else the sweep, chosen on the dev split.

When a candidate passes every gate on the eval split, it wins. Otherwise, with `select.sweep`, a
few more points are merged (`sweep_points`): the best registered method so far at its near point
(NEAR_POINTS; a damped task arithmetic for a method without one), the same merge with the task it
retains least up-weighted, and, with `select.weight_search`, task arithmetic at the weights the
proxy search found (recipe/weights.py). The points and the merges they start from are scored on
the dev split (`select.split: dev`; other documents than the table's), the best there is chosen
(rows.rank_key), and only that one is then scored on the eval split, for the table: its row is
its first evaluation there, not a best of several. A recipe whose user tasks lack a `dev:` file
(or that asks `split: eval`) chooses on the eval split, and the report says so.

Across seeds (`seeds:` in the recipe): every candidate is merged from each seed's adapters and
scored on the dev split at each; its score is its worst seed's rank (rows.rank_key, the same rule
as one seed's choice: gates, nearest miss, gates passed, worst retention, MMLU delta) and the
candidate whose worst seed ranks best wins (`choose_across_seeds`): a merge that does well at two
seeds and badly at the third loses to one that does fairly well at all three. No sweep runs there:
its points follow one seed's best merge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import tasks as tasks_mod
from .rows import Candidate, Row, best_merge, build_rows, rank_key
from .schema import Recipe

# One point each (each costs a full evaluation), chosen by the method of the best merge so far.
# regmean: one refine round (the Grams collected again with the merge so far folded in); read off
# a grid on the dev split of the demo's adapters (docs/regmean-grids.md), where it kept the most of
# every task's gain. Any other method: a damped sum, which kept more than the plain sum there.
NEAR_POINTS = {
    "regmean": {"refine": 1},
}
# The second point: the best merge with its least-retained task up-weighted, by UPWEIGHT, or per
# method by a factor with settings moved along. regmean: weight 2 with one refine round (on that
# dev split every step on from there lost: a higher lambda, a second round, more calibration
# records), so the sweep stops after these two points.
UPWEIGHT_POINTS = {
    "regmean": (2.0, {"refine": 1}),
}
FULL_GRID = [
    ("task_arithmetic", {"lambda_": 0.8}),
]
QUICK_GRID: list = []  # --quick: only the up-weighted best merge (one more evaluation)
UPWEIGHT = 1.5


@dataclass(frozen=True)
class SweepRow:
    """A merge on the split the sweep chose on, with the gate rules it missed there."""

    name: str
    candidate: Candidate | None
    scores: dict
    retention: dict | None
    mmlu_delta: float | None
    gates_passed: int
    gates_total: int
    passed: bool
    sweep: bool
    missed: list[str]


@dataclass
class SweepOutcome:
    split: str
    chosen: Row | None  # the chosen merge's entry (a sweep point, or one the sweep started from)
    rows: list[Row]  # the merges' rows on the split, in the order scored
    eval_tasks: dict[str, str]  # task -> its evaluation task on the split
    points: list[Row] = field(default_factory=list)  # the sweep points' entries

    def summary(self) -> dict:
        """report.json's `sweep`: the split it chose on, its rows there, the choice, failed points."""
        rows = [SweepRow(r.name, r.candidate, r.scores, r.retention, r.mmlu_delta, r.gates_passed, r.gates_total,
                         r.passed, r.sweep, [g.rule for g in r.gates if not g.passed]) for r in self.rows]
        return {"split": self.split, "eval_tasks": self.eval_tasks, "chosen": self.chosen.name if self.chosen else None,
                "rows": rows, "errors": {p.name: p.error for p in self.points if p.error}}


def point_name(method: str, params: dict, weights: list[float]) -> str:
    parts = [method] + [f"{k.rstrip('_')}{v:g}" if isinstance(v, float) else f"{k}-{v}" for k, v in params.items()]
    if any(w != 1.0 for w in weights):
        parts.append("w" + "-".join(f"{w:g}" for w in weights))
    return "sweep_" + "_".join(parts)


def _point(method: str, params: dict, weights, name: str) -> Candidate:
    return Candidate(name, "method", method, dict(params), tuple(float(w) for w in weights))


def sweep_points(best: Row | None, quick: bool, adapter_tasks: list[str | None],
                 searched: tuple[float, ...] | None = None) -> list[Candidate]:
    """Task arithmetic at the searched weights (when the search moved them), the grid (the best
    method's near point, else FULL_GRID), then the best merge so far (if a registered method)
    with its least-retained task up-weighted (UPWEIGHT_POINTS). `adapter_tasks`: the task of
    each input adapter, in order (the weights' order)."""
    method = best.candidate.method if best is not None and best.candidate and best.candidate.kind == "method" else None
    ones = [1.0] * len(adapter_tasks)
    points = []
    if searched is not None and any(w != 1.0 for w in searched):
        points.append(_point("task_arithmetic", {}, searched, point_name("task_arithmetic", {}, list(searched))))
    if quick:
        grid = QUICK_GRID
    elif method in NEAR_POINTS:  # the best merge's own settings, moved to its near point
        grid = [(method, NEAR_POINTS[method], best.candidate.params)]
    else:
        grid = [(m, p, {}) for m, p in FULL_GRID]
    points += [_point(m, {**start, **p}, ones, point_name(m, p, ones)) for m, p, start in grid]
    if method is not None:
        kept = {t: r for t, r in (best.retention or {}).items() if r is not None}
        if kept:
            worst = min(kept, key=kept.get)
            factor, moved = UPWEIGHT_POINTS.get(method, (UPWEIGHT, {}))
            weights = [factor if t == worst else 1.0 for t in adapter_tasks]
            params = {**best.candidate.params, **moved}
            points.append(_point(method, params, weights, point_name(method, params, weights)))
    seen, out = set(), []
    for p in points:
        if p.name not in seen:
            seen.add(p.name)
            out.append(p)
    return out


def run_sweep(starts: list[Row], entries: list[Row], recipe: Recipe, docs: dict[str, int], has_mmlu: bool, data_dir: Path,
              merge_point: Callable[[Candidate], Row], evaluate_on: Callable, *, split: str = "dev", quick: bool = False,
              searched: tuple[float, ...] | None = None) -> SweepOutcome:
    """`starts`: the entries the sweep begins from (the best merge on the eval split, and the best
    of a registered method when that is another one). `merge_point(candidate)` merges one point and
    returns its entry; `evaluate_on(entries, gate_config, split)` scores entries (the base first) and
    returns EvalReport.scores."""
    gate_config = tasks_mod.gate_config(recipe, docs, data_dir, split=split)
    names = tasks_mod.eval_names(recipe, docs, split)
    headline = {t: recipe.headline(t) for t in names}
    scored = [e for e in entries if e.kind in ("base", "adapter")] + list(starts)

    def rows() -> list[Row]:
        return build_rows(scored, evaluate_on(scored, gate_config, split), gate_config, names, headline, has_mmlu)

    method_rows = [r for r in rows() if r.candidate is not None and r.candidate.kind == "method"]
    adapter_tasks = [e.task for e in entries if e.kind == "adapter"]
    points = [merge_point(p) for p in sweep_points(best_merge(method_rows), quick, adapter_tasks, searched)]
    scored += [p for p in points if p.error is None]
    dev_rows = rows()
    best = best_merge(dev_rows)
    chosen = None if best is None else next(e for e in scored if e.name == best.name)
    return SweepOutcome(split, chosen, [r for r in dev_rows if r.kind == "merge"], names, points)


def selection_note(sweep: dict | None, winner_name: str | None) -> str | None:
    """The report's note on how the winner was chosen when the sweep ran."""
    if not sweep:
        return None
    n = len(sweep["rows"])
    chosen = sweep["chosen"]
    if chosen is None:
        return "the sweep produced no usable merge"
    which = "a sweep point" if any(r.name == chosen and r.sweep for r in sweep["rows"]) else "the merge it started from"
    if sweep["split"] == "eval":
        where = ("by their scores on the eval split, the documents the table reports (the recipe has no dev split "
                 "for every task), so the winner's row is a best of several there")
    else:
        where = ("by their scores on the dev split (other documents than the table's); the table's row of it is its "
                 "first evaluation on the eval split, not a best of several there")
    return (f"the sweep chose {chosen} ({which}) among {n} merges {where}. The sweep's points are fixed steps "
            "(recipe/select.py): regmean's read off a grid on the dev split, the other methods' fallback points off "
            "older eval-split grids" + ("" if winner_name == chosen else f"; the winner written is {winner_name}"))


# ---------------------------------------------------------------- across seeds

def worst_seed(rows: dict[int, Row]) -> int:
    """The seed at which a candidate ranks lowest (rows.rank_key; the first such seed on a tie)."""
    return min(rows, key=lambda seed: rank_key(rows[seed]))


def choose_across_seeds(rows_by_seed: dict[int, list[Row]]) -> tuple[str | None, list[str]]:
    """(the chosen merge, every merge ranked best first) by the max-min rule: each merge's key is
    its worst seed's rank_key; a merge unusable at any seed (an error, a task that failed) is
    ranked but never chosen. A merge missing at a seed counts as unusable there."""
    seeds = list(rows_by_seed)
    by_name = {seed: {r.name: r for r in rows if r.kind == "merge"} for seed, rows in rows_by_seed.items()}
    names = list(dict.fromkeys(n for seed in seeds for n in by_name[seed]))

    def key(name: str) -> tuple:
        rows = {seed: by_name[seed].get(name) for seed in seeds}
        if any(r is None for r in rows.values()):
            return (False,)
        return rank_key(rows[worst_seed(rows)])

    ranked = sorted(names, key=key, reverse=True)  # stable: the recipe's order among equals
    chosen = next((n for n in ranked if all(n in by_name[s] and by_name[s][n].usable for s in seeds)), None)
    return chosen, ranked


def seed_row(row: Row) -> dict:
    """One row at one seed, as report.json's `seeds` section gives it."""
    kept = [v for v in (row.retention or {}).values() if v is not None]
    return {"scores": row.scores, "retention": row.retention, "min_retention": min(kept) if kept else None,
            "mmlu_delta": row.mmlu_delta, "gates_passed": row.gates_passed, "gates_total": row.gates_total,
            "passed": row.passed, "missed": [g.rule for g in row.gates if not g.passed],
            "error": row.error or ("; ".join(row.errors) if row.errors else None), "same_as": row.same_as}


def _minimum(values) -> float | None:
    values = [v for v in values if v is not None]
    return min(values) if values else None


def across_seeds(rows: dict[int, Row]) -> dict:
    """One merge's rows at each seed and, per task, the minimum over the seeds of its score and
    retention (None where no seed has a value), the worst MMLU delta and the fewest gates passed."""
    per_seed = {seed: seed_row(r) for seed, r in rows.items()}
    tasks = list(dict.fromkeys(t for r in per_seed.values() for t in (r["retention"] or {})))
    scored = list(dict.fromkeys(t for r in per_seed.values() for t in r["scores"]))
    minimum = {"scores": {t: _minimum(r["scores"].get(t) for r in per_seed.values()) for t in scored},
               "retention": {t: _minimum((r["retention"] or {}).get(t) for r in per_seed.values()) for t in tasks},
               "min_retention": _minimum(r["min_retention"] for r in per_seed.values()),
               "mmlu_delta": _minimum(r["mmlu_delta"] for r in per_seed.values()),
               "gates_passed": min(r["gates_passed"] for r in per_seed.values()),
               "gates_total": max(r["gates_total"] for r in per_seed.values()),
               "passed": all(r["passed"] for r in per_seed.values())}
    return {"per_seed": per_seed, "min": minimum, "worst_seed": worst_seed(rows)}
