"""The library, loaded when a command runs rather than when the CLI starts.

Importing the api loads torch, transformers and peft: seconds. `adaptermerge --help`, `methods`,
`--version` and usage errors need none of it, so the command modules import only click, rich and
light modules at the top, and a command that works calls load_api() in its callback (start-up
time; benchmarks/bench_startup.py measures it, tests/cli/test_startup.py pins it).
"""

from __future__ import annotations

import importlib

from ..errors import AdapterMergeError
from ..quiet import quiet_third_party

EVAL_EXTRA_HINT = "pip install 'adaptermerge[eval]'"


def load_api():
    """The adaptermerge.api module, imported now, with the third-party chatter silenced (which
    itself imports transformers' logging: part of what start-up leaves out)."""
    from .. import api  # torch, transformers, peft: start-up time

    quiet_third_party()
    return api


def require_eval_extra(command: str) -> None:
    """Refuse, as bad input (exit 2), a command that evaluates when lm-eval, the `eval` extra, is
    missing or cannot be imported: one line with the fix, instead of a traceback deep in a run."""
    try:
        importlib.import_module("lm_eval")
    except ImportError as exc:
        raise AdapterMergeError(f"adaptermerge {command} needs lm-eval, the 'eval' extra ({exc}): {EVAL_EXTRA_HINT}") from None
    from ..evalsuite.harness import check_lm_eval_version

    check_lm_eval_version()  # before any model is loaded
