"""`evaluate(...)`: every candidate on every task, from the results cache where possible, then the gates.

Order: the base (the reference) first, then the candidates in the order given. A model is loaded
only when one of its tasks is missing from the results cache (cache.py); scoring.py scores it, here
or in the helper process that shares the queue of models (parallel.py).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import base as base_mod
from .. import cputhreads
from ..chat.data import DATA_SEED
from ..errors import AdapterMergeError
from ..fileio import read_json_object
from . import cache
from . import candidates as cand_mod
from . import gates as gates_mod
from . import harness, mmlu, parallel, spread, stats
from .scoring import DEFAULT_TASKS, Progress, score_model, task_specs
from .settings import EvalSettings

log = logging.getLogger(__name__)

REFERENCE = "base"


@dataclass
class EvalReport:
    candidates: list[dict]  # name, kind, path, base, task, role, hash, seconds, cached
    tasks: list[str]
    scores: dict[str, dict[str, harness.TaskScores]]  # candidate -> task -> scores
    gates: list[gates_mod.GateResult]
    comparisons: dict  # candidate -> task -> metric -> paired difference vs the base
    settings: dict
    versions: dict
    notes: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        return [f"{c}/{t}: {s.error}" for c, tasks in self.scores.items() for t, s in tasks.items() if s.error]

    @property
    def passed(self) -> bool:
        """Every gate passes and no evaluation errored (an error never counts as a pass)."""
        return all(g.passed for g in self.gates) and not self.errors

    def verdict(self, candidate: str) -> str:
        mine = [g for g in self.gates if g.candidate == candidate]
        if any(s.error for s in self.scores.get(candidate, {}).values()):
            return "error"
        if not mine:
            return "no gates"
        return "pass" if all(g.passed for g in mine) else "fail"


# ---------------------------------------------------------------- planning

def eval_threads(settings: EvalSettings) -> int:
    """`settings.threads`, else this machine's threads shared among parallel.processes(settings)."""
    cputhreads.check(settings.threads, "threads")
    return settings.threads or cputhreads.share(parallel.processes(settings))


def _unique_names(cands: list[cand_mod.Candidate]) -> list[cand_mod.Candidate]:
    """Folder names as display names; a clash (or the name "base") gets the parent folder's name too."""
    seen = {REFERENCE}
    out = []
    for c in cands:
        name = c.name
        if name in seen and c.path is not None:
            name = f"{c.path.resolve().parent.name}/{c.name}"
        while name in seen:
            name = f"{name}'"
        seen.add(name)
        out.append(cand_mod.Candidate(name, c.kind, c.path, c.base, c.task, c.on_top_of))
    return out


def _singles(cands: list[cand_mod.Candidate], tasks: list[str], config: gates_mod.GateConfig | None) -> dict[str, str]:
    """{task: candidate name} of the single-task adapters (retention's denominators)."""
    out: dict[str, str] = {}
    explicit = config.retention_adapters if config else {}
    for task, ref in explicit.items():
        match = [c for c in cands if c.name == ref or (c.path is not None and c.path.resolve() == Path(ref).expanduser().resolve())]
        if not match:
            raise AdapterMergeError(f"retention.adapters.{task}: {ref!r} is not among the candidates")
        out[task] = match[0].name
    for c in cands:
        if c.kind != "adapter":
            continue
        task = c.task or (c.name if c.name in tasks else None)
        if task in tasks and task not in out and task != harness.MMLU:
            out[task] = c.name
    return out


def _n_params(base: str | None) -> int:
    """Parameter count from the base's config, without loading weights."""
    # heavy: only for MMLU's format choice
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base_mod.resolve_base(base))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- evaluation

def check_data_seed(candidates: list[cand_mod.Candidate], tasks: list[str], data_seed: int | None) -> None:
    """Refuse to score an adapter on a built-in task whose data it was trained on with another seed:
    that seed's eval split shares items with the adapter's training split (or, for domain, asks
    facts it never learned), so its score would mean nothing."""
    seed = DATA_SEED if data_seed is None else data_seed
    for c in candidates:
        summary = c.path / "training.json" if c.kind == "adapter" and c.path is not None else None
        if summary is None or not summary.is_file():
            continue
        data = read_json_object(summary).get("data") or {}
        trained = data.get("seed")
        if data.get("built_in") and data.get("task") in tasks and trained is not None and trained != seed:
            raise AdapterMergeError(
                f"{c.path}: trained on the built-in {data['task']} data generated with seed {trained}, but the "
                f"evaluation uses the data of seed {seed}, whose eval split overlaps that training split: "
                f"evaluate it with --data-seed {trained} (data_seed={trained} in Python)")


