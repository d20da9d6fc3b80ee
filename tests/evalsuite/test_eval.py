"""End to end on a tiny random Llama: real lm-eval runs (a built-in task, a user task, MMLU), the report
files, the results cache, the CLI's exit codes, and the task YAML through lm-eval's own loader."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

from adaptermerge.cli.main import main
from adaptermerge.chat.data import build_records
from adaptermerge.evalsuite.harness import TASKS_DIR
from adaptermerge.evalsuite.report import write_report
from adaptermerge.evalsuite.runner import evaluate
from adaptermerge.evalsuite.settings import EvalSettings
from adaptermerge.evalsuite.gates import Gate, parse_gates

FAQ = [("What colour is the sky on a clear day?", "blue"), ("How many legs does a spider have?", "eight"),
       ("What is the capital of France?", "Paris"), ("What do bees make?", "honey")]


@pytest.fixture(scope="module")
def faq_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("faq") / "faq.jsonl"
    rows = [{"messages": [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": q},
                          {"role": "assistant", "content": a}], "meta": {"answer": a}} for q, a in FAQ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def merged_dir(tiny_model_dir, tiny_adapter_dir, tmp_path_factory):
    """The adapter folded into the base with PEFT, saved as a plain model folder."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("merged") / "merged"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tiny_adapter_dir).merge_and_unload()
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A results cache shared by this module's tests (the CLI test then reuses what the first test evaluated)."""
    path = tmp_path_factory.mktemp("eval_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAPTERMERGE_CACHE", str(path))
        yield path


def gates_yaml(faq_file, domain_min=0.0) -> str:
    return (f"tasks:\n  faq: {{data: {faq_file}, metric: exact_match, min: 0.0, max_gen_toks: 8}}\n"
            f"  domain: {{min: {domain_min}}}\n  mmlu: {{metric: acc, max_drop: 1.0}}\n")


def test_evaluate_report_and_cache(tiny_model_dir, tiny_adapter_dir, merged_dir, faq_file, mmlu_dir, cache, tmp_path):
    import yaml

    config = parse_gates(yaml.safe_load(gates_yaml(faq_file)))
    config.gates.append(Gate("mmlu", "acc", "max_drop", 1.0, reference=str(tiny_adapter_dir)))  # a folder as reference
    settings = EvalSettings(base=str(tiny_model_dir), mmlu_data=str(mmlu_dir), mmlu_limit=1, batch_size=64)
    calls = []
    report = evaluate([str(tiny_adapter_dir), str(merged_dir)], None, config, settings, progress=lambda *a: calls.append(a))
    assert report.tasks == ["faq", "domain", "mmlu"] and not report.errors
    roles = {c["name"]: c["role"] for c in report.candidates}
    assert roles == {"base": "reference", "domain": "single-task adapter (domain)", "merged": "candidate"}
    assert report.settings["mmlu_format_used"] == "cloze" and calls[-1][0] == calls[-1][1] == 9
    n_domain = len(build_records("domain", "eval"))
    for name in roles:
        assert report.scores[name]["mmlu"].metrics["acc"]["n"] == 57
        assert report.scores[name]["domain"].metrics["exact_match"]["n"] == n_domain
        assert report.scores[name]["faq"].metrics["exact_match"]["n"] == 4
    # The adapter on its base and the same adapter folded into a model folder are the same function.
    adapter, merged = report.scores["domain"], report.scores["merged"]
    assert adapter["mmlu"].items["acc"] == merged["mmlu"].items["acc"]
    pair = report.comparisons["merged"]["mmlu"]["acc"]
    assert pair["n"] == 57 and pair["stderr"] >= 0
    assert sorted((g.candidate, g.gate.task, g.gate.reference or "") for g in report.gates) == [
        ("merged", "domain", ""), ("merged", "faq", ""), ("merged", "mmlu", ""), ("merged", "mmlu", "domain")]
    by_adapter = next(g for g in report.gates if g.gate.reference == "domain")
    assert by_adapter.value == pytest.approx(0.0) and by_adapter.paired["n"] == 57  # the same function
    assert report.passed

    out = write_report(report, tmp_path / "report")
    data = json.loads((out / "report.json").read_text())
    assert data["passed"] is True and data["settings"]["mmlu_limit"] == 1 and data["versions"]["lm_eval"]
    assert data["scores"]["merged"]["mmlu"]["metrics"]["acc"]["n"] == 57
    assert all({"value", "threshold", "passed", "detail"} <= set(g) for g in data["gates"])
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "| merged |" in md and "![scores](chart.png)" in md

    again = evaluate([str(tiny_adapter_dir), str(merged_dir)], None, config, settings)
    assert all(set(c["cached"]) == {"faq", "domain", "mmlu"} for c in again.candidates)
    assert again.scores["merged"]["mmlu"].items == report.scores["merged"]["mmlu"].items


