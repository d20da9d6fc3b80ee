"""CLI start-up benchmark: wall time of the commands that should answer at once (target: under 1 s).

Each command runs in a fresh process, several times; the median and the fastest are printed. The
code measured is the `adaptermerge` that `python -c "import adaptermerge"` finds: set PYTHONPATH to
compare two checkouts on the same machine (the figures depend on the disk cache and the load:
compare runs made one after the other).

    python benchmarks/bench_startup.py                       # this checkout, 7 runs each
    PYTHONPATH=../main python benchmarks/bench_startup.py    # another checkout
    python benchmarks/bench_startup.py --runs 15 --json      # machine-readable
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# (label, arguments after `adaptermerge`, expected exit status)
COMMANDS = [
    ("--help", ["--help"], 0),
    ("--version", ["--version"], 0),
    ("methods", ["methods"], 0),
    ("methods --json", ["methods", "--json"], 0),
    ("ties --help", ["ties", "--help"], 0),
    ("bad usage: unknown command", ["nosuchcommand"], 2),
    ("bad usage: ties, no inputs", ["ties"], 2),
    ("bad usage: ties --density x", ["ties", "a.safetensors", "--density", "x"], 2),
    ("python -c 'import torch' (reference)", None, 0),
]


def time_once(args: list[str] | None) -> tuple[float, int]:
    command = [sys.executable, "-c", "import torch"] if args is None else [sys.executable, "-m", "adaptermerge", *args]
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    return time.perf_counter() - start, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs per command (default 7)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    where = subprocess.run([sys.executable, "-c", "import adaptermerge.cli, os; print(os.path.dirname(adaptermerge.cli.__file__))"],
                           capture_output=True, text=True).stdout.strip()
    time_once(["--help"])  # warm the disk cache
    rows = []
    for label, argv, expected in COMMANDS:
        times, codes = [], set()
        for _ in range(args.runs):
            seconds, code = time_once(argv)
            times.append(seconds)
            codes.add(code)
        rows.append({"command": label, "median_s": statistics.median(times), "min_s": min(times), "runs": args.runs,
                     "exit": sorted(codes), "expected_exit": expected})
    if args.json:
        print(json.dumps({"cli": where, "python": sys.version.split()[0], "rows": rows}, indent=2))
        return
    print(f"adaptermerge start-up ({where}, {args.runs} runs each, {os.cpu_count()} CPUs)")
    print(f"{'command':<40} {'median':>8} {'min':>8}  exit")
    for r in rows:
        flag = "" if r["exit"] == [r["expected_exit"]] else f" (expected {r['expected_exit']})"
        print(f"{r['command']:<40} {r['median_s']:>7.2f}s {r['min_s']:>7.2f}s  {','.join(map(str, r['exit']))}{flag}")


if __name__ == "__main__":
    main()
