"""The results cache: one task's scores of one model per file under `cache_dir()/eval/results/`.

A result is keyed by the model's content hash, the task, its documents and whatever else changes
float rounding (see `result_key`); errors are never cached. The runner and its helper process both
read and write it, so a result computed by either is found by the other.
"""

from __future__ import annotations

import hashlib
import json
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .. import base as base_mod
from ..fileio import write_text_atomic
from . import harness
from .settings import EvalSettings

# Bump when a change may alter scores, so cached results are not reused. 2: greedy generation in
# shared, shrinking batches (greedy.py); equal to HF generate's, but batches change float rounding.
# 3: the head's last-position product runs as one matrix product (chat/lmhead.py), not a batched
# one; equal in bfloat16 on the demo's questions, float32 rounding may differ.
SUITE_VERSION = 3


def versions() -> dict:
    """The versions a result depends on (recorded in the report; lm-eval's is part of the key)."""
    out = {"python": platform.python_version()}
    for pkg in ("adaptermerge", "torch", "transformers", "peft", "lm_eval", "datasets"):
        try:
            out[pkg] = version(pkg if pkg != "lm_eval" else "lm-eval")
        except PackageNotFoundError:
            out[pkg] = None
    out["suite"] = SUITE_VERSION
    return out


def result_key(model_hash: str, spec: harness.TaskSpec, settings: EvalSettings, specs: list[harness.TaskSpec]) -> str:
    """The key of `spec`'s result for a model, among the tasks `specs` it is run with. Besides the
    model, the task and its documents, it holds what changes float rounding and so, now and then,
    a greedy token: the dtype, the resolved threads, the batch sizes, and the tasks batched with
    this one (harness.groups runs the chat tasks in one call, so their requests share batches)."""
    group = next(g for g in harness.groups(specs) if spec.name in {x.name for x in g})
    parts = {"model": model_hash, "task": spec.name, "docs": spec.digest, "task_settings": spec.settings,
             "dtype": settings.dtype, "threads": settings.threads, "batch_size": settings.batch_size,
             "context_batch": settings.context_batch, "batched_with": sorted((s.name, s.digest) for s in group),
             "suite": SUITE_VERSION, "lm_eval": versions()["lm_eval"]}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def to_compute(specs: list[harness.TaskSpec], missing: set[str]) -> list[harness.TaskSpec]:
    """The specs to run when `missing` are not cached: each missing one's whole group, so a result
    is always computed with the batch mates its key names."""
    return [s for g in harness.groups(specs) if any(x.name in missing for x in g) for s in g]


def _path(key: str) -> Path:
    return base_mod.cache_dir() / "eval" / "results" / f"{key}.json"


def read(key: str) -> harness.TaskScores | None:
    """The cached result under `key`, or None (absent or unreadable)."""
    path = _path(key)
    if not path.is_file():
        return None
    try:
        return harness.TaskScores.from_dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, TypeError):
        return None


def write(key: str, scores: harness.TaskScores) -> None:
    write_text_atomic(_path(key), json.dumps(scores.to_dict()))
