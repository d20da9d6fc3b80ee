"""The recipe's evaluation tasks on a split: names, data files and gates.

A built-in task is scored on its eval split, or on a subset of it (`docs:`), or on its dev split;
a user task on its `data:` file or its `dev:` file. Every subset and every dev split is written
as a user task (JSONL chat records, scored exactly as the task itself is) named
`<task>[_dev][_first<n>]`, so the results cache tells them apart. MMLU takes its split from the
evaluation settings (its test or dev questions), and its questions the way `eval` takes them: a
local copy when given (the `mmlu_data` option, else $ADAPTERMERGE_MMLU_DATA), else the hub
(`mmlu_source`). When neither can be read, MMLU is not scored, the run says so in a warning at the
top of its report, and each of MMLU's gates fails for every model (`fail_unscored`): gates fail closed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from ..chat.data import DATA_SEED, build_records
from ..chat.records import read_jsonl, write_jsonl
from ..errors import AdapterMergeError
from ..evalsuite import gates as gates_mod
from ..evalsuite import mmlu as mmlu_mod
from ..evalsuite.taskdata import BUILTIN_TASKS, MAX_GEN_TOKS
from .rows import GateOutcome, Row
from .schema import MMLU, Recipe


@dataclass(frozen=True)
class Plan:
    """What one run evaluates: the recipe's settings with --quick applied."""

    docs: dict[str, int]  # task -> documents (absent: the whole split)
    mmlu_limit: int
    mmlu_subjects: int | None
    has_mmlu: bool


def plan(recipe: Recipe, quick: bool, mmlu_source: str | None) -> Plan:
    """`mmlu_source`: where MMLU's questions come from (`mmlu_source`), None when they cannot be read."""
    docs = dict(recipe.eval.docs or {})
    if quick and recipe.quick.docs is not None and not recipe.eval.docs:
        docs = dict(recipe.quick.docs)
    return Plan(docs=docs,
                mmlu_limit=recipe.quick.mmlu_limit if quick else recipe.eval.mmlu_limit,
                mmlu_subjects=recipe.quick.mmlu_subjects if quick else recipe.eval.mmlu_subjects,
                has_mmlu=MMLU in recipe.tasks and mmlu_source is not None)


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


def mmlu_source(mmlu_data: str | None, splits: tuple[str, ...] = ("test", "dev")) -> tuple[str | None, str | None]:
    """(where MMLU's questions come from, why they cannot be read): the local copy (`mmlu_data`, else
    $ADAPTERMERGE_MMLU_DATA) when given, else the hub's cais/mmlu when its `splits` load (downloaded
    once into the datasets cache); (None, the reason) when they do not. A local folder in the wrong
    layout is bad input and raises."""
    local = mmlu_mod.resolve_data_dir(mmlu_data)
    if local is not None:
        return str(local), None
    try:
        for split in splits:
            mmlu_mod.read_hub(split)
    except AdapterMergeError as exc:
        return None, str(exc)
    except ImportError as exc:  # `datasets` comes with the eval extra
        return None, f"cannot load {mmlu_mod.HUB_ID}: {exc}"
    return mmlu_mod.HUB_ID, None


def unscored_warning(reason: str, recipe: Recipe) -> str:
    """The report's warning when MMLU could not be scored."""
    rules = [g.describe() for g in recipe.gates.gates if g.task == MMLU]
    return (f"MMLU was NOT scored: no local copy (--mmlu-data DIR or $ADAPTERMERGE_MMLU_DATA) and the hub failed ({reason}). "
            + (f"Its gate{'s' if len(rules) > 1 else ''} ({'; '.join(rules)}) fail{'' if len(rules) > 1 else 's'} for every model, so no merge passes."
               if rules else "The table has no MMLU column."))


def fail_unscored(rows: list[Row], recipe: Recipe, reason: str) -> list[Row]:
    """`rows` with each of MMLU's gates failed on every evaluated row, saying why (MMLU was not
    scored): the gates check fails such a gate already ("not evaluated"); this names the reason,
    and adds the gate where a row lacks it."""
    rules = {g.describe(): g for g in recipe.gates.gates if g.task == MMLU}
    if not rules:
        return rows
    detail = f"not scored: {reason}"
    out = []
    for r in rows:
        if not r.scores:
            out.append(r)
            continue
        gates = [replace(g, passed=False, value=None, detail=detail) if g.task == MMLU else g for g in r.gates]
        gates += [GateOutcome(g.task, g.metric, g.kind, g.threshold, rule, False, None, detail, g.reference)
                  for rule, g in rules.items() if rule not in {x.rule for x in gates}]
        out.append(replace(r, gates=gates, gates_passed=sum(g.passed for g in gates), gates_total=len(gates), passed=False))
    return out
