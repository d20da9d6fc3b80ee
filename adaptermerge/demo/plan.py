"""What the demo runs: its settings, the approaches compared, the gates and the evaluation tasks.

The targets (issue 6): the best merge keeps >= 95 % of each adapter's gain over the base on every
task, and MMLU within 1 point of the base. The per-task minimums are the presets' own targets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import AdapterMergeError
from ..evalsuite import gates as gates_mod
from ..evalsuite.taskdata import MAX_GEN_TOKS
from ..methods import METHODS
from ..train.data import TASKS

MMLU = "mmlu"
RETENTION_MIN = 0.95
MMLU_MAX_DROP = 0.01
# The preset targets: the headline metric of each task and its minimum.
TASK_GATES = {
    "domain": [("exact_match", 0.75)],
    "structured": [("schema_valid", 0.85)],
    "safety": [("refusal_rate", 0.90), ("benign_answer_rate", 0.90)],
}
HEADLINE = {task: gates[0][0] for task, gates in TASK_GATES.items()}
WEIGHTS = [1.0, 1.0, 1.0]  # domain, structured, safety: every task counts the same

# Parameters of each registered method in the demo: its own defaults, so the table shows what a
# user gets without tuning (linear, cat and dare_linear average, dividing each task's delta by 3;
# task_arithmetic and the TIES family sum). The sweep explores from there.
METHOD_PARAMS: dict[str, dict] = {}
# --quick: regmean's Grams from 16 records per adapter instead of 64 (about a quarter of the time).
QUICK_METHOD_PARAMS: dict[str, dict] = {"regmean": {"calib_size": 16}}

# --quick (a 10-minute budget): training steps as a fraction of the preset's (a tenth: the three
# presets cost about 13 CPU-minutes in full; --quick reuses the full adapters instead when they are
# cached), documents per built-in eval task, MMLU questions per subject and subjects (every third).
# A quick evaluation costs about 48 s of CPU per model (2026-12-02, AVX2 EPYC; two processes share
# the models); a full run evaluates the whole eval splits.
QUICK_STEP_FRACTION = 1 / 10
# --quick training draws few anchor rows (domain: 20 steps x 8 rows x 0.25 = 40), so 16 distinct
# anchor prompts serve it; their base replies are one generation batch instead of two of 32.
QUICK_ANCHOR_UNIQUE = 16
QUICK_DOCS = {"domain": 8, "structured": 6, "safety": 12}
QUICK_MMLU_LIMIT = 1
QUICK_MMLU_SUBJECTS = 19
FULL_MMLU_LIMIT = 3


@dataclass
class DemoConfig:
    output: Path
    base: str | None = None
    quick: bool = False
    force: bool = False
    mmlu_data: str | None = None  # None: $ADAPTERMERGE_MMLU_DATA, else ../shared/data/mmlu if present
    mmlu_limit: int | None = None  # None: the mode's default
    mmlu_subjects: int | None = None  # None: all 57 (--quick: QUICK_MMLU_SUBJECTS)
    docs: dict[str, int] | None = None  # documents per eval task (None: the whole split; --quick: QUICK_DOCS)
    train_steps: dict[str, int] | None = None  # per task, overriding the preset (and --quick)
    seed: int = 0
    threads: int | None = None
    sweep: bool = True
    # The proxy weight search before the sweep's evaluations (off unless asked for: on the
    # 2026-12-03 adapters regmean kept 0.94 / 0.95 / 0.92 where the searched weights kept
    # 0.65 / 0.60 / 0.76, and the search with its evaluation costs about 8 minutes).
    weight_search: bool = False
    mergekit: str | None = None  # mergekit-yaml executable (None: found on PATH, else that row is skipped)
    methods: list[str] | None = None  # registered methods to run (None: all)
    baselines: bool = True  # PEFT, mergekit and sequential training rows
    eval_batch_size: int = 32
    eval_dtype: str = "auto"  # bfloat16 on hardware with native bf16 (about 2x faster), else float32
    train_workers: int | None = None  # adapters trained at once (None: 2 on a multi-core CPU)

    def checked(self) -> "DemoConfig":
        self.output = Path(self.output)
        if self.methods is not None:
            unknown = [m for m in self.methods if m not in METHODS]
            if unknown:
                raise AdapterMergeError(f"--methods {', '.join(unknown)}: expected names among {', '.join(METHODS)}")
        if self.mmlu_limit is not None and self.mmlu_limit <= 0:
            raise AdapterMergeError(f"--mmlu-limit must be positive, got {self.mmlu_limit}")
        if self.docs is None and self.quick:
            self.docs = dict(QUICK_DOCS)
        if self.mmlu_limit is None:
            self.mmlu_limit = QUICK_MMLU_LIMIT if self.quick else FULL_MMLU_LIMIT
        if self.mmlu_subjects is None and self.quick:
            self.mmlu_subjects = QUICK_MMLU_SUBJECTS
        return self


@dataclass(frozen=True)
class Approach:
    """One row of the comparison. kind: "method" (adaptermerge.merge), "peft" (add_weighted_adapter),
    "mergekit" (mergekit-yaml on base+lora models), "train" (sequential training with --on-top-of)."""

    name: str
    kind: str
    method: str
    params: dict = field(default_factory=dict)
    weights: tuple[float, ...] = tuple(WEIGHTS)

    def describe(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.params.items())
        weights = "" if self.kind == "train" else f" weights={list(self.weights)}"
        return f"{self.kind}:{self.method}" + (f" ({params})" if params else "") + weights

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "method": self.method, "params": dict(self.params),
                "weights": list(self.weights), "describe": self.describe()}


def method_approach(method: str, params: dict | None = None, weights=WEIGHTS, name: str | None = None) -> Approach:
    merged = {**METHOD_PARAMS.get(method, {}), **(params or {})}
    return Approach(name or method, "method", method, merged, tuple(float(w) for w in weights))


def approaches(config: DemoConfig) -> list[Approach]:
    """Every registered method at its demo defaults, then the baselines on the same adapters."""
    quick = QUICK_METHOD_PARAMS if config.quick else {}
    out = [method_approach(m, quick.get(m)) for m in (config.methods or list(METHODS))]
    if config.baselines:
        ties_density = METHODS.get("ties").Params().density
        out += [
            Approach("peft_ties", "peft", "ties", {"density": ties_density}),
            Approach("peft_ties_svd", "peft", "ties_svd", {"density": ties_density}),
            Approach("mergekit_ties", "mergekit", "ties", {"density": ties_density}),
            Approach("sequential_training", "train", "on_top_of"),
        ]
    return out


# ---------------------------------------------------------------- evaluation tasks and gates

def eval_task_name(task: str, config: DemoConfig, split: str = "eval") -> str:
    """The evaluation task's name: the built-in task, or a subset of its eval split (--quick); on
    the dev split (the sweep's choice) always a user task, `<task>_dev` or `<task>_dev_first<n>`."""
    n = (config.docs or {}).get(task)
    stem = task if split == "eval" else f"{task}_{split}"
    return stem if n is None else f"{stem}_first{n}"


def subset_records(task: str, n: int | None, split: str = "eval") -> list[dict]:
    """The first n records (all when None) of a task's `split` (of the data the adapters train on,
    whatever the demo's --seed); for safety, half harmful and half benign, so both of its rates are
    defined."""
    from ..train.data import DATA_SEED, build_records

    records = build_records(task, split, DATA_SEED)
    if n is None:
        return records
    if task != "safety":
        return records[:n]
    harmful = [r for r in records if r["meta"]["harmful"]]
    benign = [r for r in records if not r["meta"]["harmful"]]
    return harmful[: math.ceil(n / 2)] + benign[: n // 2]


def gate_config(config: DemoConfig, data_dir: Path, split: str = "eval") -> gates_mod.GateConfig:
    """The demo's gates over its evaluation tasks on `split` (eval: what the table reports; dev:
    what the sweep chooses by). Subsets and dev splits are written to data_dir as user tasks (JSONL
    chat records scored exactly as the built-in task is); MMLU's split is the evaluation settings'."""
    from ..train.data import write_jsonl

    out = gates_mod.GateConfig(retention_min=RETENTION_MIN)
    for task in TASKS:
        name = eval_task_name(task, config, split)
        if name != task:
            path = write_jsonl(subset_records(task, (config.docs or {}).get(task), split), data_dir / f"{name}.jsonl")
            out.user_tasks[name] = {"data": str(path), "metric": HEADLINE[task], "max_gen_toks": MAX_GEN_TOKS[task]}
        for metric, minimum in TASK_GATES[task]:
            out.gates.append(gates_mod.Gate(name, metric, "min", minimum))
        out.tasks.append(name)
    out.gates.append(gates_mod.Gate(MMLU, "acc", "max_drop", MMLU_MAX_DROP))
    out.tasks.append(MMLU)
    return out


def default_mmlu_data(repo: Path | None = None) -> str | None:
    """$ADAPTERMERGE_MMLU_DATA, else ../shared/data/mmlu beside the repository when it exists."""
    import os

    env = os.environ.get("ADAPTERMERGE_MMLU_DATA")
    if env:
        return env
    repo = repo or Path(__file__).resolve().parents[2]
    shared = repo.parent / "shared" / "data" / "mmlu"
    return str(shared) if (shared / "test").is_dir() else None
