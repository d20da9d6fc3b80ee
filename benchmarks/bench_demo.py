"""The full demo from a fresh clone with the README's command, timed stage by stage.

    python benchmarks/bench_demo.py                       # this machine as it is
    python benchmarks/bench_demo.py --isa avx2 --float32  # as on a CPU without AVX-512 or native bf16
    python benchmarks/bench_demo.py --rev HEAD~3 --keep /tmp/demo-run
    python benchmarks/bench_demo.py -- --quick            # options after -- go to the demo

Clones `--rev` of this repository into a temporary folder, makes a virtual environment that sees
the installed packages (so nothing is downloaded again), and runs `bash scripts/bootstrap.sh demo`
there with an empty adaptermerge cache: the base conversion, every training, the Grams and every
evaluation are computed, as on a fresh machine. MMLU is read from $ADAPTERMERGE_MMLU_DATA (the
hub is not reachable here). Prints the wall time, the report's stage timings, the training and
evaluation seconds per entry, and one JSON line.

--float32 makes torch's bf16 probes answer no (through a sitecustomize in the environment), so
`dtype: auto` computes in float32 as on CPUs without AVX512-BF16 or AMX; --isa avx2 limits
torch's, oneDNN's and MKL's kernels and the C extension to AVX2.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOAT32_SITE = """\
import torch.cpu
torch.cpu._is_avx512_bf16_supported = lambda: False
torch.cpu._is_amx_tile_supported = lambda: False
"""
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2", "ADAPTERMERGE_NATIVE": "avx2"}


def training_seconds(cache: Path) -> dict[str, tuple]:
    """Each trained adapter's (wall seconds, threads, compute dtype), from its training.json."""
    out = {}
    for record in sorted(cache.glob("adapters/*/training.json")):
        data = json.loads(record.read_text())
        out[record.parent.name] = (data.get("wall_time_s"), data.get("threads"), data.get("compute_dtype"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", default="HEAD", help="the revision to clone (default HEAD)")
    parser.add_argument("--isa", choices=["native", "avx2"], default="native")
    parser.add_argument("--float32", action="store_true", help="compute as on a CPU without native bf16")
    parser.add_argument("--keep", type=Path, help="clone here and keep it (default: a temporary folder)")
    parser.add_argument("demo_args", nargs="*", help="passed to the demo, after -- (e.g. -- --quick)")
    args = parser.parse_args()
    mmlu = os.environ.get("ADAPTERMERGE_MMLU_DATA")
    if not mmlu:
        raise SystemExit("error: set ADAPTERMERGE_MMLU_DATA to a local copy of MMLU (the hub is not used here)")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        if work.exists() and any(work.iterdir()):
            raise SystemExit(f"error: --keep {work}: exists and is not empty")
        clone, venv, site = work / "clone", work / "venv", work / "site"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        subprocess.run(["git", "-C", str(clone), "checkout", "-q", args.rev], check=True)
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
        env = {**os.environ, "PATH": f"{venv}/bin:{os.environ['PATH']}", "PYTHON": f"{venv}/bin/python",
               "ADAPTERMERGE_CACHE": str(work / "cache"), "HF_DATASETS_CACHE": str(work / "hf"), "ADAPTERMERGE_MMLU_DATA": mmlu}
        if args.float32:
            site.mkdir(parents=True)
            (site / "sitecustomize.py").write_text(FLOAT32_SITE)
            env["PYTHONPATH"] = str(site)
        if args.isa == "avx2":
            env.update(AVX2_ENV)
        start = time.perf_counter()
        with open(work / "demo.log", "w") as log:
            done = subprocess.run(["bash", "scripts/bootstrap.sh", "demo", *args.demo_args], cwd=clone, env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - start
        if done.returncode not in (0, 1):  # 1: a gate failed, the run itself completed
            raise SystemExit(f"error: the demo exited {done.returncode}; see {work / 'demo.log'}")
        report = json.loads((clone / "demo" / "report.json").read_text())
        timings = report["timings_s"]
        print(f"wall {wall / 60:.1f} min (exit {done.returncode}); isa {args.isa}; float32 {args.float32}")
        for stage, seconds in timings.items():
            print(f"  {stage:<8} {seconds / 60:6.1f} min")
        for name, (seconds, threads, dtype) in training_seconds(work / "cache").items():
            print(f"  trained {name}: {seconds} s ({threads} threads, {dtype})")
        for c in report["candidates"]:
            if c.get("seconds") is not None:
                print(f"  merge {c['name']}: {c['seconds']} s{' (same as ' + c['same_as'] + ')' if c.get('same_as') else ''}")
        print(json.dumps({"wall_s": round(wall, 1), "timings_s": timings, "isa": args.isa, "float32": args.float32,
                          "rev": args.rev, "machine": report.get("machine")}))


if __name__ == "__main__":
    main()