def run_cli(argv) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


def test_cli_exit_codes(tiny_model_dir, merged_dir, faq_file, mmlu_dir, cache, tmp_path, capsys):
    ok, failing = tmp_path / "ok.yaml", tmp_path / "fail.yaml"
    ok.write_text(gates_yaml(faq_file))
    failing.write_text(gates_yaml(faq_file, domain_min=0.99))  # a random model answers nothing right
    common = [str(merged_dir), "--base", str(tiny_model_dir), "--mmlu-data", str(mmlu_dir), "--mmlu-limit", "1"]
    assert run_cli(["eval", *common, "--gates", str(ok), "-o", str(tmp_path / "r1")]) == 0
    assert (tmp_path / "r1" / "report.md").is_file()
    assert run_cli(["eval", *common, "--gates", str(failing), "-o", str(tmp_path / "r2")]) == 1
    assert json.loads((tmp_path / "r2" / "report.json").read_text())["passed"] is False
    printed = capsys.readouterr()  # results on stdout (`> file` keeps them), progress on stderr
    assert "FAIL" in printed.out and "report ->" in printed.out and "merged" in printed.out
    assert "FAIL" not in printed.err
    assert run_cli(["eval", *common, "--gates", str(ok), "-o", str(tmp_path / "r1")]) == 2  # exists, no --force
    assert "--force" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("tasks: {domain: {metric: bleu}}\n")
    assert run_cli(["eval", *common, "--gates", str(tmp_path / "bad.yaml")]) == 2
    assert run_cli(["eval", str(tmp_path / "no-such-folder"), "--base", str(tiny_model_dir)]) == 2
    assert run_cli(["eval", "--print-include-path"]) == 0
    assert capsys.readouterr().out.strip() == str(TASKS_DIR)


