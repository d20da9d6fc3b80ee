"""A helper process that evaluates part of the models, on a multi-core CPU.

Generating with a small model on the CPU is dominated by per-token Python and dispatch overhead,
which a second torch thread does not speed up; a second process does. On 2 cores, two single-
threaded processes evaluated a quick-demo candidate every 13 s where one two-threaded process
took 18 s.

The helper and this process share one queue of models: each takes the next model when it is free.
The helper scores a model as the runner does (scoring.py), writes its scores into the results
cache (cache.py) and reports what it finished; this process then reads them like any cached result
(and evaluates itself anything the helper did not finish).
Models can be submitted before the rest exist: the demo starts the helper as soon as the base and
the single-task adapters are there and feeds it each merge as it is written, so the evaluation
runs beside the baselines' training and merging instead of after them.

A queue item is a whole model or, for the models of a last partial round (one model to score with
the base cached, say), one of its task groups: the helper loads the model too and runs the MMLU
group while this process runs the chat group (`units`). Each group is computed with the same batch
mates and threads either way, so its scores, and its cache keys, do not depend on the split.
Measured (2 cores, one regmean merge with the base cached, the demo's tasks): 39.8 s split,
against 60.4 s in this process alone at one thread and 43.1 s alone at two; the same scores.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import queue as queue_mod
import threading
import time
from dataclasses import dataclass

from ..quiet import quiet_third_party
from . import cache, scoring
from .candidates import Candidate, content_hash
from .settings import EvalSettings

log = logging.getLogger(__name__)

# Below this many models with work left, starting a process (about 10 s of imports) does not pay.
# Two do: the base and one adapter, nothing cached, the demo's tasks (2 cores): 81 s
# with the helper, 145 s in this process alone at its one thread, 97 s alone at two threads.
MIN_MODELS = 2


@dataclass(frozen=True)
class Unit:
    """One item of the shared queue: a model (`tasks` None: every task it lacks) or one of its task
    groups (the names of that group's tasks)."""

    candidate: Candidate
    tasks: tuple[str, ...] | None = None

    @property
    def key(self) -> tuple:
        return (self.candidate.name, self.tasks)


def units(pending: list[tuple[Candidate, list[tuple[str, ...]]]], processes: int) -> list[Unit]:
    """The queue for `pending` [(candidate, its task groups with work left)]: whole models, each
    loaded once, as far as they fill every process; the models of a last, partial round (all of
    them when there are fewer models than processes) go as one unit per task group, so that no
    process sits idle while the others finish. Groups keep the order given (harness.groups puts
    the chat group, the longest, first)."""
    whole = len(pending) - len(pending) % max(1, processes)
    out = [Unit(c) for c, _ in pending[:whole]]
    for candidate, groups in pending[whole:]:
        out += [Unit(candidate, g) for g in groups] if len(groups) > 1 else [Unit(candidate)]
    return out


def processes(settings: EvalSettings) -> int:
    """Evaluation processes the settings allow: 1 with the results cache off (the helper's
    channel), else `workers` if set, else 2 on a multi-core machine without CUDA. It does not
    depend on how many models are left, so neither does each process's thread count
    (runner.eval_threads)."""
    import torch  # heavy: the caller may not have loaded it yet

    if not settings.use_cache:
        return 1
    if settings.workers is not None:
        return settings.workers
    return 2 if (os.cpu_count() or 1) >= 2 and not torch.cuda.is_available() else 1


def wanted(settings: EvalSettings, pending: int) -> bool:
    """Use a helper: more than one process allowed and enough models to pay for starting it."""
    return processes(settings) > 1 and pending >= MIN_MODELS


class Helper:
    """`spec_args`: what `scoring.task_specs` rebuilds the task specs from in the helper (a spec
    holds lm-eval callables, which do not pickle); `runner.evaluate` checks that they are its own."""

    def __init__(self, spec_args: tuple, settings: EvalSettings, base_name: str | None):
        ctx = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools mid-flight
        self.spec_args = spec_args
        self.threads = settings.threads  # its torch threads: resolved by the caller
        self._submitted: set[tuple] = set()  # Unit.key of everything queued
        self.todo = ctx.Queue()
        self.reports = ctx.Queue()
        # A spawned process starts with default warning filters and log levels: it is as quiet as this one.
        quiet = logging.getLogger("transformers").getEffectiveLevel() >= logging.ERROR
        self.process = ctx.Process(target=_work, args=(self.todo, self.reports, spec_args, settings, base_name, quiet),
                                   daemon=True)
        self.process.start()

    def submit(self, candidate: Candidate, tasks: tuple[str, ...] | None = None) -> None:
        """Queue a model (or, with `tasks`, that task group of it) for whichever process is free
        first; once per model, or per group of a model not queued whole."""
        unit = Unit(candidate, tuple(tasks) if tasks is not None else None)
        if (candidate.name, None) in self._submitted or unit.key in self._submitted:
            return
        self._submitted.add(unit.key)
        self.todo.put(unit)

    @property
    def names(self) -> set[str]:
        """The models submitted, whole or in part."""
        return {name for name, _ in self._submitted}

    def take(self) -> Unit | None:
        """The next queued unit for this process to evaluate itself, or None when none is left."""
        try:
            # A model this process put is in the pipe within milliseconds (the queue's feeder thread).
            return self.todo.get(timeout=0.2)
        except queue_mod.Empty:
            return None

    def finish(self) -> dict[tuple, float]:
        """Close the queue, wait for the helper; {Unit.key: seconds} of the units it evaluated completely."""
        self.todo.put(None)
        done: dict[tuple, float | None] = {}
        while self.process.is_alive() or not self.reports.empty():
            try:
                key, seconds = self.reports.get(timeout=1.0)
            except queue_mod.Empty:  # still working (or just exited)
                continue
            done[tuple(key)] = seconds
        self.process.join()
        if self.process.exitcode not in (0, None):
            log.warning("the evaluation helper exited with %s; its remaining models are evaluated here", self.process.exitcode)
        return {key: seconds for key, seconds in done.items() if seconds is not None}

    def close(self) -> None:
        """Stop the helper without waiting for its queue (on an error in this process)."""
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(timeout=10)


def exit_with_parent() -> None:
    """End this (spawned) process as soon as its parent is gone. `daemon=True` only covers a parent
    that exits normally; killed (Ctrl-C twice, SIGTERM, OOM), it left the helper evaluating on, an
    orphan holding a core (once 27 minutes of CPU after its demo was killed)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _work(todo, reports, spec_args, settings, base_name, quiet=False) -> None:
    """In the helper process: evaluate the uncached tasks of each queued model, cache the results,
    until the queue's end (None)."""
    import torch  # heavy: loaded in the helper process only

    if quiet:
        quiet_third_party()
    exit_with_parent()
    torch.set_num_threads(settings.threads)  # resolved by the caller: the same count as its own
    specs = scoring.task_specs(*spec_args)
    while (unit := todo.get()) is not None:
        started = time.perf_counter()
        candidate = unit.candidate
        try:
            model_hash = content_hash(candidate)
            # Keys over all the specs: a group's batch mates are the same whether or not it runs alone.
            keys = {s.name: cache.result_key(model_hash, s, settings, specs) for s in specs}
            mine = [s for s in specs if unit.tasks is None or s.name in unit.tasks]
            missing = cache.to_compute(specs, {s.name for s in mine if cache.read(keys[s.name]) is None})
            if not missing:  # cached before: the main process reports it as such
                reports.put((unit.key, None))
                continue
            fresh = scoring.score_model(candidate, missing, settings, base_name, lambda *a: None, 0, 1)
            complete = True
            for name, result in fresh.items():
                if result.error is None:
                    cache.write(keys[name], result)
                else:
                    complete = False  # the main process retries it and reports the error itself
            reports.put((unit.key, round(time.perf_counter() - started, 2) if complete else None))
        except Exception:  # anything left undone is evaluated by the main process
            log.exception("evaluation helper: %s failed", candidate.name)
            reports.put((unit.key, None))
        finally:
            gc.collect()