def _plan(tasks: list[str] | None, gates: gates_mod.GateConfig | None, settings: EvalSettings, base_name: str | None):
    """(settings with the dtype resolved, task names, MMLU format, notes)."""
    settings = dataclasses.replace(settings, dtype=base_mod.resolve_dtype(settings.dtype, cand_mod.eval_device()), threads=eval_threads(settings))
    task_names = list(tasks) if tasks else (list(gates.tasks) if gates and gates.tasks else list(DEFAULT_TASKS))
    notes = []
    mmlu_format = settings.mmlu_format
    if harness.MMLU in task_names:
        mmlu_format = mmlu.choose_format(settings.mmlu_format, _n_params(base_name) if settings.mmlu_format == "auto" else 0)
        notes.append(f"MMLU format: {mmlu_format} ({'chosen by model size' if settings.mmlu_format == 'auto' else 'as requested'})")
    return settings, task_names, mmlu_format, notes


def start_helper(tasks: list[str] | None = None, gates: gates_mod.GateConfig | None = None,
                 settings: EvalSettings | None = None) -> parallel.Helper | None:
    """A helper process to feed models (`helper.submit(candidate)`) before `evaluate` is called with
    it, so that evaluation runs beside other work; None where a helper is not used (parallel.wanted).
    `evaluate` must then get the same tasks, gates and settings. While it runs it takes
    `helper.threads` torch threads: keep this process to the rest until `evaluate` returns."""
    settings = settings or EvalSettings()
    settings, task_names, mmlu_format, _ = _plan(tasks, gates, settings, settings.base)
    if not parallel.wanted(settings, parallel.MIN_MODELS):
        return None
    return parallel.Helper((task_names, settings, gates, mmlu_format), settings, settings.base)


def evaluate(
    candidates: list[str | cand_mod.Candidate],
    tasks: list[str] | None = None,
    gates: gates_mod.GateConfig | None = None,
    settings: EvalSettings | None = None,
    progress: Progress | None = None,
    helper: parallel.Helper | None = None,
) -> EvalReport:
    """Evaluate the base and `candidates` on `tasks` (default: the gates file's tasks, else the
    built-in tasks and MMLU), check `gates`, and return the report (not yet written).

    `helper`: one from `start_helper`, already fed some models; this call shares its queue with it
    and ends it (also when it fails)."""
    if helper is None:
        return _evaluate(candidates, tasks, gates, settings, progress, None)
    try:
        return _evaluate(candidates, tasks, gates, settings, progress, helper)
    except BaseException:
        helper.close()
        raise


def _lacking(specs: list[harness.TaskSpec], keys: dict[str, str], use_cache: bool) -> list[tuple[str, ...]]:
    """The task groups of one model with a result missing from the cache (all of them with it off)."""
    missing = {s.name for s in specs if not use_cache or cache.read(keys[s.name]) is None}
    return [tuple(s.name for s in g) for g in harness.groups(cache.to_compute(specs, missing))]


def _row(candidate, roles: dict, model_hash: str, specs, computed: set[str], seconds: float, by_helper: dict) -> dict:
    """The report's row of a candidate: who evaluated what, how long it took, what came from the cache.
    `by_helper`: {task group (None: the whole model): seconds} of what the helper process finished."""
    row = {**candidate.to_dict(), "role": roles.get(candidate.name, "candidate"), "hash": model_hash,
           "cached": [s.name for s in specs if s.name not in computed]}
    if None in by_helper:  # the whole model: this process only read its results back
        return {**row, "seconds": by_helper[None], "evaluated_by": "helper process"}
    if by_helper:  # split: groups in each process, at the same time
        helped = [t for group in by_helper for t in group]
        return {**row, "seconds": round(max(seconds, *by_helper.values()), 2), "evaluated_by": f"helper process ({', '.join(helped)}) and this one"}
    return {**row, "seconds": round(seconds, 2)}


