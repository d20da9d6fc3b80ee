"""The recipe's evaluation tasks on a split: names, data files and gates.

A built-in task is scored on its eval split, or on a subset of it (`docs:`), or on its dev split;
a user task on its `data:` file or its `dev:` file. Every subset and every dev split is written
as a user task (JSONL chat records, scored exactly as the task itself is) named
`<task>[_dev][_first<n>]`, so the results cache tells them apart. MMLU takes its split from the
evaluation settings (its test or dev questions).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..chat.data import DATA_SEED, build_records
from ..chat.records import read_jsonl, write_jsonl
from ..evalsuite import gates as gates_mod
from ..evalsuite.taskdata import BUILTIN_TASKS, MAX_GEN_TOKS
from .schema import MMLU, Recipe


@dataclass(frozen=True)
class Plan:
    """What one run evaluates: the recipe's settings with --quick applied."""

    docs: dict[str, int]  # task -> documents (absent: the whole split)
    mmlu_limit: int
    mmlu_subjects: int | None
    has_mmlu: bool


def plan(recipe: Recipe, quick: bool, mmlu_data: str | None) -> Plan:
    docs = dict(recipe.eval.docs or {})
    if quick and recipe.quick.docs is not None and not recipe.eval.docs:
        docs = dict(recipe.quick.docs)
    return Plan(docs=docs,
                mmlu_limit=recipe.quick.mmlu_limit if quick else recipe.eval.mmlu_limit,
                mmlu_subjects=recipe.quick.mmlu_subjects if quick else recipe.eval.mmlu_subjects,
                has_mmlu=MMLU in recipe.tasks and mmlu_data is not None)


def scored_tasks(recipe: Recipe) -> list[str]:
    """The tasks with a column of their own (MMLU has its own, after them)."""
    return [t for t in recipe.tasks if t != MMLU]


def dev_split_lacking(recipe: Recipe) -> list[str]:
    """The user tasks without a `dev:` file: with any, the choice falls back to the eval split."""
    return [t for t in recipe.user_tasks if t not in recipe.dev_data]


def eval_task_name(task: str, docs: dict[str, int], split: str = "eval") -> str:
    """The evaluation task's name: the task itself, or `<task>[_dev][_first<n>]` (module docstring)."""
    n = docs.get(task)
    stem = task if split == "eval" else f"{task}_{split}"
    return stem if n is None else f"{stem}_first{n}"


def eval_names(recipe: Recipe, docs: dict[str, int], split: str = "eval") -> dict[str, str]:
    return {task: eval_task_name(task, docs, split) for task in scored_tasks(recipe)}


def subset_records(task: str, n: int | None, split: str = "eval") -> list[dict]:
    """The first n records (all when None) of a built-in task's `split`, of the data the adapters
    train on (whatever the run's seed); for safety, half harmful and half benign, so both of its
    rates are defined."""
    records = build_records(task, split, DATA_SEED)
    if n is None:
        return records
    if task != "safety":
        return records[:n]
    harmful = [r for r in records if r["meta"]["harmful"]]
    benign = [r for r in records if not r["meta"]["harmful"]]
    return harmful[: math.ceil(n / 2)] + benign[: n // 2]


def gate_config(recipe: Recipe, docs: dict[str, int], data_dir: Path, split: str = "eval") -> gates_mod.GateConfig:
    """The recipe's gates over its evaluation tasks on `split` (eval: what the table reports; dev:
    what the sweep chooses by). Subsets and dev splits are written to data_dir (module docstring)."""
    source = recipe.gates
    out = gates_mod.GateConfig(retention_min=source.retention_min)
    for task in recipe.tasks:
        name = task if task == MMLU else eval_task_name(task, docs, split)
        n = docs.get(task)
        if task in BUILTIN_TASKS and name != task:
            path = write_jsonl(subset_records(task, n, split), data_dir / f"{name}.jsonl")
            out.user_tasks[name] = {"data": str(path), "metric": recipe.headline(task), "max_gen_toks": MAX_GEN_TOKS[task]}
        elif task in source.user_tasks:
            spec = source.user_tasks[task]
            data = spec["data"] if split == "eval" else str(recipe.dev_data[task])
            if n is not None:
                data = str(write_jsonl(read_jsonl(data)[:n], data_dir / f"{name}.jsonl"))
            out.user_tasks[name] = {**spec, "data": data}
        for g in source.gates:
            if g.task == task:
                out.gates.append(gates_mod.Gate(name, g.metric, g.kind, g.threshold, g.reference))
        out.tasks.append(name)
    return out


def default_mmlu_data(repo: Path | None = None) -> str | None:
    """$ADAPTERMERGE_MMLU_DATA, else ../shared/data/mmlu beside the repository when it exists."""
    env = os.environ.get("ADAPTERMERGE_MMLU_DATA")
    if env:
        return env
    repo = repo or Path(__file__).resolve().parents[2]
    shared = repo.parent / "shared" / "data" / "mmlu"
    return str(shared) if (shared / "test").is_dir() else None
