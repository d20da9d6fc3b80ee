"""scripts/gpu-check.sh and the `--device cuda` path it measures: the script parses, its stages
cover every registered merge method and every training preset, and `--device cuda` is a one-line
error without CUDA and the CPU's merge with it."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import torch

from adaptermerge import load_adapter
from adaptermerge.cli.main import main
from support import REPO

SCRIPT = REPO / "scripts" / "gpu-check.sh"


def run(argv):
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    return info.value.code


def script(*args: str) -> subprocess.CompletedProcess:
    # Option parsing and --list come before anything that imports torch: this takes milliseconds.
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def stages() -> list[str]:
    done = script("--list")
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_script_parses():
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_script_passes_shellcheck():
    done = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout


def test_every_registered_method_has_a_merge_stage():
    from adaptermerge.methods import METHODS

    merged = {s.split(":", 1)[1] for s in stages() if s.startswith("merge:")}
    assert set(METHODS) - merged == set(), "registered methods without a merge stage in scripts/gpu-check.sh"
    assert merged - set(METHODS) == set(), "merge stages for methods that are not registered"


def test_every_preset_trains_and_the_other_figures_have_stages():
    from adaptermerge.training.presets import PRESETS

    have = set(stages())
    presets = {f"train:{task}" for task in PRESETS if task != "custom"}  # custom needs the user's data
    assert presets and presets <= have
    assert {"eval", "demo", "bench:a", "bench:b", "bench:b-peft"} <= have


@pytest.mark.parametrize("args, expected", [(["--bogus"], "unknown option --bogus"), (["--demo", "fast"], "--demo fast"),
                                            (["--budget", "8m"], "--budget 8m")])
def test_bad_options_are_one_line_errors(args, expected):
    done = script(*args)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error:") and expected in done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_device_cuda_without_cuda_is_one_line_error(adapters, tmp_path, capsys):
    out = tmp_path / "merged"
    assert run(["ties", adapters["a"], adapters["c"], "-o", out, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "cuda" in lines[0], err
    assert not out.exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method, keys, extra", [
    ("linear", ("a", "b"), []),
    ("ties", ("a", "b", "c"), ["--density", "0.3"]),
    ("sequential", ("dora", "dora2"), []),
    ("dora", ("dora", "dora2"), []),
])
def test_device_cuda_merge_equals_the_cpu_merge(adapters, tmp_path, method, keys, extra):
    inputs = [adapters[k] for k in keys]
    for device in ("cpu", "cuda"):
        assert run([method, *inputs, "-o", tmp_path / device, "--device", device, *extra]) == 0
    cpu, gpu = load_adapter(tmp_path / "cpu"), load_adapter(tmp_path / "cuda")
    assert set(gpu.modules) == set(cpu.modules) and cpu.modules
    for m in cpu.modules:
        torch.testing.assert_close(gpu.factors(m).delta(), cpu.factors(m).delta(), atol=1e-5, rtol=1e-4)
