"""evalsuite/report.py's charts on a small hand-made EvalReport: the score panels (the gated
candidates, the base and single adapters as references, thresholds), the retention matrix from the
retention gates, and the files written with report.md embedding them."""

from __future__ import annotations

import json

import pytest

from adaptermerge.evalsuite import gates as gates_mod
from adaptermerge.evalsuite import report as report_mod
from adaptermerge.evalsuite.harness import TaskScores
from adaptermerge.evalsuite.runner import EvalReport

pytest.importorskip("matplotlib")


def _scores(task, metric, value, stderr, error=None):
    return TaskScores(task, metrics={} if error else {metric: {"value": value, "stderr": stderr, "n": 8}}, error=error)


def _cand(name, role):
    return {"name": name, "kind": "adapter", "path": None, "base": None, "task": None, "role": role, "hash": "0" * 64,
            "seconds": 1.0, "cached": []}


def sample(retention: bool = True) -> EvalReport:
    tasks = ["domain", "mmlu"]
    values = {"base": (0.0, 0.0, 0.3, 0.05), "domain": (0.5, 0.2, 0.3, 0.05), "merged": (0.25, 0.15, 0.2, 0.05),
              "other": (None, None, 0.32, 0.05)}
    scores = {}
    for name, (d, de, m, me) in values.items():
        scores[name] = {"domain": _scores("domain", "exact_match", d, de, error="boom" if d is None else None),
                        "mmlu": _scores("mmlu", "acc", m, me)}
    g_min = gates_mod.Gate("domain", "exact_match", "min", 0.4)
    g_drop = gates_mod.Gate("mmlu", "acc", "max_drop", 0.01)
    g_ret = gates_mod.Gate("domain", "exact_match", "retention", 0.9)
    results = [gates_mod.GateResult(g_min, "merged", False, 0.25), gates_mod.GateResult(g_drop, "merged", False, 0.1),
               gates_mod.GateResult(g_min, "other", False, None), gates_mod.GateResult(g_drop, "other", True, -0.02)]
    if retention:
        results += [gates_mod.GateResult(g_ret, "merged", False, 0.5), gates_mod.GateResult(g_ret, "other", False, None)]
    cands = [_cand("base", "reference"), _cand("domain", "single-task adapter (domain)"), _cand("merged", "candidate"),
             _cand("other", "candidate")]
    return EvalReport(candidates=cands, tasks=tasks, scores=scores, gates=results, comparisons={}, settings={}, versions={})


def test_score_panels():
    domain, mmlu = report_mod.score_panels(sample())
    assert domain.task == "domain" and domain.metric == "exact_match" and mmlu.task == "MMLU"
    assert domain.candidates == ["merged", "other"]
    assert domain.values == [0.25, None] and domain.stderrs == [0.15, None]  # an errored task has no score
    assert domain.failed == [True, True] and mmlu.failed == [True, False]
    assert [(r.label, r.value, r.stderr) for r in domain.references] == [("base", 0.0, 0.0), ("single adapter", 0.5, 0.2)]
    assert [r.label for r in mmlu.references] == ["base"]
    assert domain.threshold == 0.4 and mmlu.threshold == pytest.approx(0.29)


def test_retention_matrix():
    m = report_mod.retention_matrix(sample())
    assert m.candidates == ["merged", "other"] and m.tasks == ["domain"]
    assert m.values == [[0.5], [None]] and m.failed == [[True], [True]]
    assert report_mod.retention_matrix(sample(retention=False)) is None


def test_write_report_charts(tmp_path):
    from test_charts import png_size

    out = report_mod.write_report(sample(), tmp_path / "report")
    for name in ("chart.png", "retention.png"):
        width, height = png_size(out / name)
        assert width <= 1600 and height <= 1600
    md = (out / "report.md").read_text()
    assert "![scores](chart.png)" in md and "![retention](retention.png)" in md
    json.loads((out / "report.json").read_text())

    out = report_mod.write_report(sample(retention=False), tmp_path / "plain")
    assert not (out / "retention.png").exists() and "retention.png" not in (out / "report.md").read_text()
