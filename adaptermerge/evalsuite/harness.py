"""Run tasks through lm-eval's Python API with an in-memory model; collect per-item values.

The task YAML files in `tasks/` are the single definition of prompts, generation settings and
metrics. For the Python API they are read here into inline lm-eval configs whose dataset hook
returns documents built up front, so the documents scored are exactly the ones hashed into the
results-cache key.
"""

from __future__ import annotations

import logging
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..chat.data import DATA_SEED
from ..errors import AdapterMergeError
from . import mmlu, stats, taskdata
from .tasks import utils

log = logging.getLogger(__name__)

TASKS_DIR = Path(__file__).parent / "tasks"
MMLU = "mmlu"

# The lm-eval releases this code is tested on (pyproject's requirement says the same; a test
# holds the two together). The floor: fastlm imports helpers that lm-eval 0.4.10 added, the chat
# tasks' `description: system` names a document field only from 0.4.10 on (before, it was literal
# text), and before 0.4.12 simple_evaluate pops "task" out of the config dicts run_specs hands it.
# The ceiling: fastlm overrides HFLM's private `_loglikelihood_tokens`, and run_specs replaces two
# functions inside lm_eval.evaluator; a release not tested may move them.
LM_EVAL_RANGE = ((0, 4, 12), (0, 5))  # lowest release, first release not supported
LM_EVAL_SPEC = ">=0.4.12,<0.5"


def check_lm_eval_version(installed: str | None = None) -> None:
    """Refuse an installed lm-eval outside LM_EVAL_RANGE with one line, rather than an ImportError
    or a wrong score deep inside an evaluation. `installed`: a version string to check instead."""
    if installed is None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            installed = version("lm-eval")
        except PackageNotFoundError:
            raise AdapterMergeError(f"lm-eval is not installed: pip install 'lm-eval{LM_EVAL_SPEC}'") from None
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", installed)
    release = tuple(int(part or 0) for part in match.groups()) if match else None
    if release is None or not LM_EVAL_RANGE[0] <= release < LM_EVAL_RANGE[1]:
        raise AdapterMergeError(f"lm-eval {installed} is outside the supported range {LM_EVAL_SPEC}: "
                                f"pip install 'lm-eval{LM_EVAL_SPEC}'")


@dataclass
class TaskSpec:
    """One task to run: its report name, the lm-eval config, the documents, and whether it is chat."""

    name: str
    config: dict
    docs: list[dict]
    chat: bool
    settings: dict = field(default_factory=dict)  # what, besides the docs, changes the scores

    @property
    def digest(self) -> str:
        return taskdata.docs_digest(self.docs)


def _load_yaml(path: Path) -> dict:
    """A task YAML with `include` merged and `!function utils.x` bound to tasks/utils.py."""
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: getattr(utils, loader.construct_scalar(node).split(".")[-1]))
    cfg = yaml.load(path.read_text(), Loader=Loader)  # noqa: S506 - SafeLoader plus one tag
    include = cfg.pop("include", None)
    if include:
        cfg = {**_load_yaml(path.parent / include), **cfg}
    return cfg


def _config(yaml_name: str, task_name: str, docs: list[dict], **overrides) -> dict:
    cfg = _load_yaml(TASKS_DIR / f"{yaml_name}.yaml")
    cfg.update(task=task_name, custom_dataset=lambda **_: taskdata.as_dataset(docs), **overrides)
    return cfg


def builtin_spec(task: str, seed: int | None = None) -> TaskSpec:
    """A built-in task on the eval split of the data generated with `seed` (None: the training default)."""
    seed = DATA_SEED if seed is None else seed
    docs = taskdata.builtin_docs(task, seed=seed)
    cfg = _config(f"adaptermerge_{task}", f"adaptermerge_{task}", docs)
    return TaskSpec(task, cfg, docs, chat=True, settings={"seed": seed, "generation": cfg["generation_kwargs"]})


