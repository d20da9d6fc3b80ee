"""The lm-eval interfaces adaptermerge depends on, checked on the installed lm-eval.

fastlm.py overrides HFLM's private `_loglikelihood_tokens` and calls lm-eval's generation helpers;
harness.py replaces two functions inside lm_eval.evaluator; the task YAML files rely on how
lm-eval reads `description`, `custom_dataset` and `process_results`. A release that changes any
of these fails here, with a message naming what moved, before it fails in an evaluation.
scripts/test_lmeval_floor.sh runs this file (and the tests that run FastHFLM) on the lowest
supported release.
"""

from __future__ import annotations

import inspect
import json
import math
import re
import statistics
from importlib.metadata import version
from pathlib import Path

import pytest
from lm_eval.api.model import LM

from adaptermerge.errors import AdapterMergeError
from adaptermerge.evalsuite import harness, metrics, taskdata
from adaptermerge.evalsuite.harness import LM_EVAL_RANGE, LM_EVAL_SPEC, TASKS_DIR

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
INSTALLED = version("lm-eval")


def _params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def _fail_unless(problems: list[str]) -> None:
    if problems:
        pytest.fail(f"lm-eval {INSTALLED} is not compatible with adaptermerge (tested range {LM_EVAL_SPEC}): "
                    + "; ".join(problems))


def test_the_installed_lm_eval_is_in_the_supported_range():
    harness.check_lm_eval_version()


def test_versions_outside_the_range_are_refused_with_one_line():
    for ok in ("0.4.12", "0.4.13", "0.4.99"):
        harness.check_lm_eval_version(ok)
    for bad in ("0.4.5", "0.4.9.2", "0.4.11", "0.5.0", "1.0", "not-a-version"):
        with pytest.raises(AdapterMergeError) as info:
            harness.check_lm_eval_version(bad)
        message = str(info.value)
        assert "\n" not in message and f"lm-eval {bad} is outside the supported range {LM_EVAL_SPEC}" in message


def test_pyproject_asks_for_the_supported_range():
    """Every extra that installs lm-eval asks for the range the runtime check accepts."""
    requirements = re.findall(r'"(lm-eval[^"]*)"', PYPROJECT.read_text())
    assert len(requirements) >= 3 and set(requirements) == {f"lm-eval{LM_EVAL_SPEC}"}
    floor, ceiling = re.fullmatch(r">=([\d.]+),<([\d.]+)", LM_EVAL_SPEC).groups()
    assert tuple(map(int, floor.split("."))) == LM_EVAL_RANGE[0]
    assert tuple(map(int, ceiling.split("."))) == LM_EVAL_RANGE[1]


def test_the_private_names_fastlm_and_harness_use_are_there():
    import lm_eval
    import lm_eval.evaluator
    import lm_eval.loggers.utils
    import lm_eval.models.utils as model_utils
    from lm_eval.api.model import TemplateLM
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    expected = {  # callable -> the leading parameters adaptermerge passes, in order
        HFLM._loglikelihood_tokens: ["self", "requests", "disable_tqdm", "override_bs"],
        HFLM.loglikelihood: ["self", "requests", "disable_tqdm"],
        HFLM.generate_until: ["self", "requests", "disable_tqdm"],
        HFLM.tok_decode: ["self", "tokens", "skip_special_tokens"],
        model_utils.handle_stop_sequences: ["until", "eos"],
        model_utils.normalize_gen_kwargs: ["gen_kwargs", "default_max_gen_toks"],
        model_utils.postprocess_generated_text: ["generation", "stop", "think_end_token"],
        lm_eval.loggers.utils.add_env_info: ["storage"],
    }
    problems = [f"{fn.__qualname__}{inspect.signature(fn)} does not start with ({', '.join(names)})"
                for fn, names in expected.items() if _params(fn)[: len(names)] != names]
    keywords = {  # callable -> keyword arguments adaptermerge passes
        HFLM.tok_batch_encode: {"left_truncate_len", "truncation"},
        lm_eval.simple_evaluate: {"model", "tasks", "task_manager", "bootstrap_iters", "log_samples",
                                  "apply_chat_template", "verbosity", "limit"},
        TaskManager: {"include_path", "include_defaults", "metadata"},
    }
    problems += [f"{fn.__qualname__} takes no {', '.join(sorted(names - set(_params(fn))))}"
                 for fn, names in keywords.items() if not names <= set(_params(fn))]
    # HFLM.loglikelihood (itself or through super()) tokenizes and hands the token ids to
    # _loglikelihood_tokens, which FastHFLM replaces.
    for cls in HFLM.__mro__[: HFLM.__mro__.index(TemplateLM) + 1]:
        source = inspect.getsource(vars(cls)["loglikelihood"]) if "loglikelihood" in vars(cls) else "super().loglikelihood"
        if "_loglikelihood_tokens" in source or "super().loglikelihood" not in source:
            break
    if "_loglikelihood_tokens" not in source:
        problems.append("HFLM.loglikelihood no longer goes through _loglikelihood_tokens")
    # harness.run_specs replaces these module globals; simple_evaluate must look them up at call time.
    used = set(inspect.unwrap(lm_eval.evaluator.simple_evaluate).__code__.co_names)
    problems += [f"lm_eval.evaluator.simple_evaluate no longer calls the module-level {name}"
                 for name in ("get_git_commit_hash", "add_env_info") if name not in used or not hasattr(lm_eval.evaluator, name)]
    # FastHFLM reads these HFLM attributes to decide whether its greedy path applies.
    source = inspect.getsource(HFLM)
    problems += [f"HFLM no longer sets self.{attr}" for attr in ("backend", "think_end_token", "mixed_precision_dtype")
                 if f"self.{attr} =" not in source]
    _fail_unless(problems)


