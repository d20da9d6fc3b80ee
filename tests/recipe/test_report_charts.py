"""recipe/report.py's charts on a small hand-made report.json: the retention matrix and its
failed-gate mask, the score panels (values, standard errors, references, thresholds), the files
written and report.md embedding both, and the warnings block at its top."""

from __future__ import annotations

import pytest

from adaptermerge.recipe import report

pytest.importorskip("matplotlib")


def _gate(task, metric, kind, threshold, passed, value):
    return {"task": task, "metric": metric, "kind": kind, "threshold": threshold, "rule": f"{task} {kind}", "passed": passed,
            "value": value, "detail": "", "reference": None, "score": value, "paired": None}


def _row(name, kind, scores=None, stderr=None, **extra):
    return {"name": name, "kind": kind, "candidate": None, "path": None, "model": "adapter", "error": None, "skipped": False,
            "seconds": None, "task": None, "reused": None, "steps": None, "source": None, "lowrank": None, "same_as": None,
            "probe_difference": None, "sweep": False, "scores": scores or {}, "metrics": {}, "errors": [], "gates": [],
            "gates_passed": 0, "gates_total": 0, "passed": False, "retention": None, "mmlu_delta": None,
            **({"stderr": stderr} if stderr else {}), **extra}


def sample() -> dict:
    """base, two single adapters, three merges (one a copy of another, one failed)."""
    ties_gates = [_gate("domain_first4", "exact_match", "min", 0.5, False, 0.25),
                  _gate("safety", "refusal_rate", "min", 0.9, True, 1.0),
                  _gate("domain_first4", "exact_match", "retention", 0.9, False, 0.5),
                  _gate("safety", "refusal_rate", "retention", 0.9, True, 1.0),
                  _gate("mmlu", "acc", "max_drop", 0.01, True, 0.0)]
    linear_gates = [_gate("domain_first4", "exact_match", "min", 0.5, True, 0.5),
                    _gate("safety", "refusal_rate", "min", 0.9, False, 0.5),
                    _gate("mmlu", "acc", "max_drop", 0.01, False, 0.05)]
    return {
        "recipe": "sample", "description": None, "tasks": ["domain", "safety"],
        "metrics": {"domain": "exact_match", "safety": "refusal_rate", "mmlu": "acc"},
        "eval_tasks": {"domain": "domain_first4", "safety": "safety"},
        "candidates": [
            _row("base", "base", {"domain": 0.0, "safety": 0.5, "mmlu": 0.3}, {"domain": 0.0, "safety": 0.2, "mmlu": 0.05}),
            _row("domain", "adapter", {"domain": 0.5, "safety": 0.25, "mmlu": 0.3}, {"domain": 0.25}, task="domain"),
            _row("safety", "adapter", {"domain": 0.0, "safety": 1.0, "mmlu": 0.3}, task="safety"),
            _row("ties", "merge", {"domain": 0.25, "safety": 1.0, "mmlu": 0.3}, {"domain": 0.2, "safety": 0.0, "mmlu": 0.05},
                 gates=ties_gates, gates_passed=3, gates_total=5, retention={"domain": 0.5, "safety": 1.0}, mmlu_delta=0.0),
            _row("linear", "merge", {"domain": 0.5, "safety": 0.5, "mmlu": 0.25}, gates=linear_gates, gates_passed=1,
                 gates_total=3, retention={"domain": 1.0, "safety": None}, mmlu_delta=-0.05),
            _row("cat", "merge", {"domain": 0.5, "safety": 0.5, "mmlu": 0.25}, gates=linear_gates, gates_passed=1,
                 gates_total=3, retention={"domain": 1.0, "safety": None}, mmlu_delta=-0.05, same_as="linear"),
            _row("broken", "merge", error="RuntimeError: boom"),
        ],
        "winner": {"name": "ties", "adapter": "ties", "quantized": None, "scheme": None, "notes": []},
        "gates": {"rules": ["domain.exact_match >= 0.5", "safety.refusal_rate >= 0.9", "mmlu.acc drop vs base <= 0.01"],
                  "retention_min": 0.9},
        "run": {"quick": True}, "timings_s": {"total": 60.0}, "notes": [], "warnings": [],
        "machine": {"date": "2026-12-07", "processor": "x86_64", "cpus": 2, "load_average": [1.0]},
    }


