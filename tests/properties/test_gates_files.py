"""Property: whatever a gates file holds, it is refused when read, with one line naming the file
(and `adaptermerge eval --gates FILE` exits 2 with that line before it evaluates anything), or it
gives gates whose thresholds are exactly the file's finite numbers. The file is never changed and
nothing is written beside it.

Documents are valid gates files with 0 to 3 values replaced by hostile ones (NaN, infinities,
strings for numbers, huge integers, integer keys, nested containers), plus raw texts."""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from adaptermerge.cli.main import main
from adaptermerge.errors import AdapterMergeError
from adaptermerge.evalsuite.gates import load_gates

SETTINGS = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MAX_LINE = 500

SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2**100), max_value=2**100)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.sampled_from([1e308, float("nan"), 2**80, 1.7, 0, -1, "abc", "", "0.5", ".nan", "x" * 5000, "acc", "exact_match"]))
JUNK = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=4),
                    max_leaves=10)
PATHS = ["tasks", "tasks.domain", "tasks.domain.min", "tasks.domain.metric", "tasks.safety.benign_answer_rate_min", "tasks.mmlu.max_drop",
         "tasks.mmlu.reference", "tasks.faq", "tasks.faq.data", "tasks.faq.max_gen_toks", "tasks.faq.metric", "tasks.faq.min", "tasks.7",
         "retention", "retention.min", "retention.adapters", "colour", 3]
THRESHOLD = st.floats(0, 1)


@st.composite
def documents(draw):
    tasks = {}
    if draw(st.booleans()):
        tasks["domain"] = {"metric": "exact_match", "min": draw(THRESHOLD)}
    if draw(st.booleans()):
        tasks["safety"] = {"metric": "refusal_rate", "min": draw(THRESHOLD), "benign_answer_rate_min": draw(THRESHOLD)}
    if draw(st.booleans()):
        tasks["mmlu"] = {"metric": "acc", "max_drop": draw(st.floats(0, 0.5))}
    if draw(st.booleans()) or not tasks:
        tasks["faq"] = {"data": "faq.jsonl", "metric": "exact_match", "min": draw(THRESHOLD), "max_gen_toks": draw(st.integers(1, 512))}
    doc = {"tasks": tasks}
    if draw(st.booleans()):
        doc["retention"] = {"min": draw(THRESHOLD)}
    corrupted = False
    for path in draw(st.lists(st.sampled_from(PATHS), max_size=3, unique=True)):
        corrupted |= _replace(doc, path, draw(JUNK))
    return doc, corrupted


def _replace(doc: dict, path, value) -> bool:
    *parents, last = path.split(".") if isinstance(path, str) else [path]
    node = doc
    for p in parents:
        node = node.get(p) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            return False
    node[int(last) if isinstance(last, str) and last.isdigit() else last] = value
    return True


RAW = st.one_of(
    st.integers(30, 1500).map(lambda n: "tasks: " + "{a: " * n + "1" + "}" * n + "\n"),
    st.integers(3, 9).map(lambda n: "x0: &x0 [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]\n"
                          + "".join(f"x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 8)}]\n" for i in range(1, n))
                          + f"tasks: {{domain: {{min: *x{n - 1}}}}}\n"),
    st.binary(max_size=200),
    st.text(max_size=200),
)


def _cli(argv) -> tuple[int, str]:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    return info.value.code, err.getvalue()


def _threshold(doc: dict, gate) -> float:
    """The number in the file that a gate was read from."""
    spec = doc["tasks"][gate.task]
    if gate.kind == "max_drop":
        return spec["max_drop"]
    return spec.get(f"{gate.metric}_min", spec.get("min"))


def _check(content, root: Path, *, doc: dict | None, corrupted: bool) -> None:
    path = root / "gates.yaml"
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    try:
        config = load_gates(path)
    except AdapterMergeError as exc:
        event("refused")
        message = str(exc)
        assert "\n" not in message and len(message) < MAX_LINE and str(path) in message, message[:2000]
        assert doc is None or corrupted, message
        code, err = _cli(["eval", root / "no-such-candidate", "--gates", path])
        assert code == 2 and err == f"error: {message}\n", err[:2000]
    else:
        event("read")
        for gate in config.gates:
            assert isinstance(gate.threshold, float) and math.isfinite(gate.threshold)
        for spec in config.user_tasks.values():
            assert isinstance(spec["max_gen_toks"], int) and 1 <= spec["max_gen_toks"] <= 1 << 16
        if doc is not None:  # (a raw text may happen to be a valid file: "{}")
            assert config.tasks == list(doc["tasks"])
            assert all(gate.threshold == _threshold(doc, gate) for gate in config.gates)
            if config.retention_min is not None:
                assert math.isfinite(config.retention_min) and config.retention_min == doc["retention"]["min"]
            for task, spec in config.user_tasks.items():
                data = doc["tasks"][task]["data"]
                assert data.startswith("~") or spec["data"] == str(root / data)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert [p.name for p in root.iterdir()] == ["gates.yaml"]


@SETTINGS
@given(case=documents())
def test_any_gates_file_is_refused_when_read_or_gives_its_own_thresholds(case):
    doc, corrupted = case
    with tempfile.TemporaryDirectory() as tmp:
        _check(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), Path(tmp), doc=doc, corrupted=corrupted)


@settings(SETTINGS, max_examples=30)
@given(raw=RAW)
def test_hostile_gates_texts_are_one_error_line(raw):
    with tempfile.TemporaryDirectory() as tmp:
        _check(raw, Path(tmp), doc=None, corrupted=True)
