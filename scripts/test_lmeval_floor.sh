#!/usr/bin/env bash
# The tests that run lm-eval's code, on the lowest lm-eval release pyproject.toml accepts (or on
# the releases given):  bash scripts/test_lmeval_floor.sh [VERSION ...]
# Each release goes into its own venv that sees this environment's packages
# (--system-site-packages), so only lm-eval, and what it needs that is missing here, is installed;
# the venv's lm-eval shadows the one installed here. Venvs are kept under $LMEVAL_VENVS
# (default: .cache/lmeval-venvs) and reused.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
floor=$(sed -n 's/.*"lm-eval>=\([0-9.]*\),.*/\1/p' pyproject.toml | head -n 1)
[ -n "$floor" ] || { echo "error: no lm-eval>=X,<Y requirement found in pyproject.toml" >&2; exit 2; }
[ $# -gt 0 ] || set -- "$floor"
root="${LMEVAL_VENVS:-$PWD/.cache/lmeval-venvs}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's package, whatever is installed
for version in "$@"; do
    venv="$root/$version"
    [ -x "$venv/bin/python" ] || "$PY" -m venv --system-site-packages "$venv"
    "$venv/bin/python" -m pip install -q "lm-eval==$version"
    got=$("$venv/bin/python" -c 'from importlib.metadata import version; print(version("lm-eval"))')
    [ "$got" = "$version" ] || { echo "error: the venv has lm-eval $got, not $version" >&2; exit 1; }
    echo "== lm-eval $version"
    # Not the `slow` tests: the tiny model runs the same lm-eval code paths in seconds.
    "$venv/bin/python" -m pytest -p no:cacheprovider -m "not slow" \
        tests/evalsuite/test_lmeval_compat.py tests/evalsuite/test_fastlm.py tests/evalsuite/test_greedy.py \
        tests/evalsuite/test_harness.py "tests/evalsuite/test_eval.py::test_task_yaml_through_lm_eval_loader"
done
