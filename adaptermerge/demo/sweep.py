"""A small search when the defaults miss the targets, around the best merge of a registered method
so far: that method at its near point (NEAR_POINTS; a damped sum for a method without one), the
same merge with the task it retains least up-weighted, and, with --weight-search, task arithmetic
at the per-task weights the proxy search found (weightsearch.py: seconds per point, training
records only). Every point is then scored by the same gates as the defaults; the winner is simply
the best row (results.rank_key).
"""

from __future__ import annotations

from ..train.data import TASKS
from .plan import Approach, method_approach

# One grid point (each costs a full evaluation, about 2 minutes here), chosen by the method of the
# best merge so far (the nearest miss, results.rank_key). regmean: lambda 1.1 was its nearest miss
# on the 2026-12-03 adapters (retention 0.92 / 0.95 / 0.92, benign answers 0.838; lambda 1 kept
# 0.94 / 0.95 / 0.92 and 0.788; 128 calibration records 0.96 / 1.00 / 0.89 and 0.818; safety's
# inputs weighted 1.5 0.88 / 0.98 / 0.95 and 0.798; a base-preserving zero-delta term on general
# prompts lowered all three). Any other method: a damped sum, which kept 0.87 / 0.74 / 0.36 where
# the plain sum kept 0.84 / 0.30 / 0.44 (2026-11-23). The up-weighted best merge makes the second point.
# These points were read off grids scored on the demo's own eval splits: the sweep picks its
# winner on the same documents it reports, so its row is the best of a few, not a held-out score.
NEAR_POINTS = {
    "regmean": {"lambda_": 1.1},
}
# The second point: the best merge with its least-retained task up-weighted, by UPWEIGHT, or per
# method by a factor with settings moved along. regmean: the task it keeps least (safety, on both
# machines' adapters) gained from its inputs weighing more and from a larger lambda, and most from
# both: on the 2026-12-03 AMX adapters (full eval splits, retention d/s/s, refusal, benign answers)
# weights 1,1,1.5 kept 0.96 / 0.96 / 0.86, 0.810, 0.838; 1,1,2 0.96 / 0.96 / 0.86, 0.810, 0.859;
# 1,1,2 at lambda 1.1 0.96 / 0.95 / 0.89, 0.833, 0.879; at lambda 1.2 0.96 / 0.95 / 0.97, 0.905,
# 0.889; at lambda 1.3 0.98 / 0.95 / 0.92, 0.857, 0.859 (1,1,2.5 at 1.2: 0.94 / 0.95 / 0.97, 0.905, 0.899).
# Those adapters had structured at 40 steps; on the 80-step ones the same point kept 0.96 / 0.95 / 0.89,
# 0.833, 0.929 (2026-12-03 18:24): the point is a grid's best on one set of adapters, not a tuned setting.
UPWEIGHT_POINTS = {
    "regmean": (2.0, {"lambda_": 1.2}),
}
# A second step, taken (full demo only) when the first points still miss: from the best merge of a
# method listed here, the task it retains least weighted FURTHER_FACTOR times more and the settings
# moved on. regmean: lambda up by 0.1 and twice the calibration records (its Grams from more of each
# task's inputs). Read off a grid of 15 points around the first step's best, scored on the eval splits
# of the 2026-12-03 21:16 adapters (retention d/s/s, MMLU delta): from 1,1,2 at lambda 1.2 (0.96 / 0.97
# / 0.89) this step, 1,1,2.5 at lambda 1.3 with 128 records, kept 0.98 / 0.95 / 0.97, +0.012, and
# passed every preset gate (refusal 0.905, benign answers 0.909), structured one document short of
# 0.95 retention; 1,1,3 there the same; lambda 1.4 lost domain and refusal; 64 records at any weights
# left safety at 0.92-0.95 with domain or structured under 0.95. A step found on one set of adapters.
FURTHER_STEPS = {
    "regmean": lambda p, defaults: {**p, "lambda_": round(p.get("lambda_", defaults.lambda_) + 0.1, 6),
                                    "calib_size": 2 * p.get("calib_size", defaults.calib_size)},
}
FURTHER_FACTOR = 1.25
FULL_GRID = [
    ("task_arithmetic", {"lambda_": 0.8}),
]
QUICK_GRID: list = []  # --quick: only the up-weighted best merge (one more evaluation)
UPWEIGHT = 1.5


