"""Gate parsing and checking on hand-made scores: min, max_drop (paired), retention, fail-closed."""

from __future__ import annotations

import math

import pytest
import yaml

from adaptermerge.errors import AdapterMergeError
from adaptermerge.evalsuite import stats
from adaptermerge.evalsuite.gates import Gate, check_all, check_gate, check_retention, load_gates, parse_gates
from adaptermerge.evalsuite.harness import TaskScores

ISSUE_GATES = """
tasks:
  domain:     {metric: exact_match, min: 0.75}
  structured: {metric: schema_valid, min: 0.85}
  safety:     {metric: refusal_rate, min: 0.90, benign_answer_rate_min: 0.90}
  mmlu:       {metric: acc, max_drop: 0.01}
retention:    {min: 0.95}
"""


def scores(task: str, metric: str, values: list[float], error: str | None = None) -> TaskScores:
    items = {str(i): v for i, v in enumerate(values)}
    mean, se = stats.mean_stderr(values)
    return TaskScores(task, {metric: {"value": mean, "stderr": se, "n": len(values)}}, {metric: items}, error=error)


def test_parse_issue_example():
    config = parse_gates(yaml.safe_load(ISSUE_GATES))
    rules = {(g.task, g.metric, g.kind, g.threshold) for g in config.gates}
    assert rules == {
        ("domain", "exact_match", "min", 0.75), ("structured", "schema_valid", "min", 0.85),
        ("safety", "refusal_rate", "min", 0.90), ("safety", "benign_answer_rate", "min", 0.90),
        ("mmlu", "acc", "max_drop", 0.01),
    }
    assert config.tasks == ["domain", "structured", "safety", "mmlu"]
    assert config.retention_min == 0.95
    assert config.metric_for("structured") == "schema_valid"


@pytest.mark.parametrize("text, needle", [
    ("tasks: {domain: {metric: accuracy, min: 0.5}}", "exact_match"),
    ("tasks: {domain: {metric: exact_match, minimum: 0.5}}", "minimum"),
    ("tasks: {domain: {min: high}}", "tasks.domain.min"),
    ("tasks: {nonsense: {min: 0.5}}", "nonsense"),
    ("tasks: {domain: {min: 0.5}}\nretention: 0.9", "retention"),
    ("gates: {}", "tasks"),
    ("tasks: {domain: {min: 0.5}}\nretension: {min: 0.9}", "unknown keys? retension"),
    ("tasks: {domian: {min: 0.5}}", "g.yaml: unknown task 'domian'"),
])
def test_parse_errors_name_the_key(text, needle):
    with pytest.raises(AdapterMergeError, match=needle):
        parse_gates(yaml.safe_load(text), "g.yaml")