def _evaluate(candidates, tasks, gates, settings, progress, helper) -> EvalReport:
    settings = settings or EvalSettings()
    resolved = [c if isinstance(c, cand_mod.Candidate) else cand_mod.resolve_candidate(c, settings.base) for c in candidates]
    base_name = settings.base or next((c.base for c in resolved if c.kind == "adapter" and c.base), None)
    resolved = _unique_names([cand_mod.Candidate(c.name, c.kind, c.path, c.base or base_name, c.task, c.on_top_of)
                              if c.kind == "adapter" else c for c in resolved if c.kind != "base"])
    reference = cand_mod.base_candidate(base_name)
    settings, task_names, mmlu_format, notes = _plan(tasks, gates, settings, base_name)
    check_data_seed(resolved, task_names, settings.data_seed)
    if helper is not None and helper.spec_args != (task_names, settings, gates, mmlu_format):
        raise AdapterMergeError("evaluate: the helper was started for other tasks, gates or settings")
    specs = task_specs(task_names, settings, gates, mmlu_format)

    singles = _singles(resolved, task_names, gates)
    gated = [c.name for c in resolved if c.name not in singles.values()]
    if not gated:  # only single-task adapters (or no candidate at all): they are the candidates
        gated, singles = [c.name for c in resolved] or [REFERENCE], {}
    roles = {REFERENCE: "candidate" if gated == [REFERENCE] else "reference"}
    for task, name in singles.items():
        roles[name] = f"single-task adapter ({task})"
    if gates and gates.retention_min is not None and not [t for t in singles if t in task_names]:
        notes.append("retention: no single-task adapter among the candidates, so no retention gate was checked")

    everyone = [reference, *resolved]
    total = len(everyone) * len(specs)
    hashes = {c.name: cand_mod.content_hash(c) for c in everyone}
    keys = {c.name: {spec.name: cache.result_key(hashes[c.name], spec, settings, specs) for spec in specs} for c in everyone}
    lacking = {c.name: _lacking(specs, keys[c.name], settings.use_cache) for c in everyone}
    work = parallel.units([(c, lacking[c.name]) for c in everyone if lacking[c.name]], parallel.processes(settings))
    launched = spread.world()
    if launched.size > 1 and helper is not None:
        raise AdapterMergeError("evaluate: a helper process and a launcher's processes do not mix: pass workers=1")
    if helper is None and launched.size == 1 and parallel.wanted(settings, len(work)):
        helper = parallel.Helper((task_names, settings, gates, mmlu_format), settings, base_name)
    if helper is not None:
        for unit in work:
            helper.submit(unit.candidate, unit.tasks)
    scores: dict[str, dict[str, harness.TaskScores]] = {}
    finished: set[tuple[str, str]] = set()  # (candidate, task) pairs scored or read, for progress
    # Per candidate: tasks computed in this call and seconds spent, by this process and by the helper.
    computed: dict[str, set[str]] = {c.name: set() for c in everyone}
    seconds_here: dict[str, float] = {c.name: 0.0 for c in everyone}
    by_helper: dict[str, dict[tuple, float]] = {c.name: {} for c in everyone}

    def run(candidate, only: tuple[str, ...] | None = None) -> dict[str, harness.TaskScores]:
        """Scores of `candidate` on the specs (`only`: those tasks), from the cache or computed now."""
        started = time.perf_counter()
        wanted = [s for s in specs if only is None or s.name in only]
        mine: dict[str, harness.TaskScores] = {}
        if settings.use_cache:
            for spec in wanted:
                hit = cache.read(keys[candidate.name][spec.name])
                if hit is not None:
                    mine[spec.name] = hit
        missing = cache.to_compute(specs, {spec.name for spec in wanted if spec.name not in mine})
        finished.update((candidate.name, s.name) for s in wanted if s.name in mine)
        if missing:
            try:
                fresh = score_model(candidate, missing, settings, base_name, progress, len(finished), total)
            except AdapterMergeError:
                raise
            except Exception as exc:  # the model did not load: every task of it errors
                log.exception("loading %s failed", candidate.name)
                fresh = {s.name: harness.TaskScores(s.name, error=f"{type(exc).__name__}: {exc}") for s in missing}
            # A finished model sits in reference cycles (modules, hooks, lm-eval's wrapper) that only the
            # cycle collector frees: without this, a demo's 15 candidates held 4.5 GB by the fifth.
            gc.collect()
            for name, result in fresh.items():
                mine[name] = result
                if result.error is None:
                    cache.write(keys[candidate.name][name], result)
            computed[candidate.name].update(fresh)
            finished.update((candidate.name, name) for name in fresh)
        seconds_here[candidate.name] += time.perf_counter() - started
        if progress:
            progress(len(finished), total, f"{candidate.name}: done" if only is None else f"{candidate.name}: {', '.join(only)} done")
        return mine

    def visit(candidate):
        mine = run(candidate)
        scores[candidate.name] = {spec.name: mine[spec.name] for spec in specs}

    by_name = {c.name: c for c in everyone}
    queued = helper.names if helper is not None else set()
    with cputhreads.using(settings.threads):  # the count in the keys (the helper's too)
        if launched.size > 1:  # the launcher's processes share the candidates, then the scores
            for index, candidate in enumerate(everyone):
                if launched.mine(index):
                    visit(candidate)
            _exchange(scores, computed, seconds_here, launched)
        try:
            for candidate in everyone if launched.size == 1 else ():
                if candidate.name not in queued:
                    visit(candidate)
            # Then take queued units in turn with the helper, until none is left.
            while helper is not None and (taken := helper.take()) is not None:
                name = taken.candidate.name
                if name in by_name and name not in scores:  # not asked for here: skipped
                    if taken.tasks is None:
                        visit(by_name[name])
                    else:
                        run(by_name[name], taken.tasks)
        except BaseException:
            if helper is not None:  # one started here (a caller's is also closed by `evaluate`)
                helper.close()
            raise
        for (name, tasks), secs in (helper.finish() if helper is not None else {}).items():
            if name in by_helper:
                by_helper[name][tasks] = secs
                computed[name].update(tasks or (s.name for s in specs))
        for candidate in everyone:
            if candidate.name not in scores:  # the helper's (in part or whole): from the cache now
                visit(candidate)
    rows = [_row(c, roles, hashes[c.name], specs, computed[c.name], seconds_here[c.name], by_helper[c.name]) for c in everyone]

    if gates:
        gates = _named_references(gates, resolved)
    results = gates_mod.check_all(gates, scores, gated, singles, REFERENCE) if gates else []
    return EvalReport(
        candidates=rows, tasks=task_names, scores=scores, gates=results,
        comparisons=_comparisons(scores, REFERENCE), settings={**asdict(settings), "mmlu_format_used": mmlu_format if harness.MMLU in task_names else None,
                                                                  "base_resolved": str(base_mod.resolve_base(base_name))},
        versions=cache.versions(), notes=notes,
    )


