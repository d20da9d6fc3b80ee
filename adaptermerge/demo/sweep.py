"""A small search when the defaults miss the targets: per-task weights of task arithmetic found by
the proxy search (weightsearch.py: seconds per point, training records only), a damped sum, and
up-weighting the task the best merge so far retains least. Every point is then scored by the same
gates as the defaults; the winner is simply the best row.
"""

from __future__ import annotations

from ..train.data import TASKS
from .plan import Approach, method_approach

# One grid point (each costs a full evaluation, about 1.8 minutes here, and the demo has a
# 45-minute budget): a damped sum, which kept 0.87 / 0.74 / 0.36 where the default sum kept
# 0.84 / 0.30 / 0.44 (2026-11-23). Denser TIES (density 0.5) was dropped after that run: it kept
# 0.96 / 0.00 / 0.28, the larger domain delta winning more sign elections. The up-weighted best
# merge makes the second point.
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
    """Task arithmetic at the searched weights (when the search moved them), the grid, then the
    best merge so far (if a registered method) with its least-retained task up-weighted."""
    grid = QUICK_GRID if quick else FULL_GRID
    points = []
    if searched is not None and any(w != 1.0 for w in searched):
        points.append(method_approach("task_arithmetic", {}, searched, name=point_name("task_arithmetic", {}, list(searched))))
    points += [method_approach(m, p, name=point_name(m, p, [1.0] * len(TASKS))) for m, p in grid]
    if best is not None and best["approach"]["kind"] == "method":
        kept = {t: r for t, r in (best.get("retention") or {}).items() if r is not None}
        if kept:
            worst = min(kept, key=kept.get)
            weights = [UPWEIGHT if t == worst else 1.0 for t in TASKS]
            method, params = best["approach"]["method"], best["approach"]["params"]
            points.append(method_approach(method, params, weights, name=point_name(method, params, weights)))
    seen, out = set(), []
    for p in points:
        if p.name not in seen:
            seen.add(p.name)
            out.append(p)
    return out
