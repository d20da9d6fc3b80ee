"""The C loops are an optional extension built at install time; their absence is harmless and quiet."""

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adaptermerge.methods import _native, backends, math
from adaptermerge.methods.backends import Backend

ROOT = Path(__file__).resolve().parents[2]
needs_native = pytest.mark.skipif(_native.library() is None, reason="extension not built here: the PyTorch backends run instead")


def test_a_missing_extension_falls_back_to_eager_without_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(_native, "_state", {})
    monkeypatch.setitem(sys.modules, "adaptermerge.methods._native_ext", None)  # import fails as if never built
    with caplog.at_level(logging.DEBUG, logger=_native.__name__):
        assert _native.library() is None
        assert _native.library() is None  # asked once per process, not per module
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]
    x = torch.randn(2, 1000)
    assert backends.choose(x) is Backend.EAGER
    assert torch.equal(backends.magnitude_cut(x, 100), math.magnitude_cut(x, 100))


def test_disabled_by_the_environment(monkeypatch):
    monkeypatch.setenv("ADAPTERMERGE_NATIVE", "0")
    assert _native.library() is None
    assert backends.choose(torch.zeros(2, 10)) is not Backend.NATIVE


@needs_native
def test_the_environment_caps_the_variant(monkeypatch):
    best = _native.library()
    assert best.isas[0] == "baseline" and best.isa_name == best.isas[-1]  # the best variant by default
    monkeypatch.setenv("ADAPTERMERGE_NATIVE", "baseline")
    assert _native.library().isa_name == "baseline"
    monkeypatch.setenv("ADAPTERMERGE_NATIVE", "no-such-isa")
    assert _native.library().isa_name == best.isa_name


@needs_native
def test_the_extension_refuses_bad_arguments():
    lib = _native.library()
    x, out = torch.randn(2, 50), torch.empty(2)
    with pytest.raises(ValueError, match="k must be"):
        lib.kth_largest(x.data_ptr(), 2, 50, 51, out.data_ptr(), 0)
    with pytest.raises(ValueError, match="ISA index"):
        lib.kth_largest(x.data_ptr(), 2, 50, 5, out.data_ptr(), len(lib.isas))
    with pytest.raises(ValueError, match="weights"):  # 2 rows, 1 weight
        lib.ties_combine(x.data_ptr(), 2, 50, out.data_ptr(), b"\0\0\0\0", x.data_ptr(), out.data_ptr(), 0)


@pytest.mark.skipif(sys.platform == "win32", reason="CC is not how MSVC is chosen")
def test_the_build_is_optional_without_a_compiler(tmp_path):
    """setup.py's extension is optional: with no working compiler, building it succeeds with a
    note, so `pip install` works on a machine without one."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "adaptermerge" / "methods", src / "adaptermerge" / "methods", ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    shutil.copy(ROOT / "setup.py", src)
    env = {**os.environ, "CC": str(tmp_path / "no-such-compiler"), "LDSHARED": str(tmp_path / "no-such-compiler")}
    proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--build-lib", str(tmp_path / "lib"), "--build-temp", str(tmp_path / "tmp")],
                          cwd=src, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "_native_ext" in proc.stdout + proc.stderr  # setuptools says which build it skipped
    assert not list((tmp_path / "lib").rglob("_native_ext*"))