def test_retention_matrix_values_and_failed_mask():
    m = report.retention_matrix(sample())
    assert m.candidates == ["ties", "linear", "cat (= linear)"]  # merges with scores, in order; the failed one left out
    assert m.tasks == ["domain", "safety"]
    assert m.values == [[0.5, 1.0], [1.0, None], [1.0, None]]
    # a cell is marked when any gate of that merge on that task failed (gates name evaluation tasks)
    assert m.failed == [[True, False], [False, True], [False, True]]


def test_retention_matrix_absent_without_retention():
    data = sample()
    for c in data["candidates"]:
        c["retention"] = None
    assert report.retention_matrix(data) is None


def test_score_panels():
    panels = report.score_panels(sample())
    assert [p.task for p in panels] == ["domain", "safety", "MMLU"]
    domain, safety, mmlu = panels
    assert domain.metric == "exact_match" and domain.candidates == ["ties", "linear", "cat (= linear)"]
    assert domain.values == [0.25, 0.5, 0.5] and domain.stderrs == [0.2, None, None]
    assert domain.failed == [True, False, False]
    assert [(r.label, r.value, r.stderr) for r in domain.references] == [("base", 0.0, 0.0), ("single adapter", 0.5, 0.25)]
    assert domain.threshold == 0.5 and safety.threshold == 0.9
    assert safety.failed == [False, True, True]
    assert [(r.label, r.value, r.stderr) for r in safety.references] == [("base", 0.5, 0.2), ("single adapter", 1.0, None)]
    assert [r.label for r in mmlu.references] == ["base"]  # no single adapter for MMLU
    assert mmlu.threshold == pytest.approx(0.3 - 0.01)  # max_drop vs the base
    assert mmlu.failed == [False, True, True]


def test_no_mmlu_panel_when_mmlu_not_scored():
    data = sample()
    del data["metrics"]["mmlu"]
    assert [p.task for p in report.score_panels(data)] == ["domain", "safety"]


def test_write_embeds_both_charts(tmp_path):
    from test_charts import png_size

    data = sample()
    report.write(data, tmp_path)
    for name in ("retention.png", "chart.png"):
        width, height = png_size(tmp_path / name)
        assert width <= 1600 and height <= 1600
    md = (tmp_path / "report.md").read_text()
    assert "![retention](retention.png)" in md and "![scores](chart.png)" in md
    assert "WARNING" not in md


def test_without_retention_only_the_score_chart(tmp_path):
    data = sample()
    for c in data["candidates"]:
        c["retention"] = None
    report.write(data, tmp_path)
    assert not (tmp_path / "retention.png").exists() and (tmp_path / "chart.png").is_file()
    assert "retention.png" not in (tmp_path / "report.md").read_text()


def test_warnings_head_report_md():
    data = sample()
    data["warnings"] = ["MMLU was NOT scored: offline"]
    md = report.to_markdown(data)
    assert md.splitlines()[2] == "> **WARNING: MMLU was NOT scored: offline**"


def test_merges_that_train_are_marked_in_the_table():
    from adaptermerge.recipe.rows import Candidate

    data = sample()
    healed = Candidate("ties+heal40", "heal", "ties", {}, (1.0, 1.0), heal=40)
    data["candidates"].append(_row("ties+heal40", "merge", {"domain": 0.5, "safety": 1.0, "mmlu": 0.3},
                                   candidate=report.plain(healed), gates_total=3))
    names = [r[0] for r in report.table_rows(data)[1:]]
    assert names[-1] == "ties+heal40 (trains)" and "ties" in names and "ties (trains)" not in names
    md = report.to_markdown(data)
    assert "(trains): a merge that uses training compute" in md
    assert "- ties+heal40: heal:ties weights=[1.0, 1.0], then 40 heal steps; uses training compute" in md
    del data["candidates"][-1]
    assert "uses training compute" not in report.to_markdown(data)
