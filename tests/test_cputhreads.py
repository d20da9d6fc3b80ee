"""Thread counts chosen from the machine (cputhreads): what the caches key on."""

from __future__ import annotations

import os

import pytest
import torch

from adaptermerge import cputhreads
from adaptermerge.errors import AdapterMergeError


def test_machine_threads_follow_omp_num_threads_else_the_cpus(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cputhreads.machine_threads() == 3
    assert (cputhreads.share(1), cputhreads.share(2), cputhreads.share(4)) == (3, 1, 1)
    for bad in ("", "0", "two"):
        monkeypatch.setenv("OMP_NUM_THREADS", bad)
        assert cputhreads.machine_threads() == len(os.sched_getaffinity(0))


def test_machine_threads_ignore_a_lowered_torch_count(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    with cputhreads.using(1):
        assert torch.get_num_threads() == 1 and cputhreads.machine_threads() == 2


def test_using_restores_the_count_also_after_an_error():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError):
        with cputhreads.using(before + 1):
            assert torch.get_num_threads() == before + 1
            raise RuntimeError("inside")
    assert torch.get_num_threads() == before
    with cputhreads.using(None):
        assert torch.get_num_threads() == before


def test_check_names_the_setting():
    cputhreads.check(None, "--threads")
    cputhreads.check(2, "--threads")
    with pytest.raises(AdapterMergeError, match="--threads must be a positive integer, got 0"):
        cputhreads.check(0, "--threads")
