"""The typed rows and the ranking: retention, shortfall, the nearest miss; rows from scores."""

from __future__ import annotations

import json
import math

import pytest

from adaptermerge.evalsuite import gates as gates_mod
from adaptermerge.evalsuite.harness import TaskScores
from adaptermerge.recipe import rows as R
from adaptermerge.recipe.report import plain


def test_retention_is_the_normalized_gain_and_undefined_without_gain():
    assert R.retention(0.7, 0.9, 0.5) == pytest.approx(0.5)
    assert R.retention(0.9, 0.9, 0.5) == pytest.approx(1.0)
    assert R.retention(0.6, 0.5, 0.5) is None  # the single adapter does not beat the base
    assert R.retention(None, 0.9, 0.5) is None


def _gate(kind, threshold, value, passed, task="domain", score=None):
    return R.GateOutcome(task, "m", kind, threshold, f"{task} {kind}", passed, value, score=score)


def _row(name, passed, gates_passed, retention, delta, error=None, gates=()):
    return R.Row(name, "merge", candidate=R.Candidate(name, "method", "ties", {"density": 0.2}, (1.0, 1.0, 1.0)),
                 passed=passed, gates_passed=gates_passed, retention=retention, mmlu_delta=delta, error=error, gates=list(gates))


def test_best_merge_prefers_passing_then_worst_task_retention():
    a = _row("a", False, 6, {"domain": 1.2, "structured": 0.5, "safety": 1.0}, 0.0)
    b = _row("b", False, 6, {"domain": 0.9, "structured": 0.8, "safety": 0.9}, -0.02)
    c = _row("c", True, 8, {"domain": 0.96, "structured": 0.95, "safety": 0.97}, -0.005)
    broken = _row("d", True, 8, {}, 0.0, error="RuntimeError: boom")
    assert R.best_merge([a, b]).name == "b"
    assert R.best_merge([a, b, c, broken]).name == "c"
    assert R.best_merge([broken]) is None
    assert R.rank_key(_row("e", False, 0, {"domain": None}, None))[4] == -math.inf


def test_shortfall_is_the_missing_fraction_of_what_the_gate_needs():
    assert R.shortfall(_gate("min", 0.9, 0.95, True)) == 0.0
    assert R.shortfall(_gate("min", 0.9, 0.72, False)) == pytest.approx(0.2)
    assert R.shortfall(_gate("retention", 0.95, 0.76, False)) == pytest.approx(0.2)
    # MMLU: base 0.25, merge 0.20, drop 0.05 against 0.01 allowed: it needs 0.24 and has 0.20
    assert R.shortfall(_gate("max_drop", 0.01, 0.05, False, "mmlu", score=0.20)) == pytest.approx(0.04 / 0.24)
    assert R.shortfall(_gate("min", 0.9, None, False)) == math.inf


def test_the_nearest_miss_ranks_above_more_gates_passed():
    near = _row("near", False, 3, {"domain": 0.94, "structured": 0.95, "safety": 0.92}, 0.0,
                gates=[_gate("min", 0.9, 0.79, False), _gate("retention", 0.95, 0.92, False)])
    far = _row("far", False, 5, {"domain": 0.9, "structured": 0.68, "safety": 1.05}, 0.0,
               gates=[_gate("min", 0.85, 0.65, False), _gate("retention", 0.95, 0.68, False)])
    assert R.worst_shortfall(near) == pytest.approx(0.11 / 0.9)
    assert R.best_merge([far, near]).name == "near"


def _scores(task, metric, value, n=10):
    k = round(value * n)
    return TaskScores(task, {metric: {"value": k / n, "stderr": 0.0, "n": n}}, {metric: {str(i): float(i < k) for i in range(n)}})


def test_build_rows_gates_retention_and_a_json_form():
    config = gates_mod.GateConfig(gates=[gates_mod.Gate("faq_first10", "exact_match", "min", 0.5),
                                         gates_mod.Gate("mmlu", "acc", "max_drop", 0.01)],
                                  tasks=["faq_first10", "mmlu"], retention_min=0.9)
    values = {"base": (0.1, 0.30), "faq": (0.9, 0.30), "merged": (0.7, 0.20)}
    scores = {name: {"faq_first10": _scores("faq_first10", "exact_match", f), "mmlu": _scores("mmlu", "acc", m)}
              for name, (f, m) in values.items()}
    entries = [R.Row("base", "base"), R.Row("faq", "adapter", path="/x/faq", task="faq"),
               R.Row("merged", "merge", candidate=R.Candidate("merged", "method", "ties", {"density": 0.2}, (1.0,)), path="/x/m")]
    rows = R.build_rows(entries, scores, config, {"faq": "faq_first10"}, {"faq": "exact_match"}, True)
    base, faq, merged = rows
    assert entries[2].scores == {}  # new rows: the entries are left as they were
    assert merged.scores == {"faq": pytest.approx(0.7), "mmlu": pytest.approx(0.2)}
    assert merged.retention == {"faq": pytest.approx(0.75)} and merged.mmlu_delta == pytest.approx(-0.1)
    kinds = {g.kind: g for g in merged.gates}
    assert set(kinds) == {"min", "max_drop", "retention"} and merged.gates_total == 3
    assert kinds["min"].passed and not kinds["max_drop"].passed and not kinds["retention"].passed
    assert kinds["max_drop"].score == pytest.approx(0.2) and kinds["max_drop"].value == pytest.approx(0.1)
    assert not merged.passed and merged.gates_passed == 1
    assert faq.retention is None and {g.kind for g in faq.gates} == {"min", "max_drop"}  # no retention for the single
    data = json.loads(json.dumps(plain(rows)))
    assert data[2]["candidate"]["describe"] == "method:ties (density=0.2) weights=[1.0]"
    assert data[2]["gates"][0]["rule"] == "faq_first10.exact_match >= 0.5"
    assert set(data[0]) >= {"name", "kind", "scores", "gates", "passed", "retention"}


def test_candidates_that_train_say_so():
    from adaptermerge.recipe.rows import Candidate

    healed = Candidate("regmean+heal40", "heal", "regmean", {}, (1.0, 1.0), heal=40)
    assert healed.uses_training_compute and healed.describe == "heal:regmean weights=[1.0, 1.0], then 40 heal steps; uses training compute"
    assert Candidate("sequential_training", "train", "on_top_of").describe == "train:on_top_of; uses training compute"
    plain = Candidate("ties", "method", "ties", {"density": 0.2}, (1.0, 1.0))
    assert not plain.uses_training_compute and "training" not in plain.describe
