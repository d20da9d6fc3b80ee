"""What an evaluation's results cache key holds besides the model and the documents: the thread
count, the batch sizes and the tasks batched together, each of which changes bfloat16 rounding."""

from __future__ import annotations

import dataclasses

from adaptermerge.evalsuite import cache, harness
from adaptermerge.evalsuite.settings import EvalSettings


def _specs():
    chat = [harness.TaskSpec(n, {}, [{"q": n}], chat=True) for n in ("a", "b")]
    return [chat[0], harness.TaskSpec("mmlu", {}, [{"q": "m"}], chat=False), chat[1]]


def test_the_key_holds_threads_batches_and_batch_mates():
    specs = _specs()
    a, mmlu = specs[0], specs[1]
    settings = EvalSettings(dtype="bfloat16", threads=1)
    key = cache.result_key("m", a, settings, specs)
    assert key == cache.result_key("m", a, dataclasses.replace(settings), list(reversed(specs)))  # order: no
    for change in ({"threads": 2}, {"batch_size": 16}, {"context_batch": 4}, {"dtype": "float32"}):
        assert cache.result_key("m", a, dataclasses.replace(settings, **change), specs) != key, change
    assert cache.result_key("m", a, settings, [a, mmlu]) != key  # "b" no longer shares a's batches
    assert cache.result_key("m", mmlu, settings, [a, mmlu]) == cache.result_key("m", mmlu, settings, specs)  # alone either way


def test_a_missing_task_is_computed_with_its_whole_group():
    specs = _specs()
    assert [s.name for s in cache.to_compute(specs, {"b"})] == ["a", "b"]
    assert [s.name for s in cache.to_compute(specs, {"mmlu"})] == ["mmlu"]
    assert cache.to_compute(specs, set()) == []


def test_a_result_reads_back_and_an_unreadable_file_is_a_miss(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTERMERGE_CACHE", str(tmp_path))
    scores = harness.TaskScores("a", metrics={"m": {"value": 0.5, "stderr": 0.1, "n": 2}}, items={"m": {"0": 1.0, "1": 0.0}})
    assert cache.read("k") is None
    cache.write("k", scores)
    assert cache.read("k").to_dict() == scores.to_dict()
    next(tmp_path.rglob("k.json")).write_text("{not json")
    assert cache.read("k") is None
