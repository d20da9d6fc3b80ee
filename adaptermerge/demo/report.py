"""The demo's report: report.json (every row), report.md (the table and chart.png).

Columns: approach | domain | structured | safety | MMLU | retention per task | MMLU delta | gates.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

from ..train.data import TASKS
from .plan import HEADLINE, MMLU, MMLU_MAX_DROP, RETENTION_MIN, TASK_GATES


def _relative(path, tmp: Path) -> str | None:
    if path is None:
        return None
    path = Path(path)
    try:
        return str(path.relative_to(tmp))
    except ValueError:
        return str(path)


def to_json(rows: list[dict], winner: dict | None, *, config, timings: dict, notes: list[str], eval_names: dict,
            output: Path, tmp: Path, machine: dict) -> dict:
    candidates = []
    for row in rows:
        c = {k: v for k, v in row.items() if k not in ("path",)}
        c["path"] = _relative(row.get("path"), tmp)
        candidates.append(c)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    return {
        "candidates": candidates,
        "winner": winner,
        "targets": {"retention_min": RETENTION_MIN, "mmlu_max_drop": MMLU_MAX_DROP,
                    "task_minimums": {t: dict(g) for t, g in TASK_GATES.items()}},
        "metrics": {**HEADLINE, MMLU: "acc"},
        "eval_tasks": eval_names,
        "settings": settings,
        "timings_s": timings,
        "machine": machine,
        "notes": notes,
    }


def _fmt(x, digits=3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def table_rows(data: dict) -> list[list[str]]:
    """The table as text cells: header first. Shared by report.md and the terminal."""
    head = ["approach", *[f"{t} ({HEADLINE[t]})" for t in TASKS], "MMLU (acc)", "retention d/s/s", "MMLU Δ", "gates"]
    out = [head]
    for c in data["candidates"]:
        if c.get("error"):
            out.append([c["name"], *["-"] * (len(head) - 2), ("skipped: " if c.get("skipped") else "error: ") + c["error"].removeprefix("skipped: ")])
            continue
        scores = c.get("scores", {})
        ret = c.get("retention")
        ret_text = "/".join(_fmt(ret.get(t), 2) for t in TASKS) if ret else "-"
        delta = c.get("mmlu_delta")
        gates = f"{c['gates_passed']}/{c['gates_total']}" + (" pass" if c["passed"] else "")
        if c.get("errors"):
            gates = "error: " + "; ".join(c["errors"])[:120]
        name = c["name"] + (f" (= {c['same_as']})" if c.get("same_as") else "")
        out.append([name, *[_fmt(scores.get(t)) for t in TASKS], _fmt(scores.get(MMLU)), ret_text,
                    "-" if delta is None else f"{delta:+.3f}", gates])
    return out


def to_markdown(data: dict) -> str:
    rows = table_rows(data)
    m = data["machine"]
    winner = data["winner"]
    lines = ["# adaptermerge demo", "",
             f"{m['date']}, {m['processor']}, {m['cpus']} CPUs, load average {m['load_average']}; "
             f"total {data['timings_s'].get('total', 0) / 60:.1f} min ({'quick' if data['settings']['quick'] else 'full'} run).", "",
             "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    t = data["targets"]
    lines += ["", f"Targets: every task's preset minimum ({', '.join(f'{task} {m} >= {v}' for task, g in t['task_minimums'].items() for m, v in g.items())}), "
              f"retention >= {t['retention_min']} of each single adapter's gain over the base, MMLU drop <= {t['mmlu_max_drop']}. "
              "retention = (merge - base) / (single adapter - base) on the task's metric; '-' where the single adapter does not beat the base.",
              "", (f"Winner: **{winner['name']}** (PEFT adapter in `winner/{winner['adapter']}`, NF4 model in `winner/nf4`)" if winner else "Winner: none")
              + ": a merge that passes every gate, else the nearest miss (the smallest shortfall of its worst gate, "
              "as a fraction of the value that gate needs), then the most gates passed.", ""]
    lines += winner_gates(data)
    if data["eval_tasks"] and any(k != v for k, v in data["eval_tasks"].items()):
        lines += ["Evaluation subsets: " + ", ".join(f"{k} -> {v}" for k, v in data["eval_tasks"].items()), ""]
    lines += ["![scores](chart.png)", "", "## Approaches", ""]
    for c in data["candidates"]:
        a = c.get("approach")
        if a:
            what = a["describe"] + (f" ({c['seconds']} s)" if "seconds" in c else "") + _lowrank_text(c.get("lowrank"))
            if c.get("same_as"):
                what += (f"; the same weights as {c['same_as']} (probe difference {c['probe_difference']:.0e}), "
                         "so its scores are that row's, not a second evaluation")
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
    """The sweep's merges on the dev split, where it chose; the chosen one is marked."""
    sweep = data.get("sweep")
    if not sweep or not sweep.get("rows"):
        return []
    head = ["merge", *[f"{t} ({HEADLINE[t]})" for t in TASKS], "MMLU (acc)", "retention d/s/s", "MMLU Δ", "gates", "missed on dev"]
    lines = ["", "## The sweep, on the dev split", "",
             "Scored on the dev split (" + ", ".join(sweep["eval_tasks"].values()) + ", MMLU's dev questions), "
             "documents the table above never uses; the chosen merge (**bold**) is the only one then scored on the eval split.",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sweep["rows"]:
        scores, ret, delta = r.get("scores") or {}, r.get("retention"), r.get("mmlu_delta")
        name = f"**{r['name']}**" if r["name"] == sweep["chosen"] else r["name"]
        lines.append("| " + " | ".join([name, *[_fmt(scores.get(t)) for t in TASKS], _fmt(scores.get(MMLU)),
                                         "/".join(_fmt((ret or {}).get(t), 2) for t in TASKS) if ret else "-",
                                         "-" if delta is None else f"{delta:+.3f}",
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
    return "/".join(_fmt(point["retention"].get(t), 2) for t in TASKS)


def write_chart(data: dict, path: Path) -> None:
    """Grouped bars: one group per task (and MMLU), one bar per candidate that has scores."""
    from ..charts import grouped_bars

    cands = [c for c in data["candidates"] if c.get("scores")]
    tasks = [t for t in (*TASKS, MMLU) if any(c["scores"].get(t) is not None for c in cands)]
    grouped_bars(path, [f"{t}\n{data['metrics'][t]}" for t in tasks],
                 {c["name"]: [c["scores"].get(t) or 0 for t in tasks] for c in cands},
                 title="adaptermerge demo", figsize=(max(8, 0.45 * len(cands) * len(tasks)), 4.5), legend_size=7, dpi=100)


def write(data: dict, folder: Path) -> None:
    (folder / "report.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    write_chart(data, folder / "chart.png")
    (folder / "report.md").write_text(to_markdown(data))