def user_spec(name: str, path: str | Path, metric: str, max_gen_toks: int = 64) -> TaskSpec:
    docs = taskdata.user_docs(name, path, metric)
    scorer = taskdata.METRIC_SCORER[metric]
    gen = {"until": [], "do_sample": False, "max_gen_toks": int(max_gen_toks)}
    metric_list = [{"metric": m, "aggregation": utils.AGGREGATIONS[m], "higher_is_better": True} for m in taskdata.METRICS[scorer]]
    cfg = _config("_chat_template", f"adaptermerge_user_{name}", docs, generation_kwargs=gen, metric_list=metric_list)
    return TaskSpec(name, cfg, docs, chat=True, settings={"generation": gen, "scorer": scorer})


def mmlu_spec(data_dir, *, limit: int | None, shots: int, fmt: str, seed: int = 0, subjects: int | None = None,
              split: str = "test") -> TaskSpec:
    docs = mmlu.mmlu_docs(data_dir, limit=limit, shots=shots, fmt=fmt, seed=seed, subjects=subjects, split=split)
    cfg = _config(f"adaptermerge_mmlu_{fmt}", f"adaptermerge_mmlu_{fmt}", docs)
    # "split" only when not the default, so that cached test results keep their keys.
    return TaskSpec(MMLU, cfg, docs, chat=False, settings={"format": fmt, "shots": shots, "limit": limit, "seed": seed,
                                                          **({"subjects": subjects} if subjects else {}),
                                                          **({"split": split} if split != "test" else {})})


@dataclass
class TaskScores:
    """A task's results for one model: {metric: (value, stderr, n)} and per-item values for pairing."""

    task: str
    metrics: dict[str, dict] = field(default_factory=dict)  # metric -> {"value", "stderr", "n"}
    items: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> {doc id: value}
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process's CPU time: the cost without other processes' contention
    error: str | None = None
    examples: list[dict] = field(default_factory=list)  # a few prompts and replies, for the report

    def to_dict(self) -> dict:
        return {"task": self.task, "metrics": self.metrics, "items": self.items, "seconds": self.seconds,
                "cpu_seconds": self.cpu_seconds, "error": self.error, "examples": self.examples}

    @classmethod
    def from_dict(cls, data: dict) -> "TaskScores":
        return cls(**data)


def _scores_from_samples(spec: TaskSpec, samples: list[dict], metric_names: list[str]) -> TaskScores:
    out = TaskScores(spec.name)
    for name in metric_names:
        values: dict[str, float] = {}
        for s in samples:
            value = s.get(name)  # absent where the metric does not cover the item (tasks/utils.py)
            if value is not None:
                values[str(s["doc_id"])] = float(value)
        mean, stderr = stats.mean_stderr(list(values.values()))
        out.metrics[name] = {"value": mean, "stderr": stderr, "n": len(values)}
        out.items[name] = values
    if spec.chat:
        out.examples = [{"prompt": s["doc"]["prompt"], "reply": s["filtered_resps"][0]} for s in samples[:3]]
    return out


