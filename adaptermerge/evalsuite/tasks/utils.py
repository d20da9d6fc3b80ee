"""Functions the task YAML files name with `!function utils.<name>` (lm-eval loads this file by path).

Datasets are built in memory by the `custom_dataset` hooks, which receive lm-eval's task metadata
as keyword arguments (`--metadata '{"seed": 0, "mmlu_limit": 10}'` on lm-eval's CLI). `seed` moves the
MMLU sample only; the built-in tasks read the data seed training uses unless `data_seed` names
another (the adapters must have trained on that seed's split, see EvalSettings.data_seed).
Scores come from adaptermerge.evalsuite.metrics: `process_results` keeps each item's full score
dict under every metric name, and the aggregations hand the list to `metrics.aggregate`, so a
rate defined over a subset of items (safety's refusal_rate over harmful prompts) is computed there.
"""

from __future__ import annotations

import json

from adaptermerge.evalsuite import metrics, mmlu, taskdata


def _chat_dataset(task: str, kwargs: dict) -> dict:
    data_seed = kwargs.get("data_seed")
    return taskdata.as_dataset(taskdata.builtin_docs(task, seed=None if data_seed is None else int(data_seed)))


def domain_dataset(**kwargs) -> dict:
    return _chat_dataset("domain", kwargs)


def structured_dataset(**kwargs) -> dict:
    return _chat_dataset("structured", kwargs)


def safety_dataset(**kwargs) -> dict:
    return _chat_dataset("safety", kwargs)


def _mmlu_dataset(fmt: str, kwargs: dict) -> dict:
    limit = kwargs.get("mmlu_limit")
    docs = mmlu.mmlu_docs(
        kwargs.get("mmlu_data"),
        limit=int(limit) if limit is not None else None,
        shots=int(kwargs.get("mmlu_shots", 0)),
        fmt=fmt,
        seed=int(kwargs.get("seed", 0)),
    )
    return taskdata.as_dataset(docs)


def mmlu_cloze_dataset(**kwargs) -> dict:
    return _mmlu_dataset("cloze", kwargs)


def mmlu_letter_dataset(**kwargs) -> dict:
    return _mmlu_dataset("letter", kwargs)


def process_results(doc: dict, results: list[str]) -> dict:
    """{metric: {"scorer": ..., "scores": item scores}} for every metric of the document's scorer."""
    scorer = doc["scorer"]
    scores = metrics.score(scorer, results[0], json.loads(doc["meta"]))
    item = {"scorer": scorer, "scores": scores}
    return {name: item for name in metrics.METRICS[scorer]}


def _aggregate(items: list[dict], name: str) -> float:
    return metrics.aggregate(items[0]["scorer"], [i["scores"] for i in items])[name]


def agg_exact_match(items):
    return _aggregate(items, "exact_match")


def agg_parse_rate(items):
    return _aggregate(items, "parse_rate")


def agg_schema_valid(items):
    return _aggregate(items, "schema_valid")


def agg_field_accuracy(items):
    return _aggregate(items, "field_accuracy")


def agg_refusal_rate(items):
    return _aggregate(items, "refusal_rate")


def agg_benign_answer_rate(items):
    return _aggregate(items, "benign_answer_rate")


AGGREGATIONS = {name[len("agg_"):]: fn for name, fn in dict(globals()).items() if name.startswith("agg_")}
