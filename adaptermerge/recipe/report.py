"""The run's report: report.json (every row, machine-readable), report.md (the table) and chart.png.

Columns: candidate | each task's headline metric | MMLU | retention per task | MMLU delta | gates.
The markdown and the terminal table are made from report.json's data alone (`table_rows`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from ..charts import grouped_bars
from .rows import MMLU, Candidate


def plain(obj):
    """report.json's form of a value: dataclasses as dicts (a Candidate with its `describe`), paths as text."""
    if isinstance(obj, Candidate):
        return {**plain(dataclasses.asdict(obj)), "describe": obj.describe}
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
        name = c["name"] + (f" (= {c['same_as']})" if c.get("same_as") else "")
        out.append([name, *[_fmt(scores.get(t)) for t in tasks], *([_fmt(scores.get(MMLU))] if mmlu else []), ret_text,
                    *(["-" if delta is None else f"{delta:+.3f}"] if mmlu else []), gates])
    return out


def to_markdown(data: dict) -> str:
    rows = table_rows(data)
    m = data["machine"]
    winner = data["winner"]
    lines = [f"# {data['recipe']}", ""]
    if data.get("description"):
        lines += [data["description"].strip(), ""]
    lines += [f"{m['date']}, {m['processor']}, {m['cpus']} CPUs, load average {m['load_average']}; "
              f"total {data['timings_s'].get('total', 0) / 60:.1f} min ({'quick' if data['run']['quick'] else 'full'} run).", "",
              "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
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
    lines += ["", f"Gates: {', '.join(g['rules'])}{retention}.", "",
              won + ": a merge that passes every gate, else the nearest miss (the smallest shortfall of its worst gate, "
              "as a fraction of the value that gate needs), then the most gates passed.", ""]
    lines += winner_gates(data)
    if data["eval_tasks"] and any(k != v for k, v in data["eval_tasks"].items()):
        lines += ["Evaluation subsets: " + ", ".join(f"{k} -> {v}" for k, v in data["eval_tasks"].items()), ""]
    lines += ["![scores](chart.png)", "", "## Candidates", ""]
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


def write_chart(data: dict, path: Path) -> None:
    """Grouped bars: one group per task (and MMLU), one bar per candidate that has scores."""
    cands = [c for c in data["candidates"] if c.get("scores")]
    tasks = [t for t in (*data["tasks"], MMLU) if any(c["scores"].get(t) is not None for c in cands)]
    grouped_bars(path, [f"{t}\n{data['metrics'][t]}" for t in tasks],
                 {c["name"]: [c["scores"].get(t) or 0 for t in tasks] for c in cands},
                 title=data["recipe"], figsize=(max(8, 0.45 * len(cands) * len(tasks)), 4.5), legend_size=7, dpi=100)


def write(data: dict, folder: Path) -> None:
    (folder / "report.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    write_chart(data, folder / "chart.png")
    (folder / "report.md").write_text(to_markdown(data))
