"""Property: whatever a merge YAML file holds, `adaptermerge merge FILE` either exits 2 with one
`error:` line naming the file, or merges correctly (exit 0, the expected delta). Either way the
input adapters are unchanged (sha256), an existing output is replaced only when the file says
`force: true` (a real bool), and a refused merge leaves no output and no temp folder behind.

Documents are valid merge files with 0 to 3 values replaced by hostile ones (strings for bools,
huge or non-finite numbers, nested containers, integer keys), plus raw texts: deep nesting, alias
bombs, binary bytes."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from adaptermerge import load_adapter
from adaptermerge.cli.main import main

SETTINGS = settings(max_examples=100, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])
MAX_LINE = 500  # an error line: the file's path, the key, what was expected, a value cut to ~80 characters

SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2**100), max_value=2**100)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.sampled_from([1e308, -1e308, 2**80, 1.7, 0, -1, "false", "no", "true", "yes", "tpu", "abc", "", "0.5", "nan",
                              "x" * 5000, "a\0b"]))
JUNK = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=4),
                    max_leaves=10)
PATHS = ["merge_method", "models", "models.0", "models.0.model", "models.0.parameters", "models.0.parameters.weight", "models.1.alpha",
         "parameters", "parameters.density", "parameters.lambda", "parameters.normalize", "seed", "out", "force", "check_base", "device",
         "output", "rank", "base_model", "shard_size", "compute_dtype", "colour", 7]


@st.composite
def documents(draw):
    """(document, corrupted): a valid merge file, then some values replaced by junk."""
    method = draw(st.sampled_from(["linear", "task_arithmetic", "ties"]))
    weighted = draw(st.booleans())
    models = [{"model": name, "parameters": {"weight": draw(st.floats(0.1, 2))}} if weighted else name for name in ("a", "c")]
    params = {"linear": {"normalize": draw(st.booleans())}, "task_arithmetic": {"lambda": draw(st.floats(-2, 2))},
              "ties": {"density": draw(st.floats(0.1, 1))}}[method]
    doc = {"merge_method": method, "models": models, "parameters": params, "out": "merged"}
    for key, value in (("seed", st.integers(0, 2**63 - 1)), ("force", st.booleans()), ("check_base", st.booleans()), ("device", st.just("cpu"))):
        if draw(st.booleans()):
            doc[key] = draw(value)
    corrupted = False
    for path in draw(st.lists(st.sampled_from(PATHS), max_size=3, unique=True)):
        # never a string for `out`: a random one ("/", "..") with force: true would replace a real folder
        value = draw(JUNK.filter(lambda v: not isinstance(v, str)) if path == "out" else JUNK)
        corrupted |= _replace(doc, path, value)
    return doc, corrupted


def _replace(doc: dict, path, value) -> bool:
    """Put `value` at the dotted `path` (the parents must exist and be containers); True if done."""
    *parents, last = str(path).split(".") if isinstance(path, str) else [path]
    node = doc
    for p in parents:
        node = node[int(p)] if isinstance(node, list) and p.isdigit() and int(p) < len(node) else node.get(p) if isinstance(node, dict) else None
        if not isinstance(node, (dict, list)):
            return False
    if isinstance(node, list):
        if not (isinstance(last, str) and last.isdigit() and int(last) < len(node)):
            return False
        node[int(last)] = value
    else:
        node[last] = value
    return True


RAW = st.one_of(
    st.integers(30, 1500).map(lambda n: "merge_method: ties\nmodels: " + "[" * n + "a" + "]" * n + "\nout: merged\n"),
    st.integers(3, 9).map(lambda n: "merge_method: ties\nmodels: [a]\nout: merged\n" + "x0: &x0 [lol, lol, lol, lol, lol, lol, lol, lol]\n"
                          + "".join(f"x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 8)}]\n" for i in range(1, n))
                          + f"parameters: {{density: *x{n - 1}}}\n"),
    st.binary(max_size=200),
    st.text(max_size=200),
)


def _digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _cli(argv) -> tuple[int, str]:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    return info.value.code, err.getvalue()


@pytest.fixture(scope="module")
def inputs(adapters, tmp_path_factory):
    """Two tiny adapters in a folder of their own: each example copies them next to its file."""
    root = tmp_path_factory.mktemp("yaml_inputs")
    for name in ("a", "c"):
        shutil.copytree(adapters[name], root / name)
    return root


def _expected_delta(doc: dict, root: Path, module: str) -> torch.Tensor | None:
    """The merged delta that linear and task_arithmetic must give (None: another method)."""
    method = doc.get("merge_method")
    if method not in ("linear", "task_arithmetic"):
        return None
    weights = [m["parameters"]["weight"] if isinstance(m, dict) else 1.0 for m in doc["models"]]
    params = doc.get("parameters") or {}
    if method == "linear" and params.get("normalize", True):
        weights = [w / sum(weights) for w in weights]
    if method == "task_arithmetic" and params.get("normalize") is True:  # mergekit's option: the weights divided by their sum
        weights = [w / sum(weights) for w in weights]
    if method == "task_arithmetic":
        weights = [w * params.get("lambda", 1.0) for w in weights]
    deltas = [load_adapter(root / (m["model"] if isinstance(m, dict) else m)).factors(module).delta() for m in doc["models"]]
    return sum(w * d for w, d in zip(weights, deltas))


def _check(text_or_bytes, root: Path, *, corrupted: bool, doc: dict | None, existing: bool) -> None:
    config = root / "merge.yaml"
    if isinstance(text_or_bytes, bytes):
        config.write_bytes(text_or_bytes)
    else:
        config.write_text(text_or_bytes)
    out = root / "merged"
    if existing:
        out.mkdir()
        (out / "keep.txt").write_text("precious")
    before = _digest(root)
    listing = sorted(p.name for p in root.iterdir())
    code, err = _cli(["merge", config])
    event(f"exit {code}")
    assert code in (0, 2), err
    after = _digest(root)
    assert {k: v for k, v in after.items() if not k.startswith("merged/")} == {k: v for k, v in before.items() if not k.startswith("merged/")}
    if code == 2:
        assert err.startswith("error: ") and err.count("\n") == 1 and len(err) < MAX_LINE, err[:2000]
        assert "Traceback" not in err
        assert sorted(p.name for p in root.iterdir()) == listing  # no output, no temp folder
        assert after == before  # an existing output untouched
        assert doc is None or corrupted or (existing and doc.get("force") is not True), err
        return
    assert doc is not None, "a raw text merged"
    assert not existing or doc.get("force") is True, "an existing output was replaced without force: true"
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == []
    merged = load_adapter(out)
    meta = json.loads((out / "adaptermerge.json").read_text())
    assert meta["method"] == doc["merge_method"]
    for module in list(merged.modules)[:3]:
        delta = merged.factors(module).delta()
        assert torch.isfinite(delta).all()
        expected = _expected_delta(doc, root, module)
        if expected is not None:
            torch.testing.assert_close(delta, expected, atol=1e-4, rtol=1e-3)


@SETTINGS
@given(case=documents(), existing=st.booleans())
def test_any_merge_yaml_is_one_error_line_or_a_correct_merge(inputs, case, existing):
    doc, corrupted = case
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in ("a", "c"):
            shutil.copytree(inputs / name, root / name)
        _check(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), root, corrupted=corrupted, doc=doc, existing=existing)


@settings(SETTINGS, max_examples=30)
@given(raw=RAW)
def test_hostile_texts_are_one_error_line(inputs, raw):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _check(raw, root, corrupted=True, doc=None, existing=False)
