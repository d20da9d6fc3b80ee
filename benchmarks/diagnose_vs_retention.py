"""Does `adaptermerge diagnose` predict which task a merge loses? Spearman rank correlation between
the predicted interference P_j(M) of each merge M on each task j (docs/diagnose.md) and the
retention loss 1 - retention_j(M) the recipe measured on the eval split.

Input: a recipe report (report.json, as `adaptermerge demo` or `run` writes it) whose folder holds
the merges (merges/NAME/), and the single adapters its candidates list (their cached folders).
Counted: every evaluated merge that is a plain LoRA adapter; left out, and listed: rows that repeat
another's scores (`same_as`), DoRA merges and full-model outputs (mergekit), which have no delta
scale * B @ A to score. The dev-split sweep rows are left out (another split's retention).

    python benchmarks/diagnose_vs_retention.py /tmp/demo-full/report.json              # with calibration (Grams cached)
    python benchmarks/diagnose_vs_retention.py REPORT --data-free                      # no calibration records
    python benchmarks/diagnose_vs_retention.py REPORT --json                           # machine-readable
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: list[float], y: list[float]) -> float:
    """Pearson correlation of the ranks (nan for fewer than 3 points or a constant side)."""
    if len(x) < 3:
        return math.nan
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return cov / math.sqrt(vx * vy) if vx > 0 and vy > 0 else math.nan


def merges_of(report: dict, root: Path, include_trained: bool = False) -> tuple[list[dict], list[str]]:
    """The evaluated merges with a LoRA adapter folder and retention per task; and why others are out."""
    kept, skipped = [], []
    for c in report["candidates"]:
        if c.get("kind") != "merge" or c.get("sweep"):
            continue
        if (c.get("candidate") or {}).get("kind") == "train" and not include_trained:
            skipped.append(f"{c['name']} (trained on the tasks' data, not made from these deltas: its delta need not resemble any of them)")
            continue
        if c.get("same_as"):
            skipped.append(f"{c['name']} (the same weights as {c['same_as']})")
            continue
        folder = root / c["path"] if c.get("path") else None
        config = folder / "adapter_config.json" if folder else None
        if config is None or not config.is_file():
            skipped.append(f"{c['name']} (no adapter folder: a full model or no output)")
            continue
        if json.loads(config.read_text()).get("use_dora"):
            skipped.append(f"{c['name']} (DoRA: its magnitudes are no delta)")
            continue
        if not c.get("retention"):
            skipped.append(f"{c['name']} (no retention)")
            continue
        kept.append({"name": c["name"], "path": folder, "retention": c["retention"]})
    return kept, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="a recipe report.json (its folder holds merges/)")
    parser.add_argument("--data-free", action="store_true", help="no calibration records: Frobenius geometry only")
    parser.add_argument("--calib", default="train", help="diagnose's --calib (default: each adapter's training data)")
    parser.add_argument("--calib-size", type=int, default=64, help="records per task (regmean's default: its Grams are reused)")
    parser.add_argument("--include-trained", action="store_true", help="count the sequentially trained adapter too")
    parser.add_argument("--save", type=Path, help="write diagnose's report (JSON) here")
    parser.add_argument("--diagnostics", type=Path, help="a report --save wrote: no computing again")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)

    report = json.loads(args.report.read_text())
    root = args.report.parent
    tasks = report["tasks"]
    singles = {c["name"]: c["path"] for c in report["candidates"] if c.get("kind") == "adapter"}
    missing = [t for t in tasks if not singles.get(t)]
    if missing:
        print(f"the report lists no single adapter folder for {', '.join(missing)}", file=sys.stderr)
        return 2
    merges, skipped = merges_of(report, root, args.include_trained)
    if args.diagnostics:
        diag = json.loads(args.diagnostics.read_text())
        merges = [m for m in merges if Path(m["path"]).name in diag["merged"]]
    else:
        from adaptermerge import diagnose

        diag = diagnose([singles[t] for t in tasks], calib=None if args.data_free else args.calib, calib_size=args.calib_size,
                        merged=[m["path"] for m in merges])
        if args.save:
            args.save.write_text(json.dumps(diag))
    adapter_names = diag["adapters"]  # in the order of `tasks`
    ip = diag["inner_products"]
    index = {label: i for i, label in enumerate(ip["labels"]) if i >= len(adapter_names)}
    rows = []
    for m in merges:
        scored_as = Path(m["path"]).name
        for j, (task, name) in enumerate(zip(tasks, adapter_names)):
            retention = m["retention"].get(task)
            p = diag["predicted_interference"][name]
            if retention is None or p["merged"][scored_as] is None:
                continue
            rows.append({"merge": m["name"], "task": task, "retention": retention, "loss": 1 - retention,
                         "predicted": p["merged"][scored_as], "kept": p["kept"][scored_as], "interference": p["interference"][scored_as],
                         "dilution": 1 - p["kept"][scored_as],
                         "data_free": error(ip["frobenius"], index[scored_as], j)})
    scores = {"predicted": "P, the documented score" + (" (calibrated)" if diag["calibrated"] else " (data-free)")}
    # P's two parts alone (P^2 = (1 - kept)^2 + interference^2): which failure each task's loss follows
    scores["dilution"] = "1 - kept alone (the share of the task's own effect the merge drops)"
    scores["interference"] = "interference alone (the merged output orthogonal to the task's own)"
    if diag["calibrated"]:
        scores["data_free"] = "P with G = I (the same adapters and merges, no calibration records)"
    figures = {key: agreement(rows, key, tasks) for key in scores}
    result = {"report": str(args.report), "calibrated": diag["calibrated"], "calibration": diag["calibration"],
              "points": len(rows), "merges": [m["name"] for m in merges], "skipped": skipped, "figures": figures, "rows": rows}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{'merge':32} {'task':12} {'P':>7} {'kept':>7} {'interf.':>7} {'P free':>7} {'retention':>9}")
    for r in rows:
        print(f"{r['merge']:32} {r['task']:12} {r['predicted']:7.3f} {r['kept']:7.3f} {r['interference']:7.3f} "
              f"{r['data_free']:7.3f} {r['retention']:9.3f}")
    print(f"left out: {'; '.join(skipped) or 'none'}")
    for key, label in scores.items():
        f = figures[key]
        print(f"{label}:")
        print(f"  Spearman(score, retention loss) over {f['points']} (merge, task) pairs: {f['pooled']:.3f}")
        print("  per task, across merges: " + ", ".join(f"{t} {v:.3f}" for t, v in f["per_task"].items()))
        print(f"  the task scored to lose most is the one that lost most in {f['hits']} of {f['merges']} merges")
    return 0


def error(K: list[list[float]], merged: int, task: int) -> float:
    """sqrt((e_M - e_j)^T K (e_M - e_j) / K[j][j]): P of merge M on task j from the inner products."""
    return math.sqrt(max(K[merged][merged] - 2 * K[merged][task] + K[task][task], 0.0) / K[task][task])


def agreement(rows: list[dict], key: str, tasks: list[str]) -> dict:
    """How a score ranks the retention losses: pooled, per task across merges, and per merge the
    task it says loses most against the one that did."""
    per_task = {t: spearman([r[key] for r in rows if r["task"] == t], [r["loss"] for r in rows if r["task"] == t]) for t in tasks}
    hits = merges = 0
    for name in dict.fromkeys(r["merge"] for r in rows):
        own = [r for r in rows if r["merge"] == name]
        if len(own) == len(tasks):
            merges += 1
            hits += max(own, key=lambda r: r[key])["task"] == max(own, key=lambda r: r["loss"])["task"]
    return {"points": len(rows), "pooled": spearman([r[key] for r in rows], [r["loss"] for r in rows]), "per_task": per_task,
            "hits": hits, "merges": merges}


if __name__ == "__main__":
    sys.exit(main())
