"""Evaluate merges of the demo's adapters beyond the demo's own rows, exactly as the demo evaluates
(same tasks, MMLU sample, threads and results cache: the base and the single adapters come from the
demo's cache when it ran first). Each point is METHOD[:key=value,...]; `rank=N` sets the output
rank, `rank=full` writes an untruncated full model (merged onto the original base weights, on which
the adapter rows are evaluated too); other keys are the method's parameters.

    adaptermerge demo -o demo/ --seed 1          # trains and caches the adapters
    python benchmarks/demo_points.py OUT --seed 1 ties:rank=48 ties:rank=192 ties:rank=full
    python benchmarks/demo_points.py OUT --seed 1 dora:inner=ties dora:normalize=false

Prints each model's headline scores, retention and gates passed (and an adapter's truncation
error); writes OUT/rows.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def parse_point(text: str) -> tuple[str, str, dict]:
    """'ties:rank=48,density=0.3' -> (name, method, {rank: 48, density: 0.3}); values as JSON where they parse."""
    method, _, rest = text.partition(":")
    params = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    name = method + "".join(f"_{k}{v}" for k, v in params.items())
    return name, method, params


def main() -> None:
    from adaptermerge import load_adapter, merge, merge_to_model
    from adaptermerge.demo import plan, results
    from adaptermerge.demo.run import evaluate_entries, train_singles
    from adaptermerge.train.data import TASKS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("points", nargs="+", help="METHOD[:key=value,...]")
    ap.add_argument("--seed", type=int, default=0, help="the demo's --seed (adapters and MMLU sample)")
    ap.add_argument("--mmlu-data", default=None, help="local MMLU CSV folder (default: the demo's)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    config = plan.DemoConfig(output=args.out / "demo", seed=args.seed,
                             mmlu_data=args.mmlu_data or plan.default_mmlu_data()).checked()
    singles = train_singles(config, lambda *a, **k: None)  # the cached adapters (trained if missing)
    paths = [singles[t]["path"] for t in TASKS]
    entries = [{"name": "base", "kind": "base", "approach": None, "path": None, "error": None}]
    entries += [{"name": t, "kind": "adapter", "approach": None, "path": singles[t]["path"], "error": None} for t in TASKS]
    for name, method, params in map(parse_point, args.points):
        target = args.out / name
        started = time.perf_counter()
        adapters = [load_adapter(p) for p in paths]
        rank = params.pop("rank", None)
        if rank == "full":
            merge_to_model(adapters, target, method=method, weights=[1.0] * 3, seed=config.seed, merge_onto="original",
                           force=True, **params)
            note = "untruncated"
        else:
            merged = merge(adapters, method, [1.0] * 3, rank=rank, seed=config.seed, **params)
            merged.save(target, force=True)
            summary = merged.metadata["summary"]
            note = f"rank {summary['ranks']}, truncation error {summary['mean_rel_error']:.3f} on average, max {summary['max_rel_error']:.3f}"
        entries.append({"name": name, "kind": "merge", "approach": None, "path": target,
                        "model": "full" if rank == "full" else "adapter", "error": None})
        print(f"{name}: merged in {time.perf_counter() - started:.1f} s, {note}", flush=True)
    gate_config = plan.gate_config(config, args.out / "eval-data")
    evaluated = evaluate_entries(entries, config, gate_config, config.mmlu_data is not None, lambda *a, **k: None)
    rows = results.build_rows(entries, evaluated.scores, gate_config, {t: plan.eval_task_name(t, config) for t in TASKS},
                              config.mmlu_data is not None)
    for r in rows:
        scores, kept = r.get("scores", {}), r.get("retention") or {}
        print(f"{r['name']:<26}", " ".join(f"{t} {scores.get(t, float('nan')):.3f}" for t in (*TASKS, "mmlu")),
              " retention " + "/".join("-" if kept.get(t) is None else f"{kept[t]:.2f}" for t in TASKS) if kept else "",
              f" gates {r['gates_passed']}/{r['gates_total']}")
    (args.out / "rows.json").write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
