"""Evaluation spread over a launcher's processes (torchrun, which `accelerate launch` runs): the
candidates are shared round-robin, the scores exchanged, and the report is the one process's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from adaptermerge.evalsuite.spread import World, world


def test_candidates_are_dealt_round_robin(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert world() == World(0, 1) and all(World().mine(i) for i in range(5))
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "1")
    assert world() == World(1, 3)
    assert [i for i in range(8) if world().mine(i)] == [1, 4, 7]
    assert sorted(i for r in range(3) for i in range(8) if World(r, 3).mine(i)) == list(range(8))


def test_two_processes_give_the_report_one_process_gives(tiny_model_dir, tiny_adapter_dir, mmlu_dir, tmp_path):
    args = ["eval", str(tiny_adapter_dir), "--base", str(tiny_model_dir), "--tasks", "domain,mmlu", "--mmlu-data", str(mmlu_dir),
            "--mmlu-limit", "1", "--threads", "1", "--dtype", "float32", "--batch-size", "64"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "adaptermerge", *args, "--workers", "1", "-o", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=600, env={**env, "ADAPTERMERGE_CACHE": str(tmp_path / "c1")})
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "adaptermerge", *args,
                          "-o", str(tmp_path / "two")], capture_output=True, text=True, timeout=600,
                         env={**env, "ADAPTERMERGE_CACHE": str(tmp_path / "c2")})
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("report ->") == 1  # the first process reports and writes
    reports = {name: json.loads((tmp_path / name / "report.json").read_text()) for name in ("one", "two")}
    def figures(report):  # everything but the timings
        return {name: {task: {k: v for k, v in r.items() if k not in ("seconds", "cpu_seconds")} for task, r in by_task.items()}
                for name, by_task in report["scores"].items()}

    assert figures(reports["one"]) == figures(reports["two"])
    assert reports["two"]["scores"]["domain"]["domain"]["metrics"]  # scored, not empty
    # each process evaluated one model, from scratch (nothing came from a cache)
    assert [c["cached"] for c in reports["two"]["candidates"]] == [[], []]
