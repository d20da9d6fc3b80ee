"""The wheel holds every package and the example recipes (pyproject lists its packages by hand, to
map examples/ into the package)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _pyproject() -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_every_package_is_listed_and_the_examples_are_mapped():
    from setuptools import find_packages

    config = _pyproject()["tool"]["setuptools"]
    assert sorted(config["packages"]) == sorted([*find_packages(str(REPO), include=["adaptermerge*"]), "adaptermerge.examples"])
    assert config["package-dir"] == {"adaptermerge.examples": "examples"}
    shipped = config["package-data"]["adaptermerge.examples"]
    examples = REPO / "examples"
    assert (examples / "manga-assist.yaml").is_file() and (examples / "bookshop.yaml").is_file()
    assert all(any(f.relative_to(examples).match(p) for p in shipped) for f in examples.rglob("*")
               if f.is_file() and "adapters" not in f.parts and "__pycache__" not in f.parts)