def _exchange(scores: dict, computed: dict, seconds: dict, launched: spread.World) -> None:
    """Fill in what the other processes evaluated (in place), so that every process has it all."""
    mine = {name: {"scores": {t: r.to_dict() for t, r in by_task.items()}, "computed": sorted(computed[name]),
                   "seconds": seconds[name]} for name, by_task in scores.items()}
    for rank, theirs in enumerate(spread.all_gather_json(mine)):
        if rank == launched.rank:
            continue
        for name, entry in theirs.items():
            scores[name] = {t: harness.TaskScores.from_dict(r) for t, r in entry["scores"].items()}
            computed[name] = set(entry["computed"])
            seconds[name] = entry["seconds"]


def _named_references(config: gates_mod.GateConfig, cands: list[cand_mod.Candidate]) -> gates_mod.GateConfig:
    """A max_drop `reference:` may name a candidate by its folder path: use the candidate's name."""
    by_path = {c.path.resolve(): c.name for c in cands if c.path is not None}
    gates = []
    for g in config.gates:
        ref = g.reference
        if ref is not None and ref not in {c.name for c in cands} and ref != REFERENCE:
            ref = by_path.get(Path(ref).expanduser().resolve(), ref)
        gates.append(gates_mod.Gate(g.task, g.metric, g.kind, g.threshold, ref))
    return dataclasses.replace(config, gates=gates)


def _comparisons(scores: dict, reference: str) -> dict:
    """Paired difference of every candidate against the reference, every task and metric."""
    out: dict = {}
    ref = scores.get(reference, {})
    for name, tasks in scores.items():
        if name == reference:
            continue
        for task, s in tasks.items():
            r = ref.get(task)
            if s.error or r is None or r.error:
                continue
            for metric, items in s.items.items():
                pair = stats.paired(items, r.items.get(metric, {}))
                if not math.isnan(pair.diff):
                    out.setdefault(name, {}).setdefault(task, {})[metric] = pair.to_dict()
    return out
