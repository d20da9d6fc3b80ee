"""Training a recipe's preset adapters side by side (recipe/adapters.ensure_adapters) on the tiny model:
the same weights as one after the other, the cache reused, a failure in a training process raised."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from adaptermerge.recipe import adapters as A
from adaptermerge.recipe.schema import QuickOptions
from adaptermerge.errors import AdapterMergeError

TASKS = ("domain", "safety")


def _configs(base) -> dict:
    return {t: A.choose_config(t, base=str(base), seed=0, quick=QuickOptions(), steps=2) for t in TASKS}


def test_side_by_side_gives_the_weights_of_one_by_one_and_reuses_the_cache(tiny_base, tmp_path, monkeypatch):
    trained, seen = {}, {}
    for workers in (1, 2):
        monkeypatch.setenv("ADAPTERMERGE_CACHE", str(tmp_path / f"cache{workers}"))
        seen[workers] = []
        trained[workers] = A.ensure_adapters(_configs(tiny_base), lambda *a, w=workers: seen[workers].append(a), workers=workers)
        assert list(trained[workers]) == list(TASKS)
        assert not any(reused for _, reused in trained[workers].values())
    for workers in (1, 2):  # every step of every task reported, from the processes too
        assert sorted((t, s) for t, s, _, _ in seen[workers]) == [(t, s) for t in TASKS for s in (1, 2)]
    for task in TASKS:
        one = load_file(trained[1][task][0] / "adapter_model.safetensors")
        two = load_file(trained[2][task][0] / "adapter_model.safetensors")
        assert one.keys() == two.keys()
        # Both ran on one torch thread (the suite's), so the floats agree exactly.
        assert all(torch.equal(one[k], two[k]) for k in one), task
    again = A.ensure_adapters(_configs(tiny_base), workers=2)
    assert {t: (p, r) for t, (p, r) in again.items()} == {t: (trained[2][t][0], True) for t in TASKS}


def test_a_failure_in_a_training_process_is_raised_with_its_message(tiny_base, tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTERMERGE_CACHE", str(tmp_path / "cache"))
    configs = _configs(tiny_base)
    configs["safety"] = replace(configs["safety"], targets=("no_such_proj",))
    with pytest.raises(AdapterMergeError, match="no_such_proj"):
        A.ensure_adapters(configs, workers=2)
    assert not any((tmp_path / "cache" / "adapters").glob("safety-*/adapter_config.json"))


def test_workers_never_exceed_the_runs_and_short_runs_go_one_by_one(monkeypatch):
    long, short = A.MIN_SIDE_BY_SIDE_TOKENS, A.MIN_SIDE_BY_SIDE_TOKENS - 1
    assert A.train_workers([]) == 1 and A.train_workers([long], 2) == 1
    assert A.train_workers([long] * 3, 2) == 2 and A.train_workers([long] * 3, 1) == 1
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert A.train_workers([10 * long, long]) == 2
    assert A.train_workers([10 * long, short, short]) == 1  # only one run is worth a process
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert A.train_workers([long, long]) == 1


def test_the_presets_train_side_by_side_and_quick_runs_do_not():
    estimates = {quick: [A._work_estimate(A.train_config(t, base=None, seed=0, quick=QuickOptions() if quick else None)) for t in ("domain", "structured", "safety")]
                 for quick in (False, True)}
    assert sorted(estimates[False])[-2] >= A.MIN_SIDE_BY_SIDE_TOKENS > sorted(estimates[True])[-2]


def test_no_more_training_processes_than_the_configs_threads_allow(monkeypatch, tmp_path):
    """Runs that each take every thread train one after another even when two workers are asked
    for: side by side they would share the cores and change the weights' rounding."""
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setattr(A, "_lookup", lambda cfg: (tmp_path / cfg.task, False))
    monkeypatch.setattr(A, "_work_estimate", lambda cfg: 10 * A.MIN_SIDE_BY_SIDE_TOKENS)
    done = []
    monkeypatch.setattr(A, "_train_into", lambda cfg, folder, progress: done.append(cfg.threads) or folder)

    def processes(todo, n, progress):
        done.append(("processes", n))
        return {task: folder for task, (_, folder) in todo.items()}

    monkeypatch.setattr(A, "_train_processes", processes)
    configs = {t: A.train_config(t, base=None, seed=0, quick=None) for t in TASKS}
    A.ensure_adapters({t: replace(c, threads=2) for t, c in configs.items()}, workers=2)
    assert done == [2, 2]  # in this process, one at a time
    done.clear()
    A.ensure_adapters(configs, workers=2)  # the presets' own: one thread each of two
    assert done == [("processes", 2)]
