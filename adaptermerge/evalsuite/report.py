"""The report files: report.json (everything), report.md (the table, for a pull request), chart.png.

`summary_rows` is the one table both report.md and the terminal show: candidates as rows, one
column per task (the headline metric with its pass/fail), retention, the MMLU delta and a verdict.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable

from ..charts import grouped_bars
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


def to_markdown(report: EvalReport, chart: str | None = "chart.png") -> str:
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
    if chart:
        lines += [f"![scores]({chart})", ""]
    lines += ["## Settings", ""]
    lines += [f"- {k}: {v}" for k, v in report.settings.items()]
    lines += [f"- {n}" for n in report.notes]
    lines += ["- candidates: " + "; ".join(f"{c['name']} ({c['kind']}, {c['role']}, {c['seconds']} s, hash {c['hash'][:12]})" for c in report.candidates)]
    lines += ["- versions: " + ", ".join(f"{k} {v}" for k, v in report.versions.items()), ""]
    return "\n".join(lines)


def write_chart(report: EvalReport, path: Path) -> None:
    """Grouped bars (tasks x candidates, headline metric, stderr whiskers); gate thresholds as lines."""
    names = [c["name"] for c in report.candidates]
    values, errors = {}, {}
    for name in names:
        values[name], errors[name] = [], []
        for task in report.tasks:
            m = report.scores[name][task].metrics.get(headline(report, task), {})
            v, e = m.get("value"), m.get("stderr")
            values[name].append(0 if v is None or math.isnan(v) else v)
            errors[name].append(0 if e is None or math.isnan(e) else e)
    levels = []
    for g in report.gates:
        if g.gate.task not in report.tasks or g.gate.metric != headline(report, g.gate.task):
            continue
        level = None
        if g.gate.kind == "min":
            level = g.gate.threshold
        elif g.gate.kind == "max_drop":
            ref = report.scores.get(g.gate.reference or REFERENCE, {}).get(g.gate.task)
            if ref and not ref.error and g.gate.metric in ref.metrics:
                level = ref.metrics[g.gate.metric]["value"] - g.gate.threshold
        if level is not None and not math.isnan(level):
            levels.append((report.tasks.index(g.gate.task), level))
    grouped_bars(path, [f"{t}\n{headline(report, t)}" for t in report.tasks], values, errors=errors, levels=levels,
                 title="adaptermerge eval (dashed: gate thresholds)",
                 figsize=(max(6, 1.6 * len(report.tasks) * max(1, len(names) / 3)), 4))


def write_report(report: EvalReport, out: str | Path, *, force: bool = False, inputs: Iterable[str | Path] = ()) -> Path:
    """Write report.json, report.md and chart.png into `out`, atomically (temp folder, then os.replace).
    `out` is never one of `inputs` (the evaluated folders), force or not."""
    with atomic_dir(out, force=force, inputs=inputs) as tmp:
        (tmp / "report.json").write_text(json.dumps(to_json(report), indent=2, default=str) + "\n")
        write_chart(report, tmp / "chart.png")
        (tmp / "report.md").write_text(to_markdown(report))
    return Path(out)
