"""The chat tasks run through one lm-eval call, with the same scores as alone; one failing task
does not take the others down, and its error names it."""

from __future__ import annotations

import json

import pytest

from adaptermerge.evalsuite import harness

QA = [("What colour is the sky on a clear day?", "blue"), ("How many legs does a spider have?", "eight"),
      ("What is the capital of France?", "Paris")]


@pytest.fixture()
def lm_and_data(tiny_model_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adaptermerge.evalsuite.fastlm import FastHFLM

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    path = tmp_path / "qa.jsonl"
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], "meta": {"answer": a}} for q, a in QA]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return FastHFLM(pretrained=model, tokenizer=tok, device="cpu", batch_size=8, progress_bars=False), path


def test_chat_tasks_share_one_call_and_score_as_alone(lm_and_data, monkeypatch):
    import lm_eval

    lm, path = lm_and_data
    specs = [harness.user_spec("qa", path, "exact_match", 6), harness.user_spec("qa_long", path, "exact_match", 12)]
    calls = []
    real = lm_eval.simple_evaluate
    monkeypatch.setattr(lm_eval, "simple_evaluate", lambda **kw: calls.append(len(kw["tasks"])) or real(**kw))
    together = harness.run_specs(lm, specs)
    assert calls == [2]
    alone = harness.run_specs(lm, specs[1:])
    assert together["qa_long"].items == alone["qa_long"].items and together["qa_long"].examples == alone["qa_long"].examples
    assert all(s.error is None and s.metrics["exact_match"]["n"] == 3 for s in together.values())


def test_a_failing_task_is_found_and_named(lm_and_data):
    lm, path = lm_and_data
    good, bad = harness.user_spec("qa", path, "exact_match", 4), harness.user_spec("qa_bad", path, "exact_match", 4)
    bad.config["doc_to_text"] = lambda doc: 1 / 0
    out = harness.run_specs(lm, [good, bad])
    assert out["qa"].error is None and out["qa"].metrics["exact_match"]["n"] == 3
    assert out["qa_bad"].error.startswith("ZeroDivisionError")


def test_groups():
    chat = [harness.TaskSpec(n, {}, [], chat=True) for n in ("a", "b")]
    plain = harness.TaskSpec("mmlu", {}, [], chat=False)
    assert [[s.name for s in g] for g in harness.groups([chat[0], plain, chat[1]])] == [["a", "b"], ["mmlu"]]
