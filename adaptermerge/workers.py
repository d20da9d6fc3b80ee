"""Running a merge's modules on every core.

Most modules are small (a 1536 x 576 projection: 2.7M stacked entries), and their work is a
chain of short tensor ops, many of them single-threaded inside PyTorch (bincount, the small
LAPACK calls) or too short to split well. So small modules run `workers` at a time on threads,
each with one intra-op thread, while large ones (a 14336 x 4096 MLP projection) run alone on all
threads: their buffers are big, and two at once would double the peak memory.

Tensors are read from the inputs on the calling thread only (a safetensors handle is used from
one thread), and results come back in module order, so a merge's output does not depend on it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, TypeVar

import torch

from .errors import AdapterMergeError

MAX_WORKERS = 4
QUEUED = 4  # modules submitted per worker: a slow module at the front must not idle the other workers
T = TypeVar("T")
R = TypeVar("R")


def worker_count(device: torch.device) -> int:
    """Threads for small modules: ADAPTERMERGE_WORKERS if set, else one per intra-op thread (at
    most 4), and 1 on a GPU (its kernels queue on one stream anyway)."""
    env = os.environ.get("ADAPTERMERGE_WORKERS")
    if env:
        if not env.isdigit() or int(env) < 1:
            raise AdapterMergeError(f"ADAPTERMERGE_WORKERS must be a positive integer, got {env!r}")
        return int(env)
    if device.type != "cpu":
        return 1
    return max(1, min(MAX_WORKERS, torch.get_num_threads()))


def ordered_map(
    items: Iterable[T],
    read: Callable[[T], object],
    compute: Callable[[T, object], R],
    small: Callable[[T], bool],
    workers: int,
) -> Iterator[tuple[T, R]]:
    """Yield `(item, compute(item, read(item)))` in the order of `items`.

    Small items run up to `workers` at a time, each on one intra-op thread, and up to
    QUEUED * `workers` are submitted (their inputs read, a LoRA module's factors: small), so a slow
    module at the front of the order does not leave the other workers idle while its successors
    wait to be yielded; the dense work in memory stays at `workers` modules. Other items run alone with the
    caller's thread count. torch.set_num_threads is process-wide (OpenMP and MKL), so it is set
    to 1 only while small items are in flight and restored before a large one and at the end."""
    threads = torch.get_num_threads()
    if workers <= 1:
        for item in items:
            yield item, compute(item, read(item))
        return
    pending: deque[tuple[T, Future]] = deque()
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="adaptermerge") as pool:
            for item in items:
                if small(item):
                    torch.set_num_threads(1)
                    pending.append((item, pool.submit(compute, item, read(item))))
                    yield from _finished(pending, QUEUED * workers)
                    continue
                yield from _finished(pending, 0)
                torch.set_num_threads(threads)
                yield item, compute(item, read(item))
            yield from _finished(pending, 0)
    finally:
        for _, future in pending:
            future.cancel()
        torch.set_num_threads(threads)


def _finished(pending: deque, limit: int) -> Iterator[tuple]:
    """Pop and yield results from the front of `pending` while more than `limit` are in flight
    or the front one is already done (limit 0: all of them)."""
    while len(pending) > limit or (pending and pending[0][1].done()):
        item, future = pending.popleft()
        yield item, future.result()


# glibc returns freed blocks above 128 KB to the system at once (mmap), so every fresh module-sized
# temporary is page-faulted in again: measured here, a 10 MB tensor op cost 3.1 ms fresh and
# 1.5 ms reused, and a 1536 x 576 TIES module 33 ms against 28 ms. With heap_reuse, blocks up to
# 32 MB (the cap glibc's own adaptive threshold reaches too) come from the heap and are reused.
# mallopt settings are process-wide and glibc cannot report them to be put back, so the library
# never calls it on its own: a caller opts in (MergePlan(tune_allocator=True)); the CLI does, as its
# process ends after the command.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers


def _libc():
    """glibc through ctypes, or None (not glibc, or ADAPTERMERGE_MALLOPT=0)."""
    if os.environ.get("ADAPTERMERGE_MALLOPT", "1") == "0":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc (macOS, musl...): the default allocator, slower, same results
        return None


@contextmanager
def heap_reuse():
    """Serve module-sized blocks from the heap (glibc only); give the free heap back afterwards.

    Opt-in only: the thresholds it sets stay for the rest of the process."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    try:
        yield
    finally:
        if libc is not None:
            libc.malloc_trim(0)
