"""The library changes nothing process-wide: no environment variable on import or during a merge,
the caller's torch thread count back after one, and glibc's allocator settings only when asked."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from adaptermerge import load_adapter, merge, merge_to_model, workers

# What the library once set, or could set through a dependency: kept out of the child's
# environment, so that setting one of them (even with setdefault) shows as a change.
WATCHED = ("THP_MEM_ALLOC_ENABLE", "TOKENIZERS_PARALLELISM", "TQDM_DISABLE", "OMP_NUM_THREADS", "MKL_NUM_THREADS")

CHILD = """
import json, os, sys
import torch
torch.set_num_threads(2)
before = dict(os.environ)
import adaptermerge
after_import = dict(os.environ)
a, c, base, out = sys.argv[1:5]
os.environ["ADAPTERMERGE_WORKERS"] = "2"  # the threaded path, which changes the thread count while it runs
before_merge = dict(os.environ)
adaptermerge.merge([adaptermerge.load_adapter(a), adaptermerge.load_adapter(c)], "ties", density=0.5, out=out + "/adapter")
adaptermerge.merge_to_model([adaptermerge.load_adapter(a)], out + "/model", base=base)
changed = lambda x, y: sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k))
print(json.dumps({"import": changed(before, after_import), "merge": changed(before_merge, dict(os.environ)),
                  "threads": torch.get_num_threads()}))
"""


def test_import_and_merges_leave_the_environment_alone(adapters, tiny_base, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in WATCHED}
    done = subprocess.run([sys.executable, "-c", CHILD, str(adapters["a"]), str(adapters["c"]), str(tiny_base), str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"import": [], "merge": [], "threads": 2}


def test_a_merge_gives_back_the_callers_thread_count_and_environment(adapters, monkeypatch, two_threads, tmp_path):
    monkeypatch.setenv("ADAPTERMERGE_WORKERS", "2")
    env = dict(os.environ)
    merge([load_adapter(adapters["a"]), load_adapter(adapters["b"])], "ties", density=0.3)
    assert torch.get_num_threads() == 2 and dict(os.environ) == env


def test_a_failing_progress_callback_still_restores_the_thread_count(adapters, monkeypatch, two_threads):
    monkeypatch.setenv("ADAPTERMERGE_WORKERS", "2")

    def progress(done, total, module):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        merge([load_adapter(adapters["a"]), load_adapter(adapters["b"])], "ties", density=0.3, progress=progress)
    assert torch.get_num_threads() == 2


class FakeLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, *args):
        self.calls.append(("mallopt", args))
        return 1

    def malloc_trim(self, *args):
        self.calls.append(("malloc_trim", args))
        return 1


def test_the_allocator_is_tuned_only_when_asked(adapters, tiny_base, monkeypatch, tmp_path):
    libc = FakeLibc()
    monkeypatch.setattr(workers, "_libc", lambda: libc)
    inputs = [load_adapter(adapters["a"]), load_adapter(adapters["c"])]
    merge(inputs, "ties", density=0.5, out=tmp_path / "adapter")
    merge_to_model(inputs[:1], tmp_path / "model", base=str(tiny_base))
    assert libc.calls == []
    merge(inputs, "ties", density=0.5, tune_allocator=True)
    assert [name for name, _ in libc.calls] == ["mallopt", "mallopt", "malloc_trim"]
