"""Torch's CPU thread count, fixed for work whose result must not depend on what else ran.

On the CPU, bfloat16 matrix products round differently with another thread count (the split of
the work changes the order of the sums; float32 forwards were bit-identical on the same machine,
float32 backwards were not). A training run or an evaluation computed at 1 and at 2 threads is
therefore a different computation: the demo's structured adapter, trained from the same settings
at 2 threads (alone) and at 1 thread (beside another run), scored schema-valid 1.000 and 0.983,
and every merge with it moved by a few documents. So training and evaluation choose
their thread count from the machine and their settings only, never from what happens to be cached
or running, and caches key on it.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from .errors import AdapterMergeError


def machine_threads() -> int:
    """The threads torch starts with in a fresh process here: OMP_NUM_THREADS when set, else the
    CPUs this process may run on. Unlike torch.get_num_threads(), it does not change when a
    caller has lowered the count for a while."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def share(processes: int) -> int:
    """Threads for each of `processes` processes that split this machine: at least 1."""
    return max(1, machine_threads() // max(1, processes))


def check(threads: int | None, what: str) -> None:
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise AdapterMergeError(f"{what} must be a positive integer, got {threads!r}")


@contextmanager
def using(threads: int | None) -> Iterator[None]:
    """Run the block with `threads` torch threads (None: leave the count alone), restoring the
    count afterwards. torch.set_num_threads is process-wide."""
    import torch  # heavy: thread counts are read without it

    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
