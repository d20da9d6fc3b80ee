"""From evaluated scores to the demo's rows: headline scores, retention, MMLU delta, gates, ranking.

retention[task] = (merge - base) / (single-task adapter - base) on the task's headline metric (the
TIES paper's normalized accuracy); None where the single adapter does not beat the base, since the
ratio means nothing there. mmlu_delta = merge acc - base acc (negative when worse).
"""

from __future__ import annotations

import math

from ..evalsuite import gates as gates_mod
from ..train.data import TASKS
from .plan import HEADLINE, MMLU

BASE = "base"


def _value(scores: dict, candidate: str, task: str, metric: str) -> float | None:
    s = scores.get(candidate, {}).get(task)
    if s is None or s.error or metric not in s.metrics:
        return None
    v = s.metrics[metric]["value"]
    return None if v is None or math.isnan(v) else float(v)


def retention(merged: float | None, single: float | None, base: float | None) -> float | None:
    if merged is None or single is None or base is None or single - base <= 0:
        return None
    return (merged - base) / (single - base)


def build_rows(entries: list[dict], scores: dict, gate_config: gates_mod.GateConfig, eval_names: dict[str, str],
               has_mmlu: bool) -> list[dict]:
    """One row per entry ({name, kind: base|adapter|merge, approach, path, error, ...}) in order.

    `scores` is EvalReport.scores; `eval_names` maps each task to its evaluation task name."""
    singles = {eval_names[t]: t for t in TASKS if any(e["name"] == t and e["kind"] == "adapter" for e in entries)}
    evaluated = [e["name"] for e in entries if e["name"] in scores]
    merges = [e["name"] for e in entries if e["kind"] == "merge" and e["name"] in scores]
    plain = gates_mod.GateConfig(gates=gate_config.gates, tasks=gate_config.tasks, user_tasks=gate_config.user_tasks)
    results = gates_mod.check_all(plain, scores, [n for n in evaluated if n not in merges], {}, BASE)
    results += gates_mod.check_all(gate_config, scores, merges, singles, BASE)
    rows = []
    for entry in entries:
        name = entry["name"]
        row = {**entry, "scores": {}, "metrics": {}, "errors": []}
        if entry.get("error") is None and name in scores:
            for task in TASKS:
                row["scores"][task] = _value(scores, name, eval_names[task], HEADLINE[task])
                s = scores[name][eval_names[task]]
                row["metrics"][task] = {m: v["value"] for m, v in s.metrics.items()}
                if s.error:
                    row["errors"].append(f"{task}: {s.error}")
            if has_mmlu:
                row["scores"][MMLU] = _value(scores, name, MMLU, "acc")
                if scores[name][MMLU].error:
                    row["errors"].append(f"mmlu: {scores[name][MMLU].error}")
        mine = [g for g in results if g.candidate == name]
        row["gates"] = [g.to_dict() for g in mine]
        row["gates_passed"] = sum(g.passed for g in mine)
        row["gates_total"] = len(mine)
        row["passed"] = bool(mine) and all(g.passed for g in mine) and not row["errors"] and entry.get("error") is None
        if entry["kind"] == "merge":
            row["retention"] = {t: retention(row["scores"].get(t), _value(scores, t, eval_names[t], HEADLINE[t]),
                                             _value(scores, BASE, eval_names[t], HEADLINE[t])) for t in TASKS}
            base_mmlu, mine_mmlu = _value(scores, BASE, MMLU, "acc"), row["scores"].get(MMLU)
            row["mmlu_delta"] = None if base_mmlu is None or mine_mmlu is None else mine_mmlu - base_mmlu
        rows.append(row)
    return rows


def shortfall(gate: dict, row: dict) -> float:
    """How far a gate's value is from the value it needs, as a fraction of that value (0 when it
    passes, inf when it has no value). For MMLU's max-drop gate the needed value is the base's
    accuracy minus the allowed drop, so a miss counts in accuracy, like the other gates."""
    if gate["passed"]:
        return 0.0
    value = gate.get("value")
    if value is None:
        return math.inf
    need, got = gate["threshold"], value
    if gate["kind"] == "max_drop":  # value is the drop: base - merge
        got = (row.get("scores") or {}).get(MMLU)
        if got is None:
            return math.inf
        need = got + value - gate["threshold"]
    return max(0.0, (need - got) / need) if need > 0 else math.inf


def worst_shortfall(row: dict) -> float:
    return max((shortfall(g, row) for g in row.get("gates") or []), default=0.0)


def rank_key(row: dict) -> tuple:
    """Higher is better: no error, every gate passed, then the nearest miss (the smallest worst
    shortfall over its gates: a merge that misses one gate by 12 % ranks above one that passes
    more gates but misses another by 28 %), gates passed, worst retention, MMLU delta."""
    kept = [r for r in (row.get("retention") or {}).values() if r is not None]
    ok = row.get("error") is None and not row.get("errors")
    delta = row.get("mmlu_delta")
    return (ok, row.get("passed", False), -worst_shortfall(row), row.get("gates_passed", 0),
            min(kept) if kept else -math.inf, delta if delta is not None else -math.inf)


def best_merge(rows: list[dict]) -> dict | None:
    merges = [r for r in rows if r["kind"] == "merge" and r.get("error") is None and not r.get("errors")]
    return max(merges, key=rank_key) if merges else None
