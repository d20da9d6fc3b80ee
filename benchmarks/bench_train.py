"""Training speed of one process: the same preset and steps, for one or more checkouts, run
alternately in fresh processes (so machine noise falls on each alike).

    python benchmarks/bench_train.py                                  # this checkout
    python benchmarks/bench_train.py --checkout ../before --checkout . # two checkouts side by side
    python benchmarks/bench_train.py --task structured --steps 20 --repeats 3 --json

Each run trains `--task` on the embedded base for `--steps` steps (anchors off, so only the
training loop is timed) into a temporary folder and reports the seconds per step that
training.json records over the loop, plus the final loss (the checkouts should agree on it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RUN = """
import json, sys, time
from adaptermerge.training.trainer import TrainConfig, train
steps = int(sys.argv[2])
times = []
start = time.perf_counter()
out = train(TrainConfig(task=sys.argv[3], output=sys.argv[1], max_steps=steps, anchor_fraction=0.0, threads={threads}),
            progress=lambda step, total, loss: times.append(time.perf_counter()))
t = json.loads(open(sys.argv[1] + "/training.json").read())
loop = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else float("nan")
print(json.dumps({{"seconds_per_step": loop, "wall_s": time.perf_counter() - start, "final_loss": t["loss"]["final"]}}))
"""


def run_once(checkout: Path, task: str, steps: int, threads: int | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(checkout), "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "TQDM_DISABLE": "1"}
        done = subprocess.run([sys.executable, "-c", RUN.format(threads=threads), str(Path(tmp) / "adapter"), str(steps), task],
                              capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise SystemExit(f"error: {checkout}: the training run failed:\n{done.stderr[-2000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", action="append", type=Path, help="a source tree to time (repeatable; default: this one)")
    parser.add_argument("--task", default="structured", help="training preset (default structured)")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per run (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per checkout, alternating (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the machine's)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    checkouts = [c.resolve() for c in (args.checkout or [Path(__file__).resolve().parents[1]])]
    results: dict[str, list[dict]] = {str(c): [] for c in checkouts}
    for _ in range(args.repeats):
        for c in checkouts:
            results[str(c)].append(run_once(c, args.task, args.steps, args.threads))
    rows = []
    for c, runs in results.items():
        per_step = [r["seconds_per_step"] for r in runs]
        rows.append({"checkout": c, "median_s_per_step": statistics.median(per_step), "min_s_per_step": min(per_step),
                     "final_loss": runs[0]["final_loss"], "runs": runs})
    if args.json:
        print(json.dumps({"task": args.task, "steps": args.steps, "cpus": os.cpu_count(), "rows": rows}, indent=2))
        return
    print(f"training {args.task}, {args.steps} steps, {args.repeats} runs per checkout, {os.cpu_count()} CPUs")
    print(f"{'checkout':50s} {'median s/step':>14s} {'min':>8s} {'final loss':>11s}")
    for r in rows:
        print(f"{r['checkout'][-50:]:50s} {r['median_s_per_step']:14.3f} {r['min_s_per_step']:8.3f} {r['final_loss']:11.4f}")
    if len(rows) > 1:
        print(f"ratio (last / first, median): {rows[-1]['median_s_per_step'] / rows[0]['median_s_per_step']:.3f}")


if __name__ == "__main__":
    main()
