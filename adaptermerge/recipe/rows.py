"""The comparison's rows and the rule that ranks them.

A `Row` is one model of the comparison: the base, an input adapter or a merge (a `Candidate`),
with its scores once evaluated. retention[task] = (merge - base) / (single-task adapter - base) on
the task's headline metric (the TIES paper's normalized accuracy); None where the single adapter
does not beat the base, since the ratio means nothing there. mmlu_delta = merge acc - base acc.

The choice (`rank_key`): no error, every gate passed, then the nearest miss (the smallest worst
shortfall over its gates), then gates passed, worst retention, MMLU delta.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..evalsuite import gates as gates_mod

BASE = "base"
MMLU = gates_mod.MMLU
TRAINING_KINDS = ("train", "heal")  # candidates that train (the rest merge without data or training)


@dataclass(frozen=True)
class Candidate:
    """One merge to make. kind: "method" (the engine's merge), "peft" (add_weighted_adapter),
    "mergekit" (mergekit-yaml on base+lora models), "train" (sequential training, --on-top-of),
    "heal" (the engine's merge, then `heal` steps of distillation: training/heal.py).
    "train" and "heal" use training compute; the others are data-free."""

    name: str
    kind: str
    method: str
    params: dict = field(default_factory=dict)
    weights: tuple[float, ...] = ()
    heal: int = 0  # kind "heal": the distillation's steps

    @property
    def uses_training_compute(self) -> bool:
        return self.kind in TRAINING_KINDS

    @property
    def describe(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.params.items())
        weights = "" if self.kind == "train" else f" weights={list(self.weights)}"
        heal = f", then {self.heal} heal steps" if self.kind == "heal" else ""
        compute = "; uses training compute" if self.uses_training_compute else ""
        return f"{self.kind}:{self.method}" + (f" ({params})" if params else "") + weights + heal + compute


@dataclass(frozen=True)
class GateOutcome:
    """One gate checked for one row (evalsuite's GateResult, flattened for report.json). `score`
    is the row's own value of the gated metric (for max_drop, `value` is the drop)."""

    task: str
    metric: str
    kind: str  # min | max_drop | retention
    threshold: float
    rule: str
    passed: bool
    value: float | None
    detail: str = ""
    reference: str | None = None
    score: float | None = None
    paired: dict | None = None

    @classmethod
    def of(cls, result: gates_mod.GateResult, score: float | None) -> "GateOutcome":
        g = result.gate
        return cls(g.task, g.metric, g.kind, g.threshold, g.describe(), result.passed, result.value, result.detail,
                   g.reference, score, result.paired)


@dataclass
class Row:
    name: str
    kind: str  # base | adapter | merge
    candidate: Candidate | None = None
    path: Path | None = None
    model: str = "adapter"  # adapter | full (a mergekit merge is a full model)
    error: str | None = None
    skipped: bool = False  # the row could not run here (a missing optional tool): `error` says why
    seconds: float | None = None
    # an input adapter
    task: str | None = None  # the gate task it was trained for
    reused: bool | None = None  # taken from the training cache
    steps: int | None = None
    source: str | None = None  # a given adapter's file or folder
    # a merge
    lowrank: dict | None = None  # output ranks and truncation error (the merge's provenance)
    same_as: str | None = None  # an earlier merge with the same weights (recipe/dedupe.py)
    probe_difference: float | None = None
    sweep: bool = False  # a point added by the sweep
    # evaluation
    scores: dict[str, float | None] = field(default_factory=dict)  # task -> headline metric
    stderr: dict[str, float | None] = field(default_factory=dict)  # task -> the headline metric's standard error
    metrics: dict[str, dict] = field(default_factory=dict)  # task -> every metric
    errors: list[str] = field(default_factory=list)
    gates: list[GateOutcome] = field(default_factory=list)
    gates_passed: int = 0
    gates_total: int = 0
    passed: bool = False
    retention: dict[str, float | None] | None = None
    mmlu_delta: float | None = None

    @property
    def usable(self) -> bool:
        return self.error is None and not self.errors


@dataclass(frozen=True)
class Winner:
    name: str
    adapter: str | None  # folder under winner/ (None: a full-model merge has no adapter form)
    quantized: str | None  # folder of the re-quantized model under winner/
    scheme: str | None  # nf4 | int8
    notes: tuple[str, ...] = ()


# ---------------------------------------------------------------- scores to rows

def _value(scores: dict, candidate: str, task: str, metric: str, key: str = "value") -> float | None:
    """A candidate's metric on a task (`key`: "value" or "stderr"); None when missing, errored or NaN."""
    s = scores.get(candidate, {}).get(task)
    if s is None or s.error or metric not in s.metrics:
        return None
    v = s.metrics[metric].get(key)
    return None if v is None or math.isnan(v) else float(v)


def retention(merged: float | None, single: float | None, base: float | None) -> float | None:
    if merged is None or single is None or base is None or single - base <= 0:
        return None
    return (merged - base) / (single - base)


def build_rows(entries: list[Row], scores: dict, gate_config: gates_mod.GateConfig, eval_names: dict[str, str],
               headline: dict[str, str], has_mmlu: bool) -> list[Row]:
    """`entries` with their evaluation filled in (new Row objects, in order).

    `scores`: EvalReport.scores; `eval_names`: each recipe task (MMLU aside) -> its evaluation task
    on this split; `headline`: each task's column metric."""
    tasks = list(eval_names)
    singles = {eval_names[e.task]: e.name for e in entries if e.kind == "adapter" and e.task in eval_names}
    evaluated = [e.name for e in entries if e.name in scores]
    merges = [e.name for e in entries if e.kind == "merge" and e.name in scores]
    plain = gates_mod.GateConfig(gates=gate_config.gates, tasks=gate_config.tasks, user_tasks=gate_config.user_tasks)
    results = gates_mod.check_all(plain, scores, [n for n in evaluated if n not in merges], {}, BASE)
    results += gates_mod.check_all(gate_config, scores, merges, singles, BASE)
    single_of = {task: e.name for e in entries if e.kind == "adapter" and (task := e.task) in eval_names}
    rows = []
    for entry in entries:
        name = entry.name
        row = replace(entry, scores={}, stderr={}, metrics={}, errors=[], gates=[], retention=None, mmlu_delta=None)
        if entry.error is None and name in scores:
            for task in tasks:
                row.scores[task] = _value(scores, name, eval_names[task], headline[task])
                row.stderr[task] = _value(scores, name, eval_names[task], headline[task], "stderr")
                s = scores[name][eval_names[task]]
                row.metrics[task] = {m: v["value"] for m, v in s.metrics.items()}
                if s.error:
                    row.errors.append(f"{task}: {s.error}")
            if has_mmlu:
                row.scores[MMLU] = _value(scores, name, MMLU, "acc")
                row.stderr[MMLU] = _value(scores, name, MMLU, "acc", "stderr")
                if scores[name][MMLU].error:
                    row.errors.append(f"mmlu: {scores[name][MMLU].error}")
        mine = [g for g in results if g.candidate == name]
        row.gates = [GateOutcome.of(g, _value(scores, name, g.gate.task, g.gate.metric)) for g in mine]
        row.gates_passed = sum(g.passed for g in mine)
        row.gates_total = len(mine)
        row.passed = bool(mine) and all(g.passed for g in mine) and not row.errors and entry.error is None
        if entry.kind == "merge":
            row.retention = {t: retention(row.scores.get(t), _value(scores, single_of.get(t, ""), eval_names[t], headline[t]),
                                          _value(scores, BASE, eval_names[t], headline[t])) for t in tasks if t in single_of}
            base_mmlu, mine_mmlu = _value(scores, BASE, MMLU, "acc"), row.scores.get(MMLU)
            row.mmlu_delta = None if base_mmlu is None or mine_mmlu is None else mine_mmlu - base_mmlu
        rows.append(row)
    return rows


# ---------------------------------------------------------------- the ranking

def shortfall(gate: GateOutcome) -> float:
    """How far a gate's value is from the value it needs, as a fraction of that value (0 when it
    passes, inf when it has no value). For a max_drop gate the needed value is the reference's
    score minus the allowed drop, so a miss counts in the metric, like the other gates."""
    if gate.passed:
        return 0.0
    if gate.value is None:
        return math.inf
    need, got = gate.threshold, gate.value
    if gate.kind == "max_drop":  # value is the drop: reference - score
        got = gate.score
        if got is None:
            return math.inf
        need = got + gate.value - gate.threshold
    return max(0.0, (need - got) / need) if need > 0 else math.inf


def worst_shortfall(row: Row) -> float:
    return max((shortfall(g) for g in row.gates), default=0.0)


def rank_key(row: Row) -> tuple:
    """Higher is better (see the module docstring): a merge that misses one gate by 12 % ranks
    above one that passes more gates but misses another by 28 %."""
    kept = [r for r in (row.retention or {}).values() if r is not None]
    delta = row.mmlu_delta
    return (row.usable, row.passed, -worst_shortfall(row), row.gates_passed,
            min(kept) if kept else -math.inf, delta if delta is not None else -math.inf)


def best_merge(rows: list[Row]) -> Row | None:
    merges = [r for r in rows if r.kind == "merge" and r.usable]
    return max(merges, key=rank_key) if merges else None
