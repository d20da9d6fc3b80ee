"""Does the output rank cost the sparse merges in the demo? TIES and DARE-TIES of the demo's three
adapters at output rank 48, 192 and untruncated (a full model merged onto the original base
weights, as the adapter rows are evaluated on them), evaluated exactly as `adaptermerge demo`
evaluates (same tasks, MMLU sample, threads and results cache, so the base and the single adapters
come from the demo's cache when it ran first).

    adaptermerge demo -o demo/ --seed 1                  # trains and caches the adapters
    python benchmarks/demo_output_rank.py OUT --seed 1   # then this

Prints each model's headline scores, retention and gates passed, and the truncation's relative
error per adapter output; writes OUT/rows.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

POINTS = [(method, rank) for method in ("ties", "dare_ties") for rank in (48, 192, None)]  # None: untruncated


def main() -> None:
    from adaptermerge import load_adapter, merge, merge_to_model
    from adaptermerge.demo import plan, results
    from adaptermerge.demo.run import evaluate_entries, train_singles
    from adaptermerge.train.data import TASKS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
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
    for method, rank in POINTS:
        name = f"{method}_rank{rank or '_full'}"
        target = args.out / name
        started = time.perf_counter()
        adapters = [load_adapter(p) for p in paths]
        if rank is None:
            merge_to_model(adapters, target, method=method, weights=[1.0] * 3, seed=config.seed, merge_onto="original", force=True)
            note = "untruncated"
        else:
            merge(adapters, method, [1.0] * 3, rank=rank, seed=config.seed).save(target, force=True)
            errors = [m["rel_error"] for m in json.loads((target / "adaptermerge.json").read_text())["modules"].values()]
            note = f"truncation error {sum(errors) / len(errors):.3f} on average, max {max(errors):.3f}"
        entries.append({"name": name, "kind": "merge", "approach": None, "path": target,
                        "model": "full" if rank is None else "adapter", "error": None})
        print(f"{name}: merged in {time.perf_counter() - started:.1f} s, {note}", flush=True)
    gate_config = plan.gate_config(config, args.out / "eval-data")
    evaluated = evaluate_entries(entries, config, gate_config, config.mmlu_data is not None, lambda *a, **k: None)
    rows = results.build_rows(entries, evaluated.scores, gate_config, {t: plan.eval_task_name(t, config) for t in TASKS},
                              config.mmlu_data is not None)
    for r in rows:
        scores, kept = r.get("scores", {}), r.get("retention") or {}
        print(f"{r['name']:<22}", " ".join(f"{t} {scores.get(t, float('nan')):.3f}" for t in (*TASKS, "mmlu")),
              " retention " + "/".join("-" if kept.get(t) is None else f"{kept[t]:.2f}" for t in TASKS) if kept else "",
              f" gates {r['gates_passed']}/{r['gates_total']}")
    (args.out / "rows.json").write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
