"""The C loops are built once per machine into the cache folder, and their absence is harmless."""

import logging

import pytest
import torch

from adaptermerge.methods import _native, backends, math
from adaptermerge.methods.backends import Backend

needs_native = pytest.mark.skipif(_native.library() is None, reason="no working C compiler here: the other backends run instead")


def test_no_compiler_falls_back_to_eager_with_a_warning(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(_native, "_state", {})
    monkeypatch.setenv("ADAPTERMERGE_CACHE", str(tmp_path))  # nothing built there yet
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with caplog.at_level(logging.WARNING, logger=_native.__name__):
        assert _native.library() is None
    assert "using eager PyTorch" in caplog.text
    x = torch.randn(2, 1000)
    assert backends.choose(x) is Backend.EAGER
    assert torch.equal(backends.magnitude_cut(x, 100), math.magnitude_cut(x, 100))


@needs_native
def test_built_once_into_the_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setattr(_native, "_state", {})
    monkeypatch.setenv("ADAPTERMERGE_CACHE", str(tmp_path))
    assert _native.library() is not None
    built = list((tmp_path / "native").iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"  # the temp file was renamed, not left behind
    monkeypatch.setattr(_native, "_state", {})
    stamp = built[0].stat().st_mtime_ns
    assert _native.library() is not None
    assert built[0].stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_disabled_by_the_environment(monkeypatch):
    monkeypatch.setenv("ADAPTERMERGE_NATIVE", "0")
    assert _native.library() is None