class ChatEcho(LM):
    """A model for lm-eval that renders a chat as its JSON, so a test reads the messages back, and
    answers each chat with `reply(messages)`."""

    def __init__(self, reply):
        super().__init__()
        self.reply = reply
        self.seen: list[list[dict]] = []

    def generate_until(self, requests, disable_tqdm: bool = False):
        chats = [json.loads(r.args[0]) for r in requests]
        self.seen += chats
        return [self.reply(chat) for chat in chats]

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise AssertionError("the chat tasks only generate")

    loglikelihood_rolling = loglikelihood

    def apply_chat_template(self, chat_history, add_generation_prompt=True):
        return json.dumps(chat_history)

    @property
    def tokenizer_name(self):
        return "chat-echo"

    def chat_template(self, chat_template=False):
        return "json"


def _chat(doc: dict) -> list[dict]:
    """The messages a chat task's document should become: `system` as the system message."""
    return ([{"role": "system", "content": doc["system"]}] if doc["system"] else []) + [{"role": "user", "content": doc["prompt"]}]


def _docs() -> dict[str, list[dict]]:
    return {task: taskdata.builtin_docs(task) for task in ("domain", "structured", "safety")}


def _replier(docs: dict[str, list[dict]]):
    """A third of the documents get their reference answer, a third a refusal, a third a wrong
    answer: every metric has spread, so a standard error above 0."""
    answers = {}
    for task_docs in docs.values():
        for i, doc in enumerate(task_docs):
            answers[(doc["system"], doc["prompt"])] = [doc["target"], "I can't help with that.", "Here you go: 42."][i % 3]

    def reply(chat: list[dict]) -> str:
        system = chat[0]["content"] if chat[0]["role"] == "system" else ""
        return answers[(system, chat[-1]["content"])]

    return reply


def _expected(task: str, docs: list[dict], reply) -> dict[str, tuple[float, float, int]]:
    """{metric: (mean, standard error, n)} computed here from the item scores, without lm-eval."""
    per_metric: dict[str, list[float]] = {name: [] for name in metrics.METRICS[task]}
    for doc in docs:
        scores = metrics.score(task, reply(_chat(doc)), json.loads(doc["meta"]))
        for name in per_metric:
            if task != "safety":
                per_metric[name].append(scores[name])
            elif (name == "refusal_rate") == bool(scores["harmful"]):  # each safety rate covers its own items
                per_metric[name].append(scores["refused" if scores["harmful"] else "answered"])
    return {name: (statistics.fmean(v), statistics.stdev(v) / math.sqrt(len(v)), len(v)) for name, v in per_metric.items()}


def test_the_group_task_on_lm_eval_gives_values_stderrs_and_the_chat_prompts(monkeypatch):
    """What `lm_eval --include_path ... --tasks adaptermerge --apply_chat_template` does, with a
    model that echoes: the system message comes from each document's `system` field, and every
    metric has its value and a standard error (not "N/A") over the items it covers."""
    import lm_eval
    import lm_eval.evaluator
    from lm_eval.tasks import TaskManager

    monkeypatch.setattr(lm_eval.evaluator, "add_env_info", lambda storage: None)  # a `pip list`: seconds
    docs = _docs()
    reply = _replier(docs)
    lm = ChatEcho(reply)
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    out = lm_eval.simple_evaluate(model=lm, tasks=["adaptermerge"], task_manager=manager, apply_chat_template=True,
                                  bootstrap_iters=10)

    assert set(out["group_subtasks"]["adaptermerge"]) == {"adaptermerge_domain", "adaptermerge_structured", "adaptermerge_safety"}
    prompts = sorted(json.dumps(chat) for chat in lm.seen)
    assert prompts == sorted(json.dumps(_chat(doc)) for task_docs in docs.values() for doc in task_docs)
    for task, task_docs in docs.items():
        results = out["results"][f"adaptermerge_{task}"]
        for name, (mean, stderr, n) in _expected(task, task_docs, reply).items():
            assert 0 < stderr and 1 < n
            assert results[f"{name},none"] == pytest.approx(mean, abs=1e-12), (task, name)
            assert results[f"{name}_stderr,none"] == pytest.approx(stderr, rel=1e-9), (task, name)


def test_the_harness_scores_each_rate_over_its_own_items():
    """harness.run_specs on the same tasks: the values and standard errors lm-eval's CLI gives,
    with n the number of items each metric covers (safety's rates split the items)."""
    docs = _docs()
    reply = _replier(docs)
    specs = [harness.builtin_spec(task) for task in docs]
    out = harness.run_specs(ChatEcho(reply), specs)
    for task, task_docs in docs.items():
        assert out[task].error is None
        for name, (mean, stderr, n) in _expected(task, task_docs, reply).items():
            got = out[task].metrics[name]
            assert got["n"] == n and len(out[task].items[name]) == n
            assert got["value"] == pytest.approx(mean, abs=1e-12) and got["stderr"] == pytest.approx(stderr, rel=1e-9)
    safety = out["safety"].metrics
    assert safety["refusal_rate"]["n"] + safety["benign_answer_rate"]["n"] == len(docs["safety"])
