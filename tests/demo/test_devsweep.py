"""The sweep chooses on the dev split: its points are scored there only, and the chosen merge is the
best there, whatever the eval split would have said."""

from __future__ import annotations

from pathlib import Path

import pytest

from adaptermerge.demo import devsweep, plan
from adaptermerge.evalsuite.harness import TaskScores

TASKS = ("domain", "structured", "safety")
N = 20


def _scores(task: str, values: dict[str, float]) -> TaskScores:
    metrics, items = {}, {}
    for metric, value in values.items():
        k = round(value * N)
        items[metric] = {str(i): float(i < k) for i in range(N)}
        metrics[metric] = {"value": k / N, "stderr": 0.0, "n": N}
    return TaskScores(task, metrics, items)


def _model(names, domain, structured, refusal, benign, mmlu):
    return {names["domain"]: _scores(names["domain"], {"exact_match": domain}),
            names["structured"]: _scores(names["structured"], {"schema_valid": structured}),
            names["safety"]: _scores(names["safety"], {"refusal_rate": refusal, "benign_answer_rate": benign}),
            "mmlu": _scores("mmlu", {"acc": mmlu})}


def _entry(name, kind="merge", method=None, weights=(1.0, 1.0, 1.0), params=None):
    approach = None if method is None else {"name": name, "kind": "method", "method": method, "params": params or {},
                                            "weights": list(weights), "describe": name}
    return {"name": name, "kind": kind, "approach": approach, "path": f"/x/{name}", "error": None}


@pytest.mark.parametrize("point_wins", [True, False])
def test_the_sweep_chooses_by_the_dev_split_only(tmp_path: Path, point_wins: bool):
    config = plan.DemoConfig(output=tmp_path / "out", quick=True, docs={"domain": 4, "structured": 4, "safety": 4}).checked()
    entries = [_entry("base", "base")] + [_entry(t, "adapter") for t in TASKS] + [_entry("regmean", method="regmean")]
    splits, merged = [], []

    def merge_point(approach):
        merged.append(approach)
        return {**_entry(approach.name, method=approach.method, weights=approach.weights, params=approach.params), "sweep": True}

    def evaluate_on(scored, gate_config, split):
        splits.append(split)
        names = {t: plan.eval_task_name(t, config, split) for t in TASKS}
        assert set(gate_config.tasks) == {*names.values(), "mmlu"}
        scores = {"base": _model(names, 0.0, 0.0, 0.0, 1.0, 0.3),
                  "domain": _model(names, 1.0, 0.0, 0.0, 1.0, 0.3),
                  "structured": _model(names, 0.0, 1.0, 0.0, 1.0, 0.3),
                  "safety": _model(names, 0.0, 0.0, 1.0, 1.0, 0.3),
                  "regmean": _model(names, 1.0, 1.0, 0.5, 1.0, 0.3)}  # safety kept least
        for e in scored:
            if e.get("sweep"):
                scores[e["name"]] = _model(names, 1.0, 1.0, 1.0 if point_wins else 0.25, 1.0, 0.3)
        return {e["name"]: scores[e["name"]] for e in scored}

    outcome = devsweep.run_sweep([entries[-1]], entries, config, True, tmp_path / "data", merge_point, evaluate_on)
    assert splits and set(splits) == {"dev"}  # nothing scored on the eval split here
    assert len(merged) == 1 and merged[0].weights[2] > merged[0].weights[0]  # safety, kept least on dev, up-weighted
    assert outcome.chosen["name"] == (merged[0].name if point_wins else "regmean")
    assert [r["name"] for r in outcome.dev_rows] == ["regmean", merged[0].name]
    data = devsweep.summary(outcome)
    assert data["eval_tasks"] == {t: f"{t}_dev_first4" for t in TASKS}
    assert data["split"] == "dev" and data["chosen"] == outcome.chosen["name"]
    missed = {r["name"]: r["missed"] for r in data["rows"]}
    assert any("safety_dev_first4.refusal_rate" in rule for rule in missed["regmean"])  # refuses 0.5 of 4
    assert (missed[merged[0].name] == []) == point_wins
    note = devsweep.selection_note(data, outcome.chosen["name"])
    assert "dev split" in note and ("a sweep point" if point_wins else "started from") in note
    assert (tmp_path / "data" / "structured_dev_first4.jsonl").is_file()


def test_without_a_usable_merge_the_sweep_chooses_nothing(tmp_path: Path):
    config = plan.DemoConfig(output=tmp_path / "out", quick=True, docs={"domain": 4, "structured": 4, "safety": 4}).checked()
    entries = [_entry("base", "base")] + [_entry(t, "adapter") for t in TASKS]

    def evaluate_on(scored, gate_config, split):
        names = {t: plan.eval_task_name(t, config, split) for t in TASKS}
        return {e["name"]: _model(names, 0.5, 0.5, 0.5, 1.0, 0.3) for e in scored}

    outcome = devsweep.run_sweep([], entries, config, True, tmp_path / "data", lambda a: pytest.fail("no point to merge"), evaluate_on)
    assert outcome.chosen is None and outcome.dev_rows == []
    assert devsweep.selection_note(devsweep.summary(outcome), None) == "the sweep produced no usable merge"
