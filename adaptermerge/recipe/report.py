"""The run's report: report.json (every row, machine-readable), report.md (the table) and two charts.

Columns: candidate | each task's headline metric | MMLU | retention per task | MMLU delta | gates.
The markdown, the terminal table and the charts are made from report.json's data alone
(`table_rows`, `retention_matrix`, `score_panels`): retention.png, the merges by tasks with the
failed gates marked, and chart.png, each task's scores of the merges against the base and the
single-task adapter, with standard errors where report.json has them (a row's `stderr`).

A run across seeds (report.json's `seeds`) names its rows `<name> (seed N)` (the base is one row),
adds the choice across seeds (`ranking`: every merge at every seed on the choice split, best first)
and the chosen merge's retention per seed on the eval split with its minimum over the seeds
(`seed_rows`, also the terminal's second table); its chart is retention.png, the chosen merge at
each seed by the tasks (chart.png's references are one seed's adapters, so it is not drawn).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from .. import charts
from .rows import MMLU, Candidate


def plain(obj):
    """report.json's form of a value: dataclasses as dicts (a Candidate with its `describe`), paths as text."""
    if isinstance(obj, Candidate):
        return {**plain(dataclasses.asdict(obj)), "describe": obj.describe, "uses_training_compute": obj.uses_training_compute}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def relative_paths(rows: list[dict], tmp: Path) -> None:
    """Row paths inside the run's folder, relative to it (the folder is renamed at the end)."""
    for row in rows:
        if row.get("path"):
            try:
                row["path"] = str(Path(row["path"]).relative_to(tmp))
            except ValueError:
                pass


