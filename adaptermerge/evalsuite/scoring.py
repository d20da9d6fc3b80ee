"""Scoring one model: the task specs an evaluation runs, and one candidate loaded and run on them.

The runner and its helper process (parallel.py) both call these, so a model scores the same in
either process. A spec holds lm-eval callables, which do not pickle: the helper rebuilds the specs
from the same arguments with `task_specs`.
"""

from __future__ import annotations

from typing import Callable

from ..errors import AdapterMergeError
from . import candidates as cand_mod
from . import gates as gates_mod
from . import harness
from .settings import EvalSettings
from .taskdata import BUILTIN_TASKS

DEFAULT_TASKS = (*BUILTIN_TASKS, harness.MMLU)

Progress = Callable[[int, int, str], None]  # (tasks done, tasks in all, what is running)


def task_specs(tasks: list[str], settings: EvalSettings, config: gates_mod.GateConfig | None,
               mmlu_format: str) -> list[harness.TaskSpec]:
    """The spec of each task named: built-in, MMLU, or a user task the gates file defines."""
    specs = []
    for task in tasks:
        if task in BUILTIN_TASKS:
            specs.append(harness.builtin_spec(task, seed=settings.data_seed))
        elif task == harness.MMLU:
            specs.append(harness.mmlu_spec(settings.mmlu_data, limit=settings.mmlu_limit, shots=settings.mmlu_shots,
                                           fmt=mmlu_format, seed=settings.seed, subjects=settings.mmlu_subjects,
                                           split=settings.mmlu_split))
        elif config and task in config.user_tasks:
            u = config.user_tasks[task]
            specs.append(harness.user_spec(task, u["data"], u["metric"], u["max_gen_toks"]))
        else:
            raise AdapterMergeError(f"unknown task {task!r}: expected one of {', '.join(DEFAULT_TASKS)} or a user task defined in the gates file")
    return specs


def score_model(candidate: cand_mod.Candidate, specs: list[harness.TaskSpec], settings: EvalSettings,
                base_name: str | None, progress: Progress | None, done: int, total: int) -> dict[str, harness.TaskScores]:
    """Load one candidate and run `specs` on it through lm-eval; `progress` counts tasks from `done` of `total`."""
    from .fastlm import FastHFLM  # imports lm-eval (the eval extra, heavy): only when a model is scored

    model, tokenizer = cand_mod.load(candidate, reference_tokenizer_from=base_name, dtype=settings.dtype)
    lm = FastHFLM(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size,
                  context_batch=settings.context_batch, device=str(model.device), progress_bars=progress is None)
    counter = {"done": done}

    def tick(task, event):
        if progress and event == "start":
            progress(counter["done"], total, f"{candidate.name}: {task}")
        if event == "done":
            counter["done"] += 1
    return harness.run_specs(lm, specs, progress=tick)