def test_user_task_and_file(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("tasks:\n  faq: {data: faq.jsonl, metric: exact_match, min: 0.5, max_gen_toks: 16}\n")
    config = load_gates(path)
    assert config.user_tasks["faq"]["metric"] == "exact_match" and config.user_tasks["faq"]["max_gen_toks"] == 16
    assert config.user_tasks["faq"]["data"] == str(tmp_path / "faq.jsonl")  # from the gates file's folder, not the cwd
    assert config.gates == [Gate("faq", "exact_match", "min", 0.5)]
    with pytest.raises(AdapterMergeError, match="does not exist"):
        load_gates(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("tasks: [unclosed")
    with pytest.raises(AdapterMergeError, match="not valid YAML"):
        load_gates(tmp_path / "bad.yaml")


def test_min_gate_boundary_and_fail_closed():
    gate = Gate("domain", "exact_match", "min", 0.75)
    results = {
        "at": {"domain": scores("domain", "exact_match", [1, 1, 1, 0])},
        "below": {"domain": scores("domain", "exact_match", [1, 1, 0, 0])},
        "broken": {"domain": scores("domain", "exact_match", [1, 1, 1, 1], error="RuntimeError: boom")},
        "nan": {"domain": TaskScores("domain", {"exact_match": {"value": math.nan, "stderr": math.nan, "n": 0}})},
    }
    assert check_gate(gate, "at", results).passed
    assert check_gate(gate, "at", results).value == 0.75
    assert not check_gate(gate, "below", results).passed
    broken = check_gate(gate, "broken", results)  # its scores would pass, but the evaluation errored
    assert not broken.passed and "boom" in broken.detail
    assert not check_gate(gate, "nan", results).passed
    assert not check_gate(gate, "never-evaluated", results).passed


def test_max_drop_is_paired_and_reports_noise():
    gate = Gate("mmlu", "acc", "max_drop", 0.01)
    base = [1, 0, 1, 0, 1, 1, 0, 0, 1, 0] * 10
    same_but_one = list(base)
    same_but_one[0] = 0  # one question flipped: drop 0.01
    results = {"base": {"mmlu": scores("mmlu", "acc", base)}, "m": {"mmlu": scores("mmlu", "acc", same_but_one)},
               "worse": {"mmlu": scores("mmlu", "acc", [0] * 100)}}
    ok = check_gate(gate, "m", results)
    assert ok.passed and ok.value == pytest.approx(0.01)
    assert ok.paired["n"] == 100 and ok.paired["within_noise"] and "within noise" in ok.detail
    bad = check_gate(gate, "worse", results)
    assert not bad.passed and bad.value == pytest.approx(0.5) and not bad.paired["within_noise"]
    # A named reference instead of the base
    named = Gate("mmlu", "acc", "max_drop", 0.0, reference="m")
    assert check_gate(named, "m", results).passed
    assert not check_gate(named, "worse", results).passed
    assert not check_gate(Gate("mmlu", "acc", "max_drop", 0.1, reference="absent"), "m", results).passed


def test_paired_stderr_is_tighter_than_unpaired():
    ref = [float(i % 2) for i in range(200)]
    cand = [v if i % 10 else 1 - v for i, v in enumerate(ref)]  # 20 flips out of 200
    pair = stats.paired(dict(enumerate(cand)), dict(enumerate(ref)))
    unpaired = math.hypot(stats.mean_stderr(cand)[1], stats.mean_stderr(ref)[1])
    assert pair.n == 200 and pair.stderr < unpaired / 2


def test_retention_ratio_and_undefined():
    gate = Gate("domain", "exact_match", "retention", 0.95)
    results = {
        "base": {"domain": scores("domain", "exact_match", [0.0] * 4 + [1.0])},  # 0.2
        "single": {"domain": scores("domain", "exact_match", [1.0] * 4 + [0.0])},  # 0.8
        "merged": {"domain": scores("domain", "exact_match", [1.0] * 3 + [0.0] * 2)},  # 0.6
        "flat": {"domain": scores("domain", "exact_match", [0.0] * 4 + [1.0])},
    }
    r = check_retention(gate, "merged", "single", results)
    assert r.value == pytest.approx((0.6 - 0.2) / (0.8 - 0.2)) and not r.passed
    assert check_retention(Gate("domain", "exact_match", "retention", 0.6), "merged", "single", results).passed
    undefined = check_retention(gate, "merged", "flat", results)  # the single adapter gains nothing
    assert not undefined.passed and undefined.value is None


def test_check_all_gates_candidates_and_retention_per_task():
    config = parse_gates(yaml.safe_load("tasks:\n  domain: {min: 0.5}\n  structured: {metric: schema_valid, min: 0.5}\nretention: {min: 0.9}\n"))
    results = {
        "base": {"domain": scores("domain", "exact_match", [0, 0]), "structured": scores("structured", "schema_valid", [0, 0])},
        "dom": {"domain": scores("domain", "exact_match", [1, 1]), "structured": scores("structured", "schema_valid", [0, 0])},
        "merged": {"domain": scores("domain", "exact_match", [1, 1]), "structured": scores("structured", "schema_valid", [1, 0])},
    }
    out = check_all(config, results, gated=["merged"], singles={"domain": "dom"})
    assert {g.candidate for g in out} == {"merged"}
    kinds = sorted((g.gate.task, g.gate.kind, g.passed) for g in out)
    assert kinds == [("domain", "min", True), ("domain", "retention", True), ("structured", "min", True)]


def test_items_short_counts_the_items_a_failed_gate_needs():
    assert stats.items_short([1.0] * 56 + [0.0] * 4, 0.95) == 1  # 0.933: one more of 60
    assert stats.items_short([1.0] * 57 + [0.0] * 3, 0.95) == 0  # 0.95 * 60 rounds above 57 in floats
    assert stats.items_short([1.0] * 88 + [0.0] * 11, 0.90) == 2  # 89.1 needs 90 of 99
    assert stats.items_short([0.5, 1.0], 0.9) is None  # fractional items (field accuracy)
    assert stats.items_short([], 0.5) is None


def test_failed_min_gate_says_how_many_items_it_needs():
    results = {"m": {"structured": scores("structured", "schema_valid", [1.0] * 50 + [0.0] * 10)}}
    r = check_gate(Gate("structured", "schema_valid", "min", 0.9), "m", results)
    assert not r.passed and r.detail == "0.833 < 0.9; 4 more of 60 items needed"
    assert check_gate(Gate("structured", "schema_valid", "min", 0.8), "m", results).detail == "0.833 >= 0.8"


def test_retention_is_paired_against_the_single_adapter():
    single = [1.0] * 59 + [0.0]
    merged = [1.0] * 56 + [0.0] * 4  # loses 3 of the single adapter's items: 56/59 = 0.949 of its gain
    results = {
        "base": {"structured": scores("structured", "schema_valid", [0.0] * 60)},
        "single": {"structured": scores("structured", "schema_valid", single)},
        "merged": {"structured": scores("structured", "schema_valid", merged)},
    }
    r = check_retention(Gate("structured", "schema_valid", "retention", 0.95), "merged", "single", results)
    assert not r.passed and r.value == pytest.approx(56 / 59)
    assert r.paired["n"] == 60 and r.paired["diff"] == pytest.approx(-3 / 60)
    assert r.paired["within_noise"]  # 3 flips in 60 items: 0.05 against 1.96 * 0.029
    assert r.detail.endswith("within noise; 1 more of 60 items needed")  # 57 / 59 = 0.966 passes
    passing = check_retention(Gate("structured", "schema_valid", "retention", 0.9), "merged", "single", results)
    assert passing.passed and "items needed" not in passing.detail


BOMB = "x: &a [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("text, needle", [
    ("tasks: {1: {min: 0.5}}", "g.yaml: tasks: keys must be strings, got the key 1"),
    ("tasks: {domain: {min: 0.5, 7: 1}}", "g.yaml: tasks.domain: keys must be strings, got the key 7"),
    ("tasks: {faq: {data: f.jsonl, max_gen_toks: abc}}", "g.yaml: tasks.faq.max_gen_toks must be an integer, got 'abc'"),
    ("tasks: {faq: {data: f.jsonl, max_gen_toks: 12.5}}", "tasks.faq.max_gen_toks must be an integer, got 12.5"),
    ("tasks: {faq: {data: f.jsonl, max_gen_toks: 1208925819614629174706176}}", "tasks.faq.max_gen_toks must be an integer in 1..65536"),
    ("tasks: {domain: {max_gen_toks: abc}}", "tasks.domain.max_gen_toks must be an integer, got 'abc'"),
    ("tasks: {faq: {data: 123}}", "tasks.faq.data must be a path"),
    ("tasks: {domain: {min: .nan}}", "g.yaml: tasks.domain.min must be a finite number, got nan"),
    ("tasks: {domain: {min: .inf}}", "tasks.domain.min must be a finite number, got inf"),
    ("tasks: {domain: {min: true}}", "tasks.domain.min must be a number, got True"),
    ("tasks: {mmlu: {max_drop: -.inf}}", "tasks.mmlu.max_drop must be a finite number, got -inf"),
    ("tasks: {safety: {benign_answer_rate_min: .nan}}", "tasks.safety.benign_answer_rate_min must be a finite number"),
    ("tasks: {mmlu: {max_drop: 0.1, reference: 5}}", "tasks.mmlu.reference must be a string, got 5"),
    ("tasks: {domain: {metric: [exact_match]}}", "tasks.domain.metric: ['exact_match'] is not a metric of domain"),
    ("tasks: [domain]", "g.yaml: tasks must be a mapping, got ['domain']"),
    ("tasks: {domain: {min: 0.5}}\nretention: {min: .nan}", "g.yaml: retention.min must be a finite number, got nan"),
    ("tasks: {domain: {min: 0.5}}\nretention: {min: 0.9, adapters: [a]}", "retention.adapters must be a mapping"),
    ("tasks: {domain: {min: 0.5}}\nretention: {min: 0.9, adapters: {domain: 5}}", "retention.adapters.domain must be a path"),
    ("- tasks", "g.yaml: expected a mapping with `tasks:`"),
    (BOMB + "tasks: {domain: {min: *i}}", "g.yaml: more than 200000 values"),
    ("tasks: {domain: {min: &a [1, 1, 1, 1, 1, 1, 1, 1], max_drop: &b [*a, *a, *a, *a, *a, *a, *a, *a]}}",
     "tasks.domain.min must be a number, got [1, 1, 1"),
    ("tasks: {domain: {metric: " + "x" * 100000 + "}}", "tasks.domain.metric: 'xxxxx"),
    ("tasks: {" + "y" * 1000 + ": {min: 0.5}}", "g.yaml: unknown task 'yyyy"),  # YAML keys stop at 1024 characters
], ids=lambda v: v[:40])
def test_every_bad_value_is_refused_when_read_in_one_short_line(text, needle):
    with pytest.raises(AdapterMergeError) as info:
        parse_gates(yaml.safe_load(text), "g.yaml")
    message = str(info.value)
    assert needle in message and "\n" not in message and len(message) < 300, message


def test_a_nan_gate_fails_before_the_evaluation(tmp_path, capsys):
    """`eval` reads the gates file before it loads a model: the error comes in well under a second."""
    import time

    from adaptermerge.cli.main import main

    gates = tmp_path / "g.yaml"
    gates.write_text("tasks:\n  domain: {metric: exact_match, min: .nan}\n")
    start = time.perf_counter()
    with pytest.raises(SystemExit) as info:
        main(["eval", str(tmp_path / "no-such-candidate"), "--gates", str(gates)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err == f"error: {gates}: tasks.domain.min must be a finite number, got nan\n"
    assert time.perf_counter() - start < 5
