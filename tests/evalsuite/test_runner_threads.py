"""What an evaluation's results cache key holds besides the model and the documents: the thread
count, the batch sizes and the tasks batched together, each of which changes bfloat16 rounding;
and the thread count is chosen before knowing how many models are left."""

from __future__ import annotations

import dataclasses

import pytest

from adaptermerge.errors import AdapterMergeError
from adaptermerge.evalsuite import harness, runner
from adaptermerge.evalsuite.runner import EvalSettings


def _specs():
    chat = [harness.TaskSpec(n, {}, [{"q": n}], chat=True) for n in ("a", "b")]
    return [chat[0], harness.TaskSpec("mmlu", {}, [{"q": "m"}], chat=False), chat[1]]


def test_eval_threads_share_the_machine_whatever_is_left_to_do(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    assert runner.eval_threads(EvalSettings()) == 2  # two processes allowed: half each, helper or not
    assert runner.eval_threads(EvalSettings(workers=1)) == 4
    assert runner.eval_threads(EvalSettings(use_cache=False)) == 4  # no helper without the cache
    assert runner.eval_threads(EvalSettings(workers=2, use_cache=False)) == 4  # even when asked for
    assert runner.eval_threads(EvalSettings(threads=3)) == 3
    with pytest.raises(AdapterMergeError, match="threads must be a positive integer"):
        runner.eval_threads(EvalSettings(threads=0))


def test_the_key_holds_threads_batches_and_batch_mates():
    specs = _specs()
    a, mmlu = specs[0], specs[1]
    settings = EvalSettings(dtype="bfloat16", threads=1)
    key = runner.cache_key("m", a, settings, specs)
    assert key == runner.cache_key("m", a, dataclasses.replace(settings), list(reversed(specs)))  # order: no
    for change in ({"threads": 2}, {"batch_size": 16}, {"context_batch": 4}, {"dtype": "float32"}):
        assert runner.cache_key("m", a, dataclasses.replace(settings, **change), specs) != key, change
    assert runner.cache_key("m", a, settings, [a, mmlu]) != key  # "b" no longer shares a's batches
    assert runner.cache_key("m", mmlu, settings, [a, mmlu]) == runner.cache_key("m", mmlu, settings, specs)  # alone either way


def test_a_missing_task_is_computed_with_its_whole_group():
    specs = _specs()
    assert [s.name for s in runner.to_compute(specs, {"b"})] == ["a", "b"]
    assert [s.name for s in runner.to_compute(specs, {"mmlu"})] == ["mmlu"]
    assert runner.to_compute(specs, set()) == []
