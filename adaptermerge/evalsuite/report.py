"""The report files: report.json (everything), report.md (the table, for a pull request) and the charts.

`summary_rows` is the one table both report.md and the terminal show: candidates as rows, one
column per task (the headline metric with its pass/fail), retention, the MMLU delta and a verdict.
The charts (charts.py): chart.png, each task's score of each candidate (± standard error) against
the base and the task's single adapter (`score_panels`); retention.png, when retention gates were
checked, the candidates by tasks with the failed gates marked (`retention_matrix`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable

from .. import charts
from ..fileio import atomic_dir
from .runner import REFERENCE, EvalReport

MMLU = "mmlu"


def headline(report: EvalReport, task: str) -> str:
    """The metric shown for a task: the first gate's metric on it, else the task's first metric."""
    for g in report.gates:
        if g.gate.task == task and g.gate.kind != "retention":
            return g.gate.metric
    for tasks in report.scores.values():
        s = tasks.get(task)
        if s and s.metrics:
            return next(iter(s.metrics))
    return "acc" if task == MMLU else "exact_match"


def _fmt(x, digits=3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def summary_rows(report: EvalReport) -> list[dict]:
    """Per candidate: name, role, cells {task: {"text", "status"}}, retention, mmlu_delta, verdict.
    status: "pass" | "fail" | "error" | None (no gate)."""
    rows = []
    for cand in report.candidates:
        name = cand["name"]
        cells = {}
        for task in report.tasks:
            s = report.scores[name][task]
            metric = headline(report, task)
            mine = [g for g in report.gates if g.candidate == name and g.gate.task == task and g.gate.kind != "retention"]
            if s.error:
                cells[task] = {"text": "error", "status": "error"}
                continue
            m = s.metrics.get(metric, {})
            text = f"{_fmt(m.get('value'))} ±{_fmt(m.get('stderr'))}"
            status = None if not mine else ("pass" if all(g.passed for g in mine) else "fail")
            cells[task] = {"text": text, "status": status}
        retention = [g for g in report.gates if g.candidate == name and g.gate.kind == "retention"]
        ret_text = ", ".join(f"{g.gate.task} {_fmt(g.value, 2)}" for g in retention) or "-"
        ret_status = None if not retention else ("pass" if all(g.passed for g in retention) else "fail")
        delta = report.comparisons.get(name, {}).get(MMLU, {}).get(headline(report, MMLU)) if MMLU in report.tasks else None
        delta_text = "-" if not delta else f"{delta['diff']:+.3f} ±{delta['stderr']:.3f}" + (" (noise)" if delta["within_noise"] else "")
        verdict = report.verdict(name) if cand["role"] == "candidate" else cand["role"]
        rows.append({"name": name, "role": cand["role"], "cells": cells, "retention": {"text": ret_text, "status": ret_status},
                     "mmlu_delta": delta_text, "verdict": verdict})
    return rows


def to_json(report: EvalReport) -> dict:
    scores = {
        c: {t: {"metrics": s.metrics, "error": s.error, "seconds": round(s.seconds, 2), "cpu_seconds": round(s.cpu_seconds, 2),
                "examples": s.examples}
            for t, s in tasks.items()}
        for c, tasks in report.scores.items()
    }
    return {
        "passed": report.passed,
        "candidates": report.candidates,
        "tasks": report.tasks,
        "scores": scores,
        "gates": [g.to_dict() for g in report.gates],
        "comparisons_vs_base": report.comparisons,
        "errors": report.errors,
        "notes": report.notes,
        "settings": report.settings,
        "versions": report.versions,
    }


_MARK = {"pass": "✅", "fail": "❌", "error": "⚠️", None: ""}


def to_markdown(report: EvalReport, chart: str | None = "chart.png", retention: str | None = "retention.png") -> str:
    """The report as markdown; `chart` and `retention`: the charts' file names (None: no image; the
    retention chart only when retention gates were checked)."""
    rows = summary_rows(report)
    has_mmlu = MMLU in report.tasks
    head = ["candidate", *[f"{t} ({headline(report, t)})" for t in report.tasks], "retention"]
    head += ["MMLU Δ vs base"] if has_mmlu else []
    head += ["verdict"]
    lines = [f"# adaptermerge eval: {'PASS' if report.passed else 'FAIL'}", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r['cells'][t]['text']} {_MARK[r['cells'][t]['status']]}".strip() for t in report.tasks]
        line = [r["name"], *cells, f"{r['retention']['text']} {_MARK[r['retention']['status']]}".strip()]
        line += [r["mmlu_delta"]] if has_mmlu else []
        line += [r["verdict"]]
        lines.append("| " + " | ".join(line) + " |")
    lines += ["", "Scores are means over the task's items ± their standard error. Differences against the base are paired "
              "(the same items), ± their standard error; \"(noise)\" marks a difference within 1.96 standard errors of zero.", ""]
    if report.gates:
        lines += ["## Gates", "", "| candidate | gate | value | passed | detail |", "|---|---|---|---|---|"]
        for g in report.gates:
            lines.append(f"| {g.candidate} | {g.gate.describe()} | {_fmt(g.value)} | {'yes' if g.passed else '**no**'} | {g.detail} |")
        lines.append("")
    if report.errors:
        lines += ["## Errors", "", *[f"- {e}" for e in report.errors], ""]
    if retention and retention_matrix(report) is not None:
        lines += ["Retention of each candidate on each task (0 = the base, 1 = the single-task adapter); a red border "
                  "and ✗ mark a task where one of its gates failed.", "", f"![retention]({retention})", ""]
    if chart:
        lines += ["Each task's score of each candidate (± standard error) against the base (dashed) and the single-task "
                  "adapter (solid); a red cross marks a failed gate on that task.", "", f"![scores]({chart})", ""]
    lines += ["## Settings", ""]
    lines += [f"- {k}: {v}" for k, v in report.settings.items()]
    lines += [f"- {n}" for n in report.notes]
    lines += ["- candidates: " + "; ".join(f"{c['name']} ({c['kind']}, {c['role']}, {c['seconds']} s, hash {c['hash'][:12]})" for c in report.candidates)]
    lines += ["- versions: " + ", ".join(f"{k} {v}" for k, v in report.versions.items()), ""]
    return "\n".join(lines)


def _value(report: EvalReport, name: str, task: str) -> tuple[float | None, float | None]:
    """(headline value, its stderr) of a candidate on a task; (None, None) when it errored or is missing."""
    s = report.scores.get(name, {}).get(task)
    if s is None or s.error:
        return None, None
    m = s.metrics.get(headline(report, task), {})
    return charts.finite(m.get("value")), charts.finite(m.get("stderr"))


def _gated(report: EvalReport) -> list[str]:
    return [c["name"] for c in report.candidates if c["role"] == "candidate"]


def _singles(report: EvalReport) -> dict[str, str]:
    """{task: the single-task adapter's name} from the candidates' roles ("single-task adapter (task)")."""
    prefix = "single-task adapter ("
    return {c["role"][len(prefix):-1]: c["name"] for c in report.candidates if c["role"].startswith(prefix)}


def _failed(report: EvalReport, name: str, task: str) -> bool:
    return any(not g.passed for g in report.gates if g.candidate == name and g.gate.task == task)


def _threshold(report: EvalReport, task: str) -> float | None:
    """The score a candidate needs on `task` by its gate: a `min` gate's value, a `max_drop`'s reference - drop."""
    for g in report.gates:
        if g.gate.task != task or g.gate.metric != headline(report, task):
            continue
        if g.gate.kind == "min":
            return g.gate.threshold
        if g.gate.kind == "max_drop":
            ref, _ = _value(report, g.gate.reference or REFERENCE, task)
            if ref is not None:
                return ref - g.gate.threshold
    return None


def retention_matrix(report: EvalReport) -> charts.RetentionMatrix | None:
    """The candidates by the tasks with a retention gate (the gate's value); None without retention gates."""
    checked = [g for g in report.gates if g.gate.kind == "retention"]
    if not checked:
        return None
    names = [n for n in _gated(report) if any(g.candidate == n for g in checked)]
    tasks = [t for t in report.tasks if any(g.gate.task == t for g in checked)]
    value = {(g.candidate, g.gate.task): charts.finite(g.value) for g in checked}
    return charts.RetentionMatrix(names, tasks, [[value.get((n, t)) for t in tasks] for n in names],
                                  [[_failed(report, n, t) for t in tasks] for n in names])


def score_panels(report: EvalReport) -> list[charts.Panel]:
    """One panel per task: the gated candidates' headline scores ± stderr, the base and the task's
    single adapter as reference lines, the gate's threshold."""
    names = _gated(report)
    singles = _singles(report)
    panels = []
    for task in report.tasks:
        refs = []
        for label, ref in (("base", REFERENCE), ("single adapter", singles.get(task))):
            if ref is None or ref in names:
                continue
            value, stderr = _value(report, ref, task)
            if value is not None:
                refs.append(charts.Reference(label, value, stderr))
        points = [_value(report, n, task) for n in names]
        panels.append(charts.Panel("MMLU" if task == MMLU else task, headline(report, task), names,
                                   [v for v, _ in points], [e for _, e in points],
                                   [_failed(report, n, task) for n in names], refs, _threshold(report, task)))
    return panels


def write_charts(report: EvalReport, folder: Path) -> list[Path]:
    """chart.png (the score panels) and retention.png (when retention gates were checked)."""
    out = [charts.score_panels(folder / "chart.png", score_panels(report), title="adaptermerge eval: scores")]
    matrix = retention_matrix(report)
    if matrix is not None:
        out.append(charts.retention_heatmap(folder / "retention.png", matrix, title="adaptermerge eval: retention",
                                            threshold=next(g.gate.threshold for g in report.gates if g.gate.kind == "retention")))
    return out


def write_report(report: EvalReport, out: str | Path, *, force: bool = False, inputs: Iterable[str | Path] = ()) -> Path:
    """Write report.json, report.md and the charts into `out`, atomically (temp folder, then os.replace).
    `out` is never one of `inputs` (the evaluated folders), force or not."""
    with atomic_dir(out, force=force, inputs=inputs) as tmp:
        (tmp / "report.json").write_text(json.dumps(to_json(report), indent=2, default=str) + "\n")
        write_charts(report, tmp)
        (tmp / "report.md").write_text(to_markdown(report))
    return Path(out)
