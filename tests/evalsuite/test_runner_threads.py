"""An evaluation's thread count is chosen before knowing how many models are left (it is part of
every result's cache key: see test_cache.py)."""

from __future__ import annotations

import pytest

from adaptermerge.errors import AdapterMergeError
from adaptermerge.evalsuite import runner
from adaptermerge.evalsuite.settings import EvalSettings


def test_eval_threads_share_the_machine_whatever_is_left_to_do(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    assert runner.eval_threads(EvalSettings()) == 2  # two processes allowed: half each, helper or not
    assert runner.eval_threads(EvalSettings(workers=1)) == 4
    assert runner.eval_threads(EvalSettings(use_cache=False)) == 4  # no helper without the cache
    assert runner.eval_threads(EvalSettings(workers=2, use_cache=False)) == 4  # even when asked for
    assert runner.eval_threads(EvalSettings(threads=3)) == 3
    with pytest.raises(AdapterMergeError, match="threads must be a positive integer"):
        runner.eval_threads(EvalSettings(threads=0))
