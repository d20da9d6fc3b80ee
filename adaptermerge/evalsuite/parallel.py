"""A helper process that evaluates part of the models, on a multi-core CPU.

Generating with a small model on the CPU is dominated by per-token Python and dispatch overhead,
which a second torch thread does not speed up; a second process does. On 2 cores, two single-
threaded processes evaluated a quick-demo candidate every 13 s where one two-threaded process
took 18 s (2026-11-23). The helper takes every other model that has work left, writes its scores
into the results cache, and reports what it did; the main process then reads them from the
cache like any cached result, and evaluates itself anything the helper did not finish.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import threading
import time

log = logging.getLogger(__name__)

# Below this many models with work left, starting a process (about 10 s of imports) does not pay.
MIN_MODELS = 3


def wanted(settings, pending: int) -> bool:
    """Use a helper: more than one core, the CPU, the results cache on (the helper's channel)."""
    import torch

    workers = settings.workers if settings.workers is not None else (2 if (os.cpu_count() or 1) >= 2 else 1)
    return workers > 1 and pending >= MIN_MODELS and settings.use_cache and not torch.cuda.is_available()


class Helper:
    """`spec_args`: what `runner._specs` rebuilds the task specs from in the helper (a spec holds
    lm-eval callables, which do not pickle)."""

    def __init__(self, candidates, spec_args: tuple, settings, base_name):
        ctx = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools mid-flight
        self.names = {c.name for c in candidates}
        self.queue = ctx.Queue()
        self.process = ctx.Process(target=_work, args=(candidates, spec_args, dataclasses.replace(settings, threads=1), base_name, self.queue),
                                   daemon=True)
        self.process.start()

    def finish(self) -> dict[str, float]:
        """Wait for the helper; {model name: seconds} of the models it evaluated completely."""
        done: dict[str, float] = {}
        while self.process.is_alive() or not self.queue.empty():
            try:
                name, seconds = self.queue.get(timeout=1.0)
            except Exception:  # queue.Empty: still working (or just exited)
                continue
            if seconds is not None:
                done[name] = seconds
        self.process.join()
        if self.process.exitcode not in (0, None):
            log.warning("the evaluation helper exited with %s; its remaining models are evaluated here", self.process.exitcode)
        return done


def exit_with_parent() -> None:
    """End this (spawned) process as soon as its parent is gone. `daemon=True` only covers a parent
    that exits normally; killed (Ctrl-C twice, SIGTERM, OOM), it left the helper evaluating on, an
    orphan holding a core (2026-12-02: 27 minutes of CPU after its demo was killed)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _work(candidates, spec_args, settings, base_name, queue) -> None:
    """In the helper process: evaluate each candidate's uncached tasks and cache the results."""
    import torch

    from . import runner

    exit_with_parent()
    torch.set_num_threads(1)
    specs = runner._specs(*spec_args)
    for candidate in candidates:
        started = time.perf_counter()
        try:
            model_hash = runner.cand_mod.content_hash(candidate)
            keys = {s.name: runner.cache_key(model_hash, s, settings) for s in specs}
            missing = [s for s in specs if runner._cache_read(keys[s.name]) is None]
            fresh = runner._evaluate_model(candidate, missing, settings, base_name, lambda *a: None, 0, 1) if missing else {}
            complete = True
            for name, result in fresh.items():
                if result.error is None:
                    runner._cache_write(keys[name], result)
                else:
                    complete = False  # the main process retries it and reports the error itself
            queue.put((candidate.name, round(time.perf_counter() - started, 2) if complete else None))
        except Exception:  # anything left undone is evaluated by the main process
            log.exception("evaluation helper: %s failed", candidate.name)
            queue.put((candidate.name, None))
        finally:
            import gc

            gc.collect()