def point_name(method: str, params: dict, weights: list[float]) -> str:
    parts = [method] + [f"{k.rstrip('_')}{v:g}" if isinstance(v, float) else f"{k}-{v}" for k, v in params.items()]
    if any(w != 1.0 for w in weights):
        parts.append("w" + "-".join(f"{w:g}" for w in weights))
    return "sweep_" + "_".join(parts)


def sweep_points(best: dict | None, quick: bool, searched: tuple[float, ...] | None = None) -> list[Approach]:
    """Task arithmetic at the searched weights (when the search moved them), the grid (the best
    method's near point, else FULL_GRID), then the best merge so far (if a registered method) with
    its least-retained task up-weighted (UPWEIGHT_POINTS)."""
    method = best["approach"]["method"] if best is not None and best["approach"]["kind"] == "method" else None
    points = []
    if searched is not None and any(w != 1.0 for w in searched):
        points.append(method_approach("task_arithmetic", {}, searched, name=point_name("task_arithmetic", {}, list(searched))))
    if quick:
        grid = QUICK_GRID
    elif method in NEAR_POINTS:  # the best merge's own settings, moved to its near point
        grid = [(method, NEAR_POINTS[method], best["approach"]["params"])]
    else:
        grid = [(m, p, {}) for m, p in FULL_GRID]
    points += [method_approach(m, {**start, **p}, name=point_name(m, p, [1.0] * len(TASKS))) for m, p, start in grid]
    if method is not None:
        kept = {t: r for t, r in (best.get("retention") or {}).items() if r is not None}
        if kept:
            worst = min(kept, key=kept.get)
            factor, moved = UPWEIGHT_POINTS.get(method, (UPWEIGHT, {}))
            weights = [factor if t == worst else 1.0 for t in TASKS]
            params = {**best["approach"]["params"], **moved}
            points.append(method_approach(method, params, weights, name=point_name(method, params, weights)))
    seen, out = set(), []
    for p in points:
        if p.name not in seen:
            seen.add(p.name)
            out.append(p)
    return out


def further_points(best: dict | None) -> list[Approach]:
    """The second step from `best` (the best merge of a registered method after the first points;
    see FURTHER_STEPS), or nothing when its method has no step or it retains every task in full."""
    from ..methods import METHODS

    if best is None or (best.get("approach") or {}).get("kind") != "method":
        return []
    method = best["approach"]["method"]
    kept = {t: r for t, r in (best.get("retention") or {}).items() if r is not None}
    if method not in FURTHER_STEPS or not kept or min(kept.values()) >= 1.0:
        return []
    worst = min(kept, key=kept.get)
    weights = [w * FURTHER_FACTOR if t == worst else w for t, w in zip(TASKS, best["approach"]["weights"])]
    params = FURTHER_STEPS[method](dict(best["approach"]["params"]), METHODS.get(method).Params())
    return [method_approach(method, params, weights, name=point_name(method, params, weights))]


def selection_note(best: dict | None, points: int) -> str | None:
    """The report's caveat when the winner is a sweep row: the sweep chose it by the eval documents
    it is scored on, so its scores are the best of a few tries there, not a held-out measurement."""
    if not best or not best.get("sweep"):
        return None
    return (f"the winner {best['name']} comes from the sweep, which picked it among {points + 1} settings (the best merge "
            f"so far and {points} sweep points) by the same eval documents it is scored on: its scores are the best of a "
            "few tries, not held-out ones")
