"""The sweep chooses on the dev split: its points are scored there only, and the chosen merge is the
best there, whatever the eval split would have said; the sweep's points."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from support import fake_scores
from adaptermerge.evalsuite.harness import TaskScores
from adaptermerge.recipe import example_path, load_recipe, select
from adaptermerge.recipe import tasks as tasks_mod
from adaptermerge.recipe.rows import Candidate, Row

TASKS = ("domain", "structured", "safety")
N = 20
DOCS = {"domain": 4, "structured": 4, "safety": 4}


def _scores(task: str, values: dict[str, float]) -> TaskScores:
    return fake_scores(task, values, N)


def _model(names, domain, structured, refusal, benign, mmlu):
    return {names["domain"]: _scores(names["domain"], {"exact_match": domain}),
            names["structured"]: _scores(names["structured"], {"schema_valid": structured}),
            names["safety"]: _scores(names["safety"], {"refusal_rate": refusal, "benign_answer_rate": benign}),
            "mmlu": _scores("mmlu", {"acc": mmlu})}


def _entry(name, kind="merge", method=None, weights=(1.0, 1.0, 1.0), params=None, task=None):
    candidate = None if method is None else Candidate(name, "method", method, params or {}, tuple(weights))
    return Row(name, kind, candidate=candidate, path=Path(f"/x/{name}"), task=task)


def _method_row(name, method, retention, params=None):
    return Row(name, "merge", candidate=Candidate(name, "method", method, params or {}, (1.0, 1.0, 1.0)), retention=retention)


@pytest.fixture
def recipe():
    return load_recipe(example_path())


@pytest.mark.parametrize("point_wins", [True, False])
def test_the_sweep_chooses_by_the_dev_split_only(tmp_path: Path, recipe, point_wins: bool):
    entries = [_entry("base", "base")] + [_entry(t, "adapter", task=t) for t in TASKS] + [_entry("regmean", method="regmean")]
    splits, merged = [], []

    def merge_point(candidate):
        merged.append(candidate)
        return replace(_entry(candidate.name, method=candidate.method, weights=candidate.weights, params=candidate.params), sweep=True)

    def evaluate_on(scored, gate_config, split):
        splits.append(split)
        names = tasks_mod.eval_names(recipe, DOCS, split)
        assert set(gate_config.tasks) == {*names.values(), "mmlu"}
        scores = {"base": _model(names, 0.0, 0.0, 0.0, 1.0, 0.3),
                  "domain": _model(names, 1.0, 0.0, 0.0, 1.0, 0.3),
                  "structured": _model(names, 0.0, 1.0, 0.0, 1.0, 0.3),
                  "safety": _model(names, 0.0, 0.0, 1.0, 1.0, 0.3),
                  "regmean": _model(names, 1.0, 1.0, 0.5, 1.0, 0.3)}  # safety kept least
        for e in scored:
            if e.sweep:
                scores[e.name] = _model(names, 1.0, 1.0, 1.0 if point_wins else 0.25, 1.0, 0.3)
        return {e.name: scores[e.name] for e in scored}

    outcome = select.run_sweep([entries[-1]], entries, recipe, DOCS, True, tmp_path / "data", merge_point, evaluate_on, quick=True)
    assert splits and set(splits) == {"dev"}  # nothing scored on the eval split here
    assert len(merged) == 1 and merged[0].weights[2] > merged[0].weights[0]  # safety, kept least on dev, up-weighted
    assert outcome.chosen.name == (merged[0].name if point_wins else "regmean")
    assert [r.name for r in outcome.rows] == ["regmean", merged[0].name]
    data = outcome.summary()
    assert data["eval_tasks"] == {t: f"{t}_dev_first4" for t in TASKS}
    assert data["split"] == "dev" and data["chosen"] == outcome.chosen.name
    missed = {r.name: r.missed for r in data["rows"]}
    assert any("safety_dev_first4.refusal_rate" in rule for rule in missed["regmean"])  # refuses 0.5 of 4
    assert (missed[merged[0].name] == []) == point_wins
    note = select.selection_note(data, outcome.chosen.name)
    assert "dev split" in note and ("a sweep point" if point_wins else "started from") in note
    assert (tmp_path / "data" / "structured_dev_first4.jsonl").is_file()


def test_without_a_usable_merge_the_sweep_chooses_nothing(tmp_path: Path, recipe):
    entries = [_entry("base", "base")] + [_entry(t, "adapter", task=t) for t in TASKS]

    def evaluate_on(scored, gate_config, split):
        names = tasks_mod.eval_names(recipe, DOCS, split)
        return {e.name: _model(names, 0.5, 0.5, 0.5, 1.0, 0.3) for e in scored}

    outcome = select.run_sweep([], entries, recipe, DOCS, True, tmp_path / "data", lambda c: pytest.fail("no point to merge"),
                               evaluate_on, quick=True)
    assert outcome.chosen is None and outcome.rows == []
    assert select.selection_note(outcome.summary(), None) == "the sweep produced no usable merge"


def test_sweep_upweights_the_adapters_of_the_least_retained_task():
    best = _method_row("ties", "ties", {"domain": 0.9, "structured": 0.4, "safety": None}, {"density": 0.2})
    points = select.sweep_points(best, True, list(TASKS))
    names = [p.name for p in points]
    assert len(names) == len(set(names))
    weighted = [p for p in points if p.weights != (1.0, 1.0, 1.0)]
    assert len(weighted) == 1 and weighted[0].weights == (1.0, select.UPWEIGHT, 1.0)
    assert weighted[0].method == "ties" and weighted[0].params == {"density": 0.2}
    assert len(select.sweep_points(None, False, list(TASKS))) == len(select.FULL_GRID)
    # Adapters in another order, two of them for one task: the weights follow the adapters.
    two = select.sweep_points(best, True, ["structured", "domain", "structured"])
    assert [p.weights for p in two] == [(select.UPWEIGHT, 1.0, select.UPWEIGHT)]


def test_sweep_moves_a_method_with_a_near_point_there_and_keeps_its_settings():
    best = _method_row("regmean", "regmean", {"domain": 0.94, "structured": 0.95, "safety": 0.92}, {"calib_size": 32})
    points = select.sweep_points(best, False, list(TASKS))
    near = points[0]
    assert near.method == "regmean" and near.weights == (1.0, 1.0, 1.0)
    assert near.params == {"calib_size": 32, **select.NEAR_POINTS["regmean"]}
    assert near.name == "sweep_regmean_refine-1"
    factor, moved = select.UPWEIGHT_POINTS["regmean"]
    assert points[1].weights == (1.0, 1.0, factor) and points[1].params == {"calib_size": 32, **moved}
    assert points[1].name == "sweep_regmean_calib_size-32_refine-1_w1-1-2"
    # a method without a near point gets the fallback grid
    assert select.sweep_points(_method_row("ties", "ties", {"domain": 0.9}), False, list(TASKS))[0].method == "task_arithmetic"


def test_sweep_starts_with_task_arithmetic_at_the_searched_weights_when_they_moved():
    best = _method_row("ties", "ties", {"domain": 0.9, "structured": 0.4, "safety": 0.8})
    points = select.sweep_points(best, False, list(TASKS), searched=(1.0, 1.2, 0.85))
    assert points[0].method == "task_arithmetic" and points[0].weights == (1.0, 1.2, 0.85)
    assert points[0].name == "sweep_task_arithmetic_w1-1.2-0.85"
    unmoved = select.sweep_points(best, False, list(TASKS), searched=(1.0, 1.0, 1.0))
    assert [p.name for p in unmoved] == [p.name for p in select.sweep_points(best, False, list(TASKS))]
