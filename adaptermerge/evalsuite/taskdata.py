"""Evaluation documents for the chat tasks: built-in eval splits and user JSONL files.

A chat record `{"messages": [system?, user, assistant], "meta": {...}}` becomes one flat lm-eval
document (flat, because a datasets.Dataset needs one schema for every row):

    {"id": 7, "task": "domain", "scorer": "domain", "system": "", "prompt": "...", "target": "...",
     "meta": "<the record's meta as JSON text>"}

The task YAML reads `prompt` as the user turn, `system` as a per-document system message
(lm-eval's `description`), and scores the reply with `metrics.score(scorer, reply, meta)`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..chat.data import DATA_SEED, build_records
from ..chat.records import META_KEYS, read_jsonl
from ..errors import AdapterMergeError
from .metrics import METRICS, TASKS

BUILTIN_TASKS = TASKS  # domain, structured, safety
# The preset whose scorer defines each metric (a user task names a metric; its scorer follows).
METRIC_SCORER = {metric: task for task, metrics in METRICS.items() for metric in metrics}
# Longest reply each built-in task needs (the training answers are at most 15, 50 and 31 tokens).
MAX_GEN_TOKS = {"domain": 32, "structured": 80, "safety": 48}


def record_to_doc(record: dict, index: int, *, task: str, scorer: str, where: str) -> dict:
    """The flat lm-eval document of one chat record (see the module docstring)."""
    messages = record["messages"]
    turns = [m for m in messages[:-1] if m["role"] != "system"]
    if len(turns) != 1 or turns[0]["role"] != "user":
        raise AdapterMergeError(f"{where}: evaluation needs exactly one user turn before the assistant reply")
    meta = dict(record.get("meta") or {})
    if scorer == "domain":  # a user task scored by whole-word match; `field` only labels built-in facts
        meta.setdefault("answer", messages[-1]["content"])
        meta.setdefault("field", "answer")
    return {
        "id": index,
        "task": task,
        "scorer": scorer,
        "system": "\n\n".join(m["content"] for m in messages if m["role"] == "system"),
        "prompt": turns[0]["content"],
        "target": messages[-1]["content"],
        "meta": json.dumps(meta, sort_keys=True, ensure_ascii=False),
    }


def builtin_docs(task: str, seed: int | None = None) -> list[dict]:
    """Documents of a built-in task's eval split (the split the training preset never shows), of
    the data generated with `seed` (None: chat.data.DATA_SEED, the one training uses)."""
    seed = DATA_SEED if seed is None else seed
    if task not in BUILTIN_TASKS:
        raise AdapterMergeError(f"unknown built-in task {task!r}: expected one of {', '.join(BUILTIN_TASKS)}")
    records = build_records(task, "eval", seed=seed)
    return [record_to_doc(r, i, task=task, scorer=task, where=f"{task} eval record {i}") for i, r in enumerate(records)]


def user_docs(name: str, path: str | Path, metric: str) -> list[dict]:
    """Documents of a user task: chat records from a JSONL file, scored by the preset owning `metric`."""
    if metric not in METRIC_SCORER:
        raise AdapterMergeError(f"task {name!r}: unknown metric {metric!r}: expected one of {', '.join(METRIC_SCORER)}")
    scorer = METRIC_SCORER[metric]
    records = read_jsonl(path, task=None)
    docs = [record_to_doc(r, i, task=name, scorer=scorer, where=f"{path} record {i + 1}") for i, r in enumerate(records)]
    for doc in docs:
        missing = [k for k in META_KEYS[scorer] if k not in json.loads(doc["meta"])]
        if missing:
            raise AdapterMergeError(f"{path} record {doc['id'] + 1}: meta lacks {', '.join(missing)} needed for metric {metric!r}")
    return docs


def docs_digest(docs: list[dict]) -> str:
    """A short content hash of documents: part of the results-cache key."""
    text = json.dumps(docs, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def as_dataset(docs: list[dict]) -> dict:
    """The {split: Dataset} mapping lm-eval's `custom_dataset` hook returns."""
    import datasets  # heavy, and an lm-eval dependency (the eval extra)

    return {"test": datasets.Dataset.from_list(docs)}