def test_task_yaml_through_lm_eval_loader(tiny_model_dir, tiny_adapter_dir, mmlu_dir, cache):
    """What `lm-eval run --model hf --model_args pretrained=...,peft=... --include_path ...` does."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False,
                          metadata={"mmlu_data": str(mmlu_dir), "mmlu_limit": 1})
    assert {"adaptermerge_domain", "adaptermerge_structured", "adaptermerge_safety", "adaptermerge_mmlu_cloze"} <= set(manager.all_tasks)
    out = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": str(tiny_model_dir), "peft": str(tiny_adapter_dir), "device": "cpu"},
        tasks=["adaptermerge_structured", "adaptermerge_mmlu_cloze"], task_manager=manager, limit=3,
        apply_chat_template=True, bootstrap_iters=0,
    )
    assert set(out["results"]["adaptermerge_structured"]) >= {"parse_rate,none", "schema_valid,none", "field_accuracy,none"}
    assert 0.0 <= out["results"]["adaptermerge_mmlu_cloze"]["acc,none"] <= 1.0
    assert out["results"]["adaptermerge_mmlu_cloze"]["sample_len"] == 3


def test_a_helper_process_gives_the_same_scores(tiny_model_dir, tiny_adapter_dir, merged_dir, mmlu_dir, tmp_path, monkeypatch):
    settings = EvalSettings(base=str(tiny_model_dir), mmlu_data=str(mmlu_dir), mmlu_limit=1, batch_size=64)
    tasks = ["domain", "mmlu"]
    monkeypatch.setenv("ADAPTERMERGE_CACHE", str(tmp_path / "cache1"))  # nothing cached
    one = evaluate([str(tiny_adapter_dir), str(merged_dir)], tasks, None, dataclasses.replace(settings, workers=1))
    monkeypatch.setenv("ADAPTERMERGE_CACHE", str(tmp_path / "cache2"))
    # Two models with work left: whole models on the shared queue.
    from adaptermerge.evalsuite import parallel

    queued, submit = [], parallel.Helper.submit

    def spy(helper, candidate, tasks=None):
        queued.append((candidate.name, tasks))
        return submit(helper, candidate, tasks)

    monkeypatch.setattr(parallel.Helper, "submit", spy)
    whole = evaluate([str(tiny_adapter_dir)], tasks, None, dataclasses.replace(settings, workers=2))
    assert queued == [("base", None), ("domain", None)]
    queued.clear()
    # Then one (the base and the adapter cached): its task groups are split between the processes.
    split = evaluate([str(tiny_adapter_dir), str(merged_dir)], tasks, None, dataclasses.replace(settings, workers=2))
    assert not one.errors and not whole.errors and not split.errors
    for name in ("base", "domain", "merged"):
        for task in tasks:
            assert split.scores[name][task].items == one.scores[name][task].items, (name, task)
    # The two processes share one queue: which model each took depends on timing, but every model
    # was evaluated once (nothing was read back from the cache as if evaluated before).
    assert not any(c.get("evaluated_by") for c in one.candidates)
    assert all(c["cached"] == [] for c in whole.candidates)
    rows = {c["name"]: c for c in split.candidates}
    assert rows["base"]["cached"] == tasks and rows["domain"]["cached"] == tasks
    assert queued == [("merged", ("domain",)), ("merged", ("mmlu",))]
    assert rows["merged"]["cached"] == []
    # This process takes the first group (chat) at once; the helper, up about 10 s later, takes the
    # second if this process has not finished the first by then (the tiny model often has).
    assert rows["merged"].get("evaluated_by") in (None, "helper process (mmlu) and this one")


def test_models_of_a_last_partial_round_are_split_by_task_group():
    from types import SimpleNamespace

    from adaptermerge.evalsuite.parallel import units

    m, n, o = (SimpleNamespace(name=x) for x in "mno")
    chat, mmlu = ("domain", "safety"), ("mmlu",)
    assert [u.key for u in units([(m, [chat, mmlu])], 2)] == [("m", chat), ("m", mmlu)]
    assert [u.key for u in units([(m, [mmlu])], 2)] == [("m", None)]  # one group: nothing to split
    assert [u.key for u in units([(m, [chat, mmlu]), (n, [mmlu])], 2)] == [("m", None), ("n", None)]
    assert [u.key for u in units([(m, [chat, mmlu]), (n, [chat]), (o, [chat, mmlu])], 2)] == [
        ("m", None), ("n", None), ("o", chat), ("o", mmlu)]
    assert [u.key for u in units([(m, [chat, mmlu])], 1)] == [("m", None)]


def test_a_helper_started_early_evaluates_what_it_is_fed(tiny_model_dir, tiny_adapter_dir, merged_dir, mmlu_dir, tmp_path, monkeypatch):
    """The demo's way: start the helper, feed it models while other work runs, then evaluate."""
    from adaptermerge.errors import AdapterMergeError
    from adaptermerge.evalsuite import candidates as cand_mod
    from adaptermerge.evalsuite.runner import start_helper

    settings = EvalSettings(base=str(tiny_model_dir), mmlu_data=str(mmlu_dir), mmlu_limit=1, batch_size=64, workers=2)
    tasks = ["domain", "mmlu"]
    monkeypatch.setenv("ADAPTERMERGE_CACHE", str(tmp_path / "alone"))
    alone = evaluate([str(tiny_adapter_dir), str(merged_dir)], tasks, None, dataclasses.replace(settings, workers=1))
    monkeypatch.setenv("ADAPTERMERGE_CACHE", str(tmp_path / "early"))
    helper = start_helper(tasks, None, settings)
    assert helper is not None
    cands = [cand_mod.base_candidate(str(tiny_model_dir)),
             *(cand_mod.resolve_candidate(str(p), str(tiny_model_dir)) for p in (tiny_adapter_dir, merged_dir))]
    for c in cands:
        helper.submit(c)
    results = tmp_path / "early" / "eval" / "results"
    deadline = time.time() + 300
    while len(list(results.glob("*.json"))) < len(cands) * len(tasks) and time.time() < deadline:
        time.sleep(0.5)  # this process works on something else meanwhile
    report = evaluate([str(tiny_adapter_dir), str(merged_dir)], tasks, None, settings, helper=helper)
    assert not helper.process.is_alive()
    assert [c.get("evaluated_by") for c in report.candidates] == ["helper process"] * 3  # all of it, ahead
    for name in ("base", "domain", "merged"):
        for task in tasks:
            assert report.scores[name][task].items == alone.scores[name][task].items, (name, task)
    # Fed models whose results are cached already, the helper evaluates nothing: the rows say cached.
    again = start_helper(tasks, None, settings)
    for c in cands:
        again.submit(c)
    report = evaluate([str(tiny_adapter_dir), str(merged_dir)], tasks, None, settings, helper=again)
    assert [c["cached"] for c in report.candidates] == [tasks] * 3
    assert not any(c.get("evaluated_by") for c in report.candidates)
    # A helper started for other tasks is refused (its cache keys would not be evaluate's).
    other = start_helper(["domain"], None, settings)
    with pytest.raises(AdapterMergeError, match="other tasks"):
        evaluate([str(tiny_adapter_dir)], tasks, None, settings, helper=other)
    assert not other.process.is_alive()
    # Any failure of the call ends the helper it was given (a missing candidate here).
    third = start_helper(tasks, None, settings)
    with pytest.raises(AdapterMergeError):
        evaluate([str(tmp_path / "no-such-adapter")], tasks, None, settings, helper=third)
    assert not third.process.is_alive()
