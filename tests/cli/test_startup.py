"""The method commands and `methods` read the registry (through cli/catalog.py); no tqdm `\\r`
redraws in a piped log. benchmarks/bench_startup.py measures the CLI's start-up time."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from adaptermerge.methods import METHODS
from adaptermerge.cli.main import main
from support import SHARED_MMLU, save_tiny_chat_model

def test_methods_json_and_options_come_from_the_catalog(capsys):
    with pytest.raises(SystemExit) as info:
        main(["methods", "--json"])
    assert info.value.code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in rows] == list(METHODS)
    ties = next(r for r in rows if r["method"] == "ties")
    assert {"name": "density", "default": 0.2} .items() <= ties["parameters"][0].items()
    with pytest.raises(SystemExit):
        main(["ties", "--help"])
    text = capsys.readouterr().out
    assert "--density" in text and "--lambda" in text and "[auto|exact|sampled]" in text
    with pytest.raises(SystemExit) as info:
        main(["linear", "a", "--no-normalize", "--threshold", "exact"])  # no such option for linear
    assert info.value.code == 2 and "--threshold" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_chat_model(tmp_path_factory.mktemp("tiny_cli_eval"))


def test_a_piped_eval_log_has_no_carriage_returns(tiny_model, tmp_path):
    """lm-eval's own tqdm bars (Task.build_all_requests' "Building contexts", LM.loglikelihood's)
    wrote `\\r` redraws into a piped log: main() sets TQDM_DISABLE before anything imports tqdm."""
    if not (SHARED_MMLU / "test").is_dir():
        pytest.skip(f"the shared MMLU copy is absent ({SHARED_MMLU})")
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"} | {"ADAPTERMERGE_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "adaptermerge", "eval", str(tiny_model), "--base", str(tiny_model), "--tasks", "mmlu",
                           "--mmlu-data", str(SHARED_MMLU), "--mmlu-limit", "1", "--workers", "1", "--threads", "1"],
                          capture_output=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert b"\r" not in done.stderr, done.stderr.decode()[-2000:]
    assert b"evaluating" in done.stderr and b"adaptermerge eval" in done.stdout  # progress on stderr, results on stdout


def test_the_commands_that_answer_at_once_import_no_torch():
    """`--help`, `methods` and usage errors are read off the method registry without torch (about a
    second of import): the method modules take torch through adaptermerge.lazy. The same process then
    merges, so the stand-in must hand over the real module when work starts."""
    script = (
        "import sys\n"
        "from adaptermerge.cli.main import cli\n"
        "from adaptermerge.cli import catalog\n"
        "from adaptermerge.methods import METHODS\n"
        "assert catalog.METHODS and 'ties' in METHODS\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'peft', 'safetensors', 'lm_eval'))\n"
        "assert not heavy, heavy\n"
        "from adaptermerge.lazy import torch\n"
        "t = torch.ones(3)\n"
        "assert 'torch' in sys.modules and isinstance(t, sys.modules['torch'].Tensor)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
