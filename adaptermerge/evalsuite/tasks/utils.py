"""Functions the task YAML files name with `!function utils.<name>` (lm-eval loads this file by path).

Datasets are built in memory by the `custom_dataset` hooks, which receive lm-eval's task metadata
as keyword arguments (`--metadata '{"seed": 0, "mmlu_limit": 10}'` on lm-eval's CLI). `seed` moves the
MMLU sample only; the built-in tasks read the data seed training uses unless `data_seed` names
another (the adapters must have trained on that seed's split, see EvalSettings.data_seed).
Scores come from adaptermerge.evalsuite.metrics. Every metric is a mean of per-item values, so
`process_results` gives each item's value and the YAML files aggregate with lm-eval's own `mean`:
lm-eval then reports the standard error of that mean (for an aggregation function of its own it
reports "N/A"). A rate defined over a subset of items (safety's refusal_rate: harmful prompts;
benign_answer_rate: benign ones) has no value on the other items, which leave the key out: lm-eval
averages each metric over the items that give it.
"""

from __future__ import annotations

import json

from adaptermerge.evalsuite import metrics, mmlu, stats, taskdata


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


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """{metric: this item's value} for each metric of the document's scorer that covers the item."""
    scorer = doc["scorer"]
    scores = metrics.score(scorer, results[0], json.loads(doc["meta"]))
    values = {name: stats.item_value(name, scores) for name in metrics.METRICS[scorer]}
    return {name: value for name, value in values.items() if value is not None}


# lm-eval's aggregation of each metric, by its registered name (see the module docstring).
AGGREGATIONS = {name: "mean" for names in metrics.METRICS.values() for name in names}
