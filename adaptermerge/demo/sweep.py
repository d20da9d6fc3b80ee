"""A small search when the defaults miss the targets, around the best merge of a registered method
so far: that method at its near point (NEAR_POINTS; a damped sum for a method without one), the
same merge with the task it retains least up-weighted, and, with --weight-search, task arithmetic
at the per-task weights the proxy search found (weightsearch.py: seconds per point, training
records only). Every point is scored by the same gates as the defaults, on the dev split, where
devsweep.py chooses among them (results.rank_key).
"""

from __future__ import annotations

from ..train.data import TASKS
from .plan import Approach, method_approach

# One grid point (each costs a full evaluation, about a minute here, on the dev split), chosen by the
# method of the best merge so far (the nearest miss, results.rank_key). regmean: one --refine round
# (the Grams collected again with the merge so far folded in). Measured on the dev split of the
# 2026-12-04 demo adapters (retention domain / structured / safety, refusal, benign answers, MMLU
# delta; docs/regmean-grids.md): the defaults kept 0.96 / 0.98 / 0.92, 0.786, 0.800, +0.012; one
# round 0.98 / 0.98 / 1.04, 0.893, 0.850, +0.018; lambda 1.1 instead 0.96 / 0.98 / 0.83, 0.714,
# 0.775. Any other method: a damped sum, which kept 0.87 / 0.74 / 0.36 where the plain sum kept
# 0.84 / 0.30 / 0.44 (2026-11-23, eval split). The up-weighted best merge makes the second point.
NEAR_POINTS = {
    "regmean": {"refine": 1},
}
# The second point: the best merge with its least-retained task up-weighted, by UPWEIGHT, or per
# method by a factor with settings moved along. regmean: the task it keeps least (safety) weighted 2
# with one --refine round kept 0.96 / 0.98 / 1.04, 0.893, 0.950, +0.029 on that dev split (1.5: the
# same but benign answers 0.925). Every step on from there lost on the dev split: lambda 1.1 (domain
# and refusal), a second --refine round (structured and refusal), 128 calibration records (domain);
# so did the eval split's old best point, weights 1,1,2.5 at lambda 1.3 with 128 records (0.94 / 0.95 /
# 0.79, 0.679), and the sweep stops after these two points.
UPWEIGHT_POINTS = {
    "regmean": (2.0, {"refine": 1}),
}
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
