"""The demo's pure parts: retention, ranking and the sweep's points."""

from __future__ import annotations

import math

import pytest

from adaptermerge.demo import results, sweep


def test_retention_is_the_normalized_gain_and_undefined_without_gain():
    assert results.retention(0.7, 0.9, 0.5) == pytest.approx(0.5)
    assert results.retention(0.9, 0.9, 0.5) == pytest.approx(1.0)
    assert results.retention(0.6, 0.5, 0.5) is None  # the single adapter does not beat the base
    assert results.retention(None, 0.9, 0.5) is None


def _row(name, passed, gates_passed, retention, delta, error=None):
    return {"name": name, "kind": "merge", "passed": passed, "gates_passed": gates_passed, "retention": retention,
            "mmlu_delta": delta, "error": error, "errors": [], "approach": {"kind": "method", "method": "ties", "params": {"density": 0.2}}}


def test_best_merge_prefers_passing_then_worst_task_retention():
    a = _row("a", False, 6, {"domain": 1.2, "structured": 0.5, "safety": 1.0}, 0.0)
    b = _row("b", False, 6, {"domain": 0.9, "structured": 0.8, "safety": 0.9}, -0.02)
    c = _row("c", True, 8, {"domain": 0.96, "structured": 0.95, "safety": 0.97}, -0.005)
    broken = _row("d", True, 8, {}, 0.0, error="RuntimeError: boom")
    assert results.best_merge([a, b])["name"] == "b"
    assert results.best_merge([a, b, c, broken])["name"] == "c"
    assert results.best_merge([broken]) is None
    assert results.rank_key(_row("e", False, 0, {"domain": None}, None))[3] == -math.inf


def test_sweep_upweights_the_least_retained_task():
    best = _row("ties", False, 6, {"domain": 0.9, "structured": 0.4, "safety": None}, 0.0)
    points = sweep.sweep_points(best, quick=True)
    names = [p.name for p in points]
    assert len(names) == len(set(names))
    weighted = [p for p in points if p.weights != (1.0, 1.0, 1.0)]
    assert len(weighted) == 1 and weighted[0].weights == (1.0, sweep.UPWEIGHT, 1.0)
    assert weighted[0].method == "ties" and weighted[0].params == {"density": 0.2}
    assert len(sweep.sweep_points(None, quick=False)) == len(sweep.FULL_GRID)


def test_sweep_starts_with_task_arithmetic_at_the_searched_weights_when_they_moved():
    best = _row("ties", False, 6, {"domain": 0.9, "structured": 0.4, "safety": 0.8}, 0.0)
    points = sweep.sweep_points(best, quick=False, searched=(1.0, 1.2, 0.85))
    assert points[0].method == "task_arithmetic" and points[0].weights == (1.0, 1.2, 0.85)
    assert points[0].name == "sweep_task_arithmetic_w1-1.2-0.85"
    unmoved = sweep.sweep_points(best, quick=False, searched=(1.0, 1.0, 1.0))
    assert [p.name for p in unmoved] == [p.name for p in sweep.sweep_points(best, quick=False)]