def _fmt(x, digits=3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _has_mmlu(data: dict) -> bool:
    return MMLU in data["metrics"]


def _initials(data: dict) -> str:
    return "/".join(t[0] for t in data["tasks"])


TRAINS = " (trains)"  # the table's mark of a merge that uses training compute


def _trains(c: dict) -> bool:
    return bool((c.get("candidate") or {}).get("uses_training_compute"))


def table_rows(data: dict) -> list[list[str]]:
    """The table as text cells: header first. Shared by report.md and the terminal."""
    tasks, mmlu = data["tasks"], _has_mmlu(data)
    head = ["candidate", *[f"{t} ({data['metrics'][t]})" for t in tasks], *(["MMLU (acc)"] if mmlu else []),
            f"retention {_initials(data)}", *(["MMLU Δ"] if mmlu else []), "gates"]
    out = [head]
    for c in data["candidates"]:
        if c.get("error"):
            out.append([c["name"], *["-"] * (len(head) - 2), ("skipped: " if c.get("skipped") else "error: ") + c["error"]])
            continue
        scores = c.get("scores", {})
        ret = c.get("retention")
        ret_text = "/".join(_fmt(ret.get(t), 2) for t in tasks) if ret else "-"
        delta = c.get("mmlu_delta")
        gates = f"{c['gates_passed']}/{c['gates_total']}" + (" pass" if c["passed"] else "")
        if c.get("errors"):
            gates = "error: " + "; ".join(c["errors"])[:120]
        name = c["name"] + (f" (= {c['same_as']})" if c.get("same_as") else "") + (TRAINS if _trains(c) else "")
        out.append([name, *[_fmt(scores.get(t)) for t in tasks], *([_fmt(scores.get(MMLU))] if mmlu else []), ret_text,
                    *(["-" if delta is None else f"{delta:+.3f}"] if mmlu else []), gates])
    return out


def to_markdown(data: dict) -> str:
    rows = table_rows(data)
    m = data["machine"]
    winner = data["winner"]
    lines = [f"# {data['recipe']}", ""]
    lines += warning_lines(data)
    if data.get("description"):
        lines += [data["description"].strip(), ""]
    lines += [f"{m['date']}, {m['processor']}, {m['cpus']} CPUs, load average {m['load_average']}; "
              f"total {data['timings_s'].get('total', 0) / 60:.1f} min ({'quick' if data['run']['quick'] else 'full'} run).", "",
              "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    if any(_trains(c) for c in data["candidates"]):
        lines += ["", f"{TRAINS.strip()}: a merge that uses training compute (sequential training, or a merge healed by "
                  "distillation on the adapters' training prompts: docs/heal.md), not a data-free merge."]
    g = data["gates"]
    retention = (f", retention >= {g['retention_min']} of each single adapter's gain over the base "
                 "(retention = (merge - base) / (single adapter - base) on the task's metric; '-' where the single "
                 "adapter does not beat the base)") if g["retention_min"] is not None else ""
    if winner:
        where = []
        if winner["adapter"]:
            where.append(f"PEFT adapter in `winner/{winner['adapter']}`")
        if winner["quantized"]:
            where.append(f"{winner['scheme'].upper()} model in `winner/{winner['quantized']}`")
        won = f"Winner: **{winner['name']}**" + (f" ({', '.join(where)})" if where else "")
    else:
        won = "Winner: none"
    rule = ("a merge that passes every gate, else the nearest miss (the smallest shortfall of its worst gate, "
            "as a fraction of the value that gate needs), then the most gates passed")
    if data.get("seeds"):
        rule = (f"the merge whose worst seed ranks best on the {data['seeds']['split']} split (each seed ranked as one run's "
                f"choice is: {rule}), made from the seed-{data['seeds']['seeds'][0]} adapters")
    lines += ["", f"Gates: {', '.join(g['rules'])}{retention}.", "", f"{won}: {rule}.", ""]
    lines += seeds_section(data)
    lines += winner_gates(data)
    if data["eval_tasks"] and any(k != v for k, v in data["eval_tasks"].items()):
        lines += ["Evaluation subsets: " + ", ".join(f"{k} -> {v}" for k, v in data["eval_tasks"].items()), ""]
    lines += chart_lines(data)
    lines += ["## Candidates", ""]
    for c in data["candidates"]:
        a = c.get("candidate")
        if a:
            what = a["describe"] + (f" ({c['seconds']} s)" if c.get("seconds") is not None else "") + _lowrank_text(c.get("lowrank"))
            if c.get("same_as"):
                what += (f"; the same weights as {c['same_as']} (probe difference {c['probe_difference']:.0e}), "
                         "so its scores are that row's, not a second evaluation")
        elif c["kind"] == "adapter" and c.get("source"):
            what = f"given adapter{' for ' + c['task'] if c.get('task') else ''}: {c['source']}"
        elif c["kind"] == "adapter":
            what = f"single-task adapter, {c['steps']} steps, {'reused from the cache' if c['reused'] else 'trained'}: {c['path']}"
        else:
            what = c["kind"]
        lines.append(f"- {c['name']}: {what}")
    lines += sweep_section(data)
    search = data.get("weight_search")
    if search:
        start, best = search["start"], search["best"]
        lines += ["", "## Weight search", "",
                  f"Task-arithmetic weights from the proxy ({search['proxy']}; {search['points']} points, "
                  f"{search['seconds']} s): proxy retention {_proxy(start)} at weights {start['weights']}, "
                  f"{_proxy(best)} at {best['weights']} (KL to the base {start['drift_kl']:.4f} -> {best['drift_kl']:.4f})."]
    lines += ["", "## Timings (s)", "", ", ".join(f"{k} {v}" for k, v in data["timings_s"].items()), ""]
    if data["notes"]:
        lines += ["## Notes", "", *[f"- {n}" for n in data["notes"]], ""]
    return "\n".join(lines)


def sweep_section(data: dict) -> list[str]:
    """The sweep's merges on the split it chose on; the chosen one is marked."""
    sweep = data.get("sweep")
    if not sweep or not sweep.get("rows"):
        return []
    tasks, mmlu = data["tasks"], _has_mmlu(data)
    head = ["merge", *[f"{t} ({data['metrics'][t]})" for t in tasks], *(["MMLU (acc)"] if mmlu else []),
            f"retention {_initials(data)}", *(["MMLU Δ"] if mmlu else []), "gates", f"missed on {sweep['split']}"]
    if sweep["split"] == "dev":
        intro = ("Scored on the dev split (" + ", ".join(sweep["eval_tasks"].values()) + (", MMLU's dev questions" if mmlu else "")
                 + "), documents the table above never uses; the chosen merge (**bold**) is the only one then scored on the eval split.")
    else:
        intro = "Scored on the eval split (no dev split for every task): the chosen merge (**bold**) is the best of these there."
    lines = ["", f"## The sweep, on the {sweep['split']} split", "", intro, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sweep["rows"]:
        scores, ret, delta = r.get("scores") or {}, r.get("retention"), r.get("mmlu_delta")
        name = f"**{r['name']}**" if r["name"] == sweep["chosen"] else r["name"]
        lines.append("| " + " | ".join([name, *[_fmt(scores.get(t)) for t in tasks], *([_fmt(scores.get(MMLU))] if mmlu else []),
                                         "/".join(_fmt((ret or {}).get(t), 2) for t in tasks) if ret else "-",
                                         *(["-" if delta is None else f"{delta:+.3f}"] if mmlu else []),
                                         f"{r['gates_passed']}/{r['gates_total']}" + (" pass" if r["passed"] else ""),
                                         "; ".join(r.get("missed") or []) or "-"]) + " |")
    for name, error in (sweep.get("errors") or {}).items():
        lines.append(f"- {name}: {error}")
    return lines


def _lowrank_text(lowrank: dict | None) -> str:
    if not lowrank or "ranks" not in lowrank:
        return ""
    ranks = "/".join(str(r) for r in lowrank["ranks"])
    if lowrank.get("all_exact"):
        return f"; exact at rank {ranks}"
    return f"; truncated to rank {ranks}, relative error {lowrank['mean_rel_error']:.3f} on average (max {lowrank['max_rel_error']:.3f})"


def seed_rows(data: dict) -> list[list[str]] | None:
    """The chosen merge on the eval split at each seed, then the minimum over the seeds, as text
    cells (header first): retention per task, the worst of them, MMLU delta, gates. None for one seed."""
    seeds = data.get("seeds")
    if not seeds or not seeds.get("eval"):
        return None
    tasks, mmlu = data["tasks"], _has_mmlu(data)
    head = ["seed", *[f"retention {t}" for t in tasks], "worst task", *(["MMLU Δ"] if mmlu else []), "gates"]
    out = [head]
    per_seed, minimum = seeds["eval"]["per_seed"], seeds["eval"]["min"]

    def cells(label: str, r: dict) -> list[str]:
        ret = r.get("retention") or {}
        delta = r.get("mmlu_delta")
        return [label, *[_fmt(ret.get(t), 2) for t in tasks], _fmt(r.get("min_retention"), 2),
                *(["-" if delta is None else f"{delta:+.3f}"] if mmlu else []),
                f"{r['gates_passed']}/{r['gates_total']}" + (" pass" if r["passed"] else "")]
    out += [cells(str(seed), r) for seed, r in per_seed.items()]
    return out + [cells("min over seeds", minimum)]


def seeds_section(data: dict) -> list[str]:
    """A run across seeds: the chosen merge per seed on the eval split, and the choice's ranking."""
    seeds = data.get("seeds")
    if not seeds:
        return []
    listed = ", ".join(map(str, seeds["seeds"]))
    lines = [f"## Across seeds {listed}", ""]
    table = seed_rows(data)
    if table:
        lines += [f"{seeds['chosen']} on the eval split, merged from each seed's adapters (retention against that seed's "
                  "single-task adapters; 'worst task' its lowest retention); the last row is the minimum over the seeds, "
                  "task by task:", "", "| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
        lines += ["| " + " | ".join(r) + " |" for r in table[1:]] + [""]
    split = seeds["split"]
    lines += [f"The choice, on the {split} split at every seed" + (" (other documents than the table's)" if split == "dev" else "")
              + f": each merge's worst seed (**bold**: the seed each merge ranks lowest at), the best of those first. "
              "Cells: gates passed, worst task retention.", "",
              "| merge | " + " | ".join(f"seed {s}" for s in seeds["seeds"]) + " | mean of worst task |",
              "|" + "---|" * (len(seeds["seeds"]) + 2)]
    for r in seeds["ranking"]:
        cells = []
        for s in seeds["seeds"]:
            one = r["per_seed"].get(str(s)) or r["per_seed"].get(s)
            if one is None:
                cells.append("-")
                continue
            text = ("error" if one["error"] else
                    f"{one['gates_passed']}/{one['gates_total']}{' pass' if one['passed'] else ''}, {_fmt(one['min_retention'], 2)}")
            cells.append(f"**{text}**" if str(s) == str(r["worst_seed"]) else text)
        kept = [v["min_retention"] for v in r["per_seed"].values() if v["min_retention"] is not None]
        name = f"**{r['name']}**" if r["name"] == seeds["chosen"] else r["name"]
        copies = {v.get("same_as") for v in r["per_seed"].values()}
        if len(copies) == 1 and None not in copies:  # the same weights as another merge at every seed
            name += f" (= {copies.pop()})"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_fmt(sum(kept) / len(kept) if kept else None, 2)} |")
    return lines + [""]


def winner_gates(data: dict) -> list[str]:
    """The winner's gates, one row each with its detail: why the nearest miss misses, in items."""
    winner = data["winner"]
    row = next((c for c in data["candidates"] if winner and c["name"] == winner["name"]), None)
    if not row or not row.get("gates"):
        return []
    lines = [f"## The winner's gates ({row['name']})", "", "| gate | value | passed | detail |", "|---|---|---|---|"]
    for g in row["gates"]:
        lines.append(f"| {g['rule']} | {_fmt(g['value'])} | {'yes' if g['passed'] else '**no**'} | {g['detail']} |")
    return lines + [""]


def _proxy(point: dict) -> str:
    return "/".join(_fmt(v, 2) for v in point["retention"].values())


def warning_lines(data: dict) -> list[str]:
    """report.json's `warnings` (MMLU not scored, ...) as a block at the top of report.md."""
    return [f"> **WARNING: {w}**" for w in data.get("warnings") or []] + ([""] if data.get("warnings") else [])


def chart_lines(data: dict) -> list[str]:
    lines = []
    if retention_matrix(data) is not None:
        which = ("the chosen merge at each seed" if data.get("seeds") else "each merge")
        lines += [f"Retention of {which} on each task (0 = the base, 1 = the single-task adapter); a red border "
                  "and ✗ mark a task where one of the merge's gates failed.", "", "![retention](retention.png)", ""]
    if data.get("seeds"):  # chart.png's references would be one seed's adapters
        return lines
    errors = " (± standard error)" if any(c.get("stderr") for c in _merges(data)) else ""
    return lines + [f"Each task's score of each merge{errors} against the base (dashed) and the single-task "
                    "adapter (solid); a red cross marks a failed gate on that task.", "", "![scores](chart.png)", ""]


def _merges(data: dict) -> list[dict]:
    """The merges with scores, in the table's order (the charts' rows)."""
    return [c for c in data["candidates"] if c["kind"] == "merge" and not c.get("error") and c.get("scores")]


def _label(c: dict) -> str:
    return c["name"] + (f" (= {c['same_as']})" if c.get("same_as") else "")


def failed_tasks(data: dict, c: dict) -> set[str]:
    """The report's tasks (and MMLU) on which a gate of row `c` failed (gates name evaluation tasks)."""
    task_of = {v: k for k, v in (data.get("eval_tasks") or {}).items()}
    return {task_of.get(g["task"], g["task"]) for g in c.get("gates") or [] if not g["passed"]}


def retention_matrix(data: dict) -> charts.RetentionMatrix | None:
    """The merges by the tasks with a retention value; None when no merge has one."""
    merges = [c for c in _merges(data) if c.get("retention")]
    tasks = [t for t in data["tasks"] if any(t in c["retention"] for c in merges)]
    if not merges or not tasks:
        return None
    failed = [failed_tasks(data, c) for c in merges]
    return charts.RetentionMatrix([_label(c) for c in merges], tasks,
                                  [[charts.finite(c["retention"].get(t)) for t in tasks] for c in merges],
                                  [[t in f for t in tasks] for f in failed])


def _threshold(data: dict, task: str, base: float | None) -> float | None:
    """The score a merge needs on `task` by its gate: a `min` gate's value, a `max_drop` vs the base's base - drop."""
    task_of = {v: k for k, v in (data.get("eval_tasks") or {}).items()}
    for c in data["candidates"]:
        for g in c.get("gates") or []:
            if task_of.get(g["task"], g["task"]) != task or g["metric"] != data["metrics"].get(task):
                continue
            if g["kind"] == "min":
                return g["threshold"]
            if g["kind"] == "max_drop" and not g.get("reference") and base is not None:
                return base - g["threshold"]
    return None


def score_panels(data: dict) -> list[charts.Panel]:
    """One panel per task (and MMLU when scored): the merges' headline scores with their standard
    errors (a row's `stderr`, when report.json has it), the base and the task's single adapter as references."""
    merges = _merges(data)
    base = next((c for c in data["candidates"] if c["kind"] == "base" and c.get("scores")), None)
    singles = {c["task"]: c for c in data["candidates"] if c["kind"] == "adapter" and c.get("task") and c.get("scores")}
    failed = [failed_tasks(data, c) for c in merges]
    panels = []
    for task in [*data["tasks"], *([MMLU] if _has_mmlu(data) else [])]:
        refs = []
        for label, row in (("base", base), ("single adapter", singles.get(task))):
            value = charts.finite((row or {}).get("scores", {}).get(task))
            if value is not None:
                refs.append(charts.Reference(label, value, charts.finite((row.get("stderr") or {}).get(task))))
        base_value = refs[0].value if refs and refs[0].label == "base" else None
        panels.append(charts.Panel(
            "MMLU" if task == MMLU else task, data["metrics"].get(task, ""), [_label(c) for c in merges],
            [charts.finite(c["scores"].get(task)) for c in merges],
            [charts.finite((c.get("stderr") or {}).get(task)) for c in merges],
            [task in f for f in failed], refs, _threshold(data, task, base_value)))
    return panels


def write_charts(data: dict, folder: Path) -> list[Path]:
    """retention.png (when any merge has a retention value) and chart.png (the score panels)."""
    out = []
    winner = (data.get("winner") or {}).get("name")
    matrix = retention_matrix(data)
    if matrix is not None:
        threshold = (data.get("gates") or {}).get("retention_min")
        out.append(charts.retention_heatmap(folder / "retention.png", matrix, title=f"{data['recipe']}: retention",
                                            threshold=threshold, highlight=winner))
    if not data.get("seeds"):
        out.append(charts.score_panels(folder / "chart.png", score_panels(data), title=f"{data['recipe']}: scores"))
    return out


def write(data: dict, folder: Path) -> None:
    (folder / "report.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    write_charts(data, folder)
    (folder / "report.md").write_text(to_markdown(data))