def _quiet_git_hash() -> str | None:
    """lm-eval records `git describe` of the working directory in its results, running git with
    stderr open: every evaluation outside a git repository printed "fatal: not a git repository".
    Same lookup, stderr silenced (the value is not used here)."""
    try:
        return subprocess.run(["git", "describe", "--always"], capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


_ENV_INFO: dict = {}
_EVALUATED = threading.local()  # what lm_eval.evaluator.evaluate last returned, in this thread
_LM_EVAL_EVALUATE = None  # lm-eval's own evaluate, which _evaluate_kept wraps


def _evaluate_kept(*args, **kwargs):
    """lm-eval's evaluate, its result also kept. simple_evaluate returns None in any process whose
    LOCAL_RANK is not 0 (it takes a launcher's processes for one tensor-parallel model), while
    spread.py runs a whole, independent evaluation in each process: the result is taken here."""
    _EVALUATED.result = _LM_EVAL_EVALUATE(*args, **kwargs)
    return _EVALUATED.result


def _env_info_once(storage: dict) -> None:
    """lm-eval's add_env_info runs torch's collect_env (a `pip list` subprocess, about 1.7 s) at every
    simple_evaluate call: several seconds per evaluated model. The environment does not change
    within a process, so it is collected once and copied."""
    from lm_eval.loggers.utils import add_env_info  # the eval extra, heavy: only when evaluating

    if not _ENV_INFO:
        add_env_info(_ENV_INFO)
    storage.update(_ENV_INFO)


def groups(specs: list[TaskSpec]) -> list[list[TaskSpec]]:
    """The chat tasks in one group, every other task alone. One lm-eval call per group: it hands the
    model all of a group's generation requests at once, so FastHFLM batches the tasks together."""
    chat = [s for s in specs if s.chat]
    return ([chat] if chat else []) + [[s] for s in specs if not s.chat]


def _run_group(lm, manager, group: list[TaskSpec]) -> dict[str, TaskScores]:
    """Scores of each task of `group` from one lm-eval call (raises when the call fails)."""
    import lm_eval  # the eval extra, heavy: only when evaluating

    _EVALUATED.result = None
    result = lm_eval.simple_evaluate(
        model=lm, tasks=[spec.config for spec in group], task_manager=manager, bootstrap_iters=0, log_samples=True,
        apply_chat_template=group[0].chat, verbosity="ERROR",
    )
    if result is None:  # a launcher's process other than the first: see _evaluate_kept
        result = _EVALUATED.result
    if result is None:
        raise RuntimeError("lm-eval returned no results")
    out = {}
    for spec in group:
        task_name = spec.config["task"]
        names = [m["metric"] for m in spec.config["metric_list"]]
        scores = _scores_from_samples(spec, result["samples"][task_name], names)
        for name in names:  # lm-eval's own aggregate is the headline value (equal to the item mean)
            value = result["results"][task_name].get(f"{name},none")
            if isinstance(value, (int, float)):
                scores.metrics[name]["value"] = float(value)
        out[spec.name] = scores
    return out


def _timed(lm, manager, group: list[TaskSpec]) -> dict[str, TaskScores]:
    """_run_group with each task's `seconds` and `cpu_seconds`: the call's, split evenly."""
    start, cpu_start = time.perf_counter(), time.process_time()
    scores = _run_group(lm, manager, group)
    for result in scores.values():
        result.seconds = (time.perf_counter() - start) / len(group)
        result.cpu_seconds = (time.process_time() - cpu_start) / len(group)
    return scores


def _run_alone(lm, manager, spec: TaskSpec) -> TaskScores:
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        return _timed(lm, manager, [spec])[spec.name]
    except AdapterMergeError:
        raise
    except Exception as exc:  # noqa: BLE001 - the evaluation failed: recorded, and no gate on it can pass
        log.exception("task %s failed", spec.name)
        scores = TaskScores(spec.name, error=f"{type(exc).__name__}: {exc}")
        scores.seconds, scores.cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        return scores


def run_specs(lm, specs: list[TaskSpec], *, progress=None) -> dict[str, TaskScores]:
    """Evaluate `specs` with the lm-eval model `lm`; a task that raises comes back with `error` set.

    The chat tasks run in one lm-eval call (see groups). When that call fails, its tasks run again
    one by one, so each error names its own task."""
    check_lm_eval_version()
    # the eval extra, heavy: only when evaluating
    import lm_eval.evaluator
    from lm_eval.tasks import TaskManager

    lm_eval.evaluator.get_git_commit_hash = _quiet_git_hash
    lm_eval.evaluator.add_env_info = _env_info_once
    global _LM_EVAL_EVALUATE
    if lm_eval.evaluator.evaluate is not _evaluate_kept:
        _LM_EVAL_EVALUATE = lm_eval.evaluator.evaluate
        lm_eval.evaluator.evaluate = _evaluate_kept

    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    out: dict[str, TaskScores] = {}
    for group in groups(specs):
        if progress:
            for spec in group:
                progress(spec.name, "start")
        if len(group) == 1:
            scores = {group[0].name: _run_alone(lm, manager, group[0])}
        else:
            try:
                scores = _timed(lm, manager, group)
            except AdapterMergeError:
                raise
            except Exception:  # noqa: BLE001 - which task failed is found by running them alone
                log.warning("the tasks %s failed together; running them one by one", ", ".join(s.name for s in group))
                scores = {spec.name: _run_alone(lm, manager, spec) for spec in group}
        for spec in group:
            out[spec.name] = scores[spec.name]
            if progress:
                progress(spec.name, "done")
    return out
