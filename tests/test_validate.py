"""The validation layer: strict types, finite bounded numbers, and errors that stay one short line
whatever the value (a YAML alias bomb, a 100 MB string, a 16000-bit integer, 100k nesting)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from adaptermerge import validate
from adaptermerge.errors import AdapterMergeError

BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))


def _error(call, *args, **kwargs) -> str:
    with pytest.raises(AdapterMergeError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and len(message) < 250, message
    return message


def _nested(depth: int):
    root = node = []
    for _ in range(depth):
        node.append([])
        node = node[0]
    return root


# ---------------------------------------------------------------- quote


@pytest.mark.parametrize("value", [
    "x" * 10**7, ["y" * 1000] * 1000, {str(i): i for i in range(10**5)}, 10**5000, _nested(10**5),
    yaml.safe_load(BOMB), b"\0" * 10**6,
], ids=["long string", "long list", "big mapping", "huge integer", "deep nesting", "alias bomb", "bytes"])
def test_quote_is_short_and_cheap_for_any_value(value):
    start = time.perf_counter()
    text = validate.quote(value)
    assert len(text) <= validate.LIMIT and time.perf_counter() - start < 0.1
    assert text.endswith("...") or text.startswith("<")


@pytest.mark.parametrize("value, text", [
    ("tpu", "'tpu'"), (1.7, "1.7"), (None, "None"), ({1: [2, "x"]}, "{1: [2, 'x']}"), (2**80, str(2**80)),
    (float("nan"), "nan"), ((), "()"),
])
def test_quote_of_a_small_value_is_its_repr(value, text):
    assert validate.quote(value) == text


def test_listing_cuts_many_names():
    assert validate.listing(["a", "b"]) == "a, b"
    text = validate.listing([f"key{i}" for i in range(1000)])
    assert len(text) < 120 and text.endswith("more)")
    assert validate.listing([1, "z" * 500]).startswith("1, ")


# ---------------------------------------------------------------- scalars


@pytest.mark.parametrize("value", ["false", "no", "true", 0, 1, None, 0.0, [], "off"])
def test_boolean_takes_only_real_bools(value):
    assert "k must be true or false, got" in _error(validate.boolean, value, "k")


def test_boolean():
    assert validate.boolean(False, "k") is False and validate.boolean(None, "k", optional=True) is None


@pytest.mark.parametrize("value", [True, 1.7, 2.0, "3", None, float("nan"), [1]])
def test_integer_refuses_other_types(value):
    assert "seed must be an integer, got" in _error(validate.integer, value, "seed")


def test_integer_bounds_and_seed():
    import numpy as np

    assert validate.integer(np.int64(3), "k") == 3 and type(validate.integer(np.int64(3), "k")) is int
    assert validate.integer(5, "k", minimum=5, maximum=5) == 5
    assert "k must be an integer >= 6, got 5" == _error(validate.integer, 5, "k", minimum=6)
    assert "k must be an integer <= 4, got 5" == _error(validate.integer, 5, "k", maximum=4)
    assert validate.seed(validate.SEED_MAX, "seed") == validate.SEED_MAX
    for bad in (2**80, -1, 2**63):
        assert "seed must be an integer in 0..9223372036854775807" in _error(validate.seed, bad, "seed")
    assert "<a 16610-bit integer>" in _error(validate.seed, 10**5000, "seed")


@pytest.mark.parametrize("value, message", [
    (True, "a number"), ("0.5", "a number"), (None, "a number"), ([1], "a number"),
    (float("nan"), "a finite number"), (float("inf"), "a finite number"), (-float("inf"), "a finite number"),
    (10**400, "a finite number"),
])
def test_number_refuses(value, message):
    assert f"x must be {message}, got" in _error(validate.number, value, "x")


def test_number_bounds():
    assert validate.number(3, "x") == 3.0 and isinstance(validate.number(3, "x"), float)
    assert validate.number(float("inf"), "x", finite=False) == float("inf")
    assert "must be a finite number" in _error(validate.number, float("nan"), "x", finite=False)  # NaN never
    assert validate.number(0.5, "d", minimum=0, maximum=1) == 0.5
    assert "d must be a number in 0..1, got 1.5" == _error(validate.number, 1.5, "d", minimum=0, maximum=1)
    assert "alpha must be a number greater than 0, got 0" == _error(validate.number, 0, "alpha", above=0)
    assert "alpha must be a number greater than 0, got -1e-09" == _error(validate.number, -1e-9, "alpha", above=0)


def test_string_and_choices():
    assert validate.string("cpu", "device", choices=("cpu", "cuda")) == "cpu"
    assert "device must be one of cpu, cuda, got 'tpu'" == _error(validate.string, "tpu", "device", choices=("cpu", "cuda"))
    assert "model must be a string, got 123" == _error(validate.string, 123, "model")
    assert "must be a non-empty string" in _error(validate.string, "  ", "name", nonempty=True)
    assert "device must be one of cpu, cuda, got ['cpu']" == _error(validate.string, ["cpu"], "device", choices=("cpu", "cuda"))


@pytest.mark.parametrize("value", ["cpu", "cuda", "cuda:1"])
def test_device(value):
    assert validate.device(value, "device") == value


@pytest.mark.parametrize("value", ["tpu", "cuda:", "CPU", 0, "cuda:1:2", "cpu\n"])
def test_device_refused(value):
    assert "device must be cpu, cuda or cuda:N" in _error(validate.device, value, "device")


def test_path(tmp_path):
    assert validate.path("a/b", "p", root=tmp_path) == tmp_path / "a" / "b"
    assert validate.path("/abs", "p", root=tmp_path) == Path("/abs")
    assert validate.path(tmp_path, "p") == tmp_path
    assert validate.path("~", "p") == Path.home()
    for bad in (123, "", "a\0b", None, ["a"]):
        assert "p must be a path (a non-empty string)" in _error(validate.path, bad, "p")


# ---------------------------------------------------------------- containers


def test_mapping():
    assert validate.mapping({"a": 1}, "m", keys=("a", "b")) == {"a": 1}
    assert validate.mapping(None, "m", optional=True) == {}
    assert "m must be a mapping, got [1, 2]" == _error(validate.mapping, [1, 2], "m")
    assert "m: keys must be strings, got the key 1" == _error(validate.mapping, {"a": 1, 1: 2}, "m")
    assert "m: unknown keys zz, yy: expected some of a" == _error(validate.mapping, {"a": 1, "zz": 2, "yy": 3}, "m", keys=("a",))
    assert _error(validate.mapping, {"x" * 10**6: 1}, "m", keys=("a",)).startswith("m: unknown key xxx")
    assert "m: missing key b" == _error(validate.mapping, {"a": 1}, "m", required=("b",))


def test_sequence():
    assert validate.sequence((1, 2), "s") == [1, 2] and validate.sequence(None, "s", optional=True) == []
    assert "s must be a list, got {'a': 1}" == _error(validate.sequence, {"a": 1}, "s")
    assert "s must be a non-empty list, got []" == _error(validate.sequence, [], "s", nonempty=True)
    assert "s must be a list of 2 items, got [1]" == _error(validate.sequence, [1], "s", length=2)


def test_document_refuses_bombs_and_depth_without_recursion():
    assert validate.document({"a": [1, {"b": 2}]}, "f") == {"a": [1, {"b": 2}]}
    assert "more than 200000 values" in _error(validate.document, yaml.safe_load(BOMB), "f.yaml")
    assert "nested deeper than 64 levels" in _error(validate.document, _nested(10**5), "f.yaml")
    validate.document(_nested(63), "f")


def test_probe_never_raises(tmp_path):
    import os

    (tmp_path / "f").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    assert validate.probe(tmp_path / "f") == "file" and validate.probe(tmp_path) == "folder"
    assert validate.probe(tmp_path / "fifo") == "other"
    for missing in (tmp_path / "none", tmp_path / "loop", "x" * 5000, "a\0b", tmp_path / "f" / "under-a-file"):
        assert validate.probe(missing) is None
