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
    assert results.rank_key(_row("e", False, 0, {"domain": None}, None))[4] == -math.inf


def _gate(kind, threshold, value, passed, task="domain"):
    return {"task": task, "kind": kind, "threshold": threshold, "value": value, "passed": passed}


def test_shortfall_is_the_missing_fraction_of_what_the_gate_needs():
    row = {"scores": {"mmlu": 0.20}}
    assert results.shortfall(_gate("min", 0.9, 0.95, True), row) == 0.0
    assert results.shortfall(_gate("min", 0.9, 0.72, False), row) == pytest.approx(0.2)
    assert results.shortfall(_gate("retention", 0.95, 0.76, False), row) == pytest.approx(0.2)
    # MMLU: base 0.25, merge 0.20, drop 0.05 against 0.01 allowed: it needs 0.24 and has 0.20
    assert results.shortfall(_gate("max_drop", 0.01, 0.05, False, "mmlu"), row) == pytest.approx(0.04 / 0.24)
    assert results.shortfall(_gate("min", 0.9, None, False), row) == math.inf


def test_the_nearest_miss_ranks_above_more_gates_passed():
    near = {**_row("near", False, 3, {"domain": 0.94, "structured": 0.95, "safety": 0.92}, 0.0),
            "gates": [_gate("min", 0.9, 0.79, False), _gate("retention", 0.95, 0.92, False)]}
    far = {**_row("far", False, 5, {"domain": 0.9, "structured": 0.68, "safety": 1.05}, 0.0),
           "gates": [_gate("min", 0.85, 0.65, False), _gate("retention", 0.95, 0.68, False)]}
    assert results.worst_shortfall(near) == pytest.approx(0.11 / 0.9)
    assert results.best_merge([far, near])["name"] == "near"


def test_sweep_upweights_the_least_retained_task():
    best = _row("ties", False, 6, {"domain": 0.9, "structured": 0.4, "safety": None}, 0.0)
    points = sweep.sweep_points(best, quick=True)
    names = [p.name for p in points]
    assert len(names) == len(set(names))
    weighted = [p for p in points if p.weights != (1.0, 1.0, 1.0)]
    assert len(weighted) == 1 and weighted[0].weights == (1.0, sweep.UPWEIGHT, 1.0)
    assert weighted[0].method == "ties" and weighted[0].params == {"density": 0.2}
    assert len(sweep.sweep_points(None, quick=False)) == len(sweep.FULL_GRID)


def test_sweep_moves_a_method_with_a_near_point_there_and_keeps_its_settings():
    best = {**_row("regmean", False, 3, {"domain": 0.94, "structured": 0.95, "safety": 0.92}, 0.0),
            "approach": {"kind": "method", "method": "regmean", "params": {"calib_size": 32}}}
    points = sweep.sweep_points(best, quick=False)
    near = points[0]
    assert near.method == "regmean" and near.weights == (1.0, 1.0, 1.0)
    assert near.params == {"calib_size": 32, **sweep.NEAR_POINTS["regmean"]}
    assert near.name == "sweep_regmean_refine-1"
    factor, moved = sweep.UPWEIGHT_POINTS["regmean"]
    assert points[1].weights == (1.0, 1.0, factor) and points[1].params == {"calib_size": 32, **moved}
    assert points[1].name == "sweep_regmean_calib_size-32_refine-1_w1-1-2"
    # a method without a near point gets the fallback grid
    assert [p.method for p in sweep.sweep_points(_row("ties", False, 6, {"domain": 0.9}, 0.0), quick=False)][0] == "task_arithmetic"


def test_sweep_starts_with_task_arithmetic_at_the_searched_weights_when_they_moved():
    best = _row("ties", False, 6, {"domain": 0.9, "structured": 0.4, "safety": 0.8}, 0.0)
    points = sweep.sweep_points(best, quick=False, searched=(1.0, 1.2, 0.85))
    assert points[0].method == "task_arithmetic" and points[0].weights == (1.0, 1.2, 0.85)
    assert points[0].name == "sweep_task_arithmetic_w1-1.2-0.85"
    unmoved = sweep.sweep_points(best, quick=False, searched=(1.0, 1.0, 1.0))
    assert [p.name for p in unmoved] == [p.name for p in sweep.sweep_points(best, quick=False)]
