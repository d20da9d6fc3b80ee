"""`run_recipe(recipe, output=...)`: the stages of a recipe run, each a small function.

base -> adapters (trained from presets, cached; or given) -> merge every candidate -> evaluate
with the gates -> choose (the sweep, on the dev split, when none passes) -> the winner (adapter and
re-quantized model) -> report. With `seeds:` (`run_seeds`), the adapters, merges and dev-split
scores are made at every seed, the merge whose worst seed ranks best is chosen (select.py) and
scored on the eval split at every seed. Everything is written into a temporary folder beside the output,
which replaces the output in one rename at the end. A candidate that fails becomes a row with its
error; one that cannot run here (a missing optional tool) a skipped row that says why.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from .. import base as base_mod
from .. import cputhreads
from ..adapter import load_adapter
from ..calibration import PROGRESS_LABEL
from ..engine import merge, merge_to_model
from ..errors import AdapterMergeError
from ..evalsuite import candidates as cand_mod
from ..evalsuite.runner import evaluate, start_helper
from ..evalsuite.settings import EvalSettings
from ..fileio import atomic_dir, check_destination
from ..methods import METHODS
from ..quantization import quantize_model
from ..training import heal as heal_mod
from . import adapters as adapters_mod
from . import baselines, dedupe, report, select, weights
from . import tasks as tasks_mod
from .rows import MMLU, Candidate, Row, Winner, best_merge, build_rows
from .schema import Recipe, check_seeds, load_recipe

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int, str], None]  # (stage, done, total, label)
STAGES = ("base", "train", "merge", "grams", "eval", "search", "sweep", "winner")


@dataclass(frozen=True)
class RunOptions:
    """How to run a recipe here (not what it compares): these never change its results' meaning."""

    quick: bool = False
    mmlu_data: str | None = None  # local cais/mmlu CSVs (None: $ADAPTERMERGE_MMLU_DATA, else the hub)
    threads: int | None = None  # torch threads of each evaluation process
    mergekit: str | None = None  # mergekit-yaml executable (None: found on PATH, else that row is skipped)
    train_workers: int | None = None  # adapters trained at once (None: 2 on a multi-core CPU for long runs)


@dataclass
class RecipeResult:
    output: Path
    rows: list[Row]
    winner: Winner | None  # written to output/winner (None when writing it failed or nothing was usable)
    report: dict  # report.json's data
    best: str | None = None  # the best merge by the gates, whether or not writing it worked
    best_rows: list[Row] = field(default_factory=list)  # its rows on the eval split: one, or one per seed

    @property
    def passed(self) -> bool:
        """The chosen merge was written and passes every gate (at every seed)."""
        return self.winner is not None and bool(self.best_rows) and all(g.passed for r in self.best_rows for g in r.gates)


def _noop(stage: str, done: int, total: int, label: str = "") -> None:
    pass


class Run:
    """One run's fixed context: the recipe, its options and the evaluation plan."""

    def __init__(self, recipe: Recipe, options: RunOptions, tmp: Path, progress: Progress, eval_seed: int | None = None):
        self.recipe, self.options, self.tmp, self.progress = recipe, options, tmp, progress
        # MMLU's sample: across seeds, the first seed's at every seed, so that only the adapters differ
        self.eval_seed = recipe.seed if eval_seed is None else eval_seed
        self.quick = recipe.quick if options.quick else None
        # MMLU's questions: the local copy, else the hub; None (and why) when neither can be read
        source, self.mmlu_problem = tasks_mod.mmlu_source(options.mmlu_data) if MMLU in recipe.tasks else (None, None)
        self.plan = tasks_mod.plan(recipe, options.quick, source)
        self.work = tmp / ".work"
        self.inputs: dict[str, Path] = {}  # adapter name -> PEFT folder

    @property
    def base(self) -> str | None:
        return self.recipe.base

    def eval_settings(self, split: str = "eval") -> EvalSettings:
        """The evaluation settings; on the dev split MMLU's questions come from its dev split."""
        return EvalSettings(base=self.base, mmlu_data=self.options.mmlu_data, mmlu_limit=self.plan.mmlu_limit,
                            mmlu_subjects=self.plan.mmlu_subjects, seed=self.eval_seed,
                            mmlu_split="dev" if split == "dev" else "test", threads=self.options.threads,
                            batch_size=self.recipe.eval.batch_size, dtype=self.recipe.eval.dtype)

    def eval_tasks(self, gate_config) -> list[str]:
        return [t for t in gate_config.tasks if self.plan.has_mmlu or t != MMLU]


# ---------------------------------------------------------------- adapters

def prepare_adapters(run: Run) -> list[Row]:
    """The input adapters' rows: the presets trained (or taken from the cache; side by side on a
    multi-core CPU), the given ones as PEFT folders."""
    recipe, progress = run.recipe, run.progress
    trained = [a for a in recipe.adapters if a.preset is not None]
    configs = {a.name: adapters_mod.choose_config(a.preset, base=recipe.base, seed=recipe.seed, quick=run.quick, steps=a.steps)
               for a in trained}
    steps: dict[str, str] = {}
    finished: set[str] = set()

    def step(name: str, done: int, total: int, loss: float) -> None:
        steps[name] = f"{name} step {done}/{total} loss {loss:.3f}"
        if done == total:
            finished.add(name)
        progress("train", len(finished), len(configs), ", ".join(steps.values()))

    results = {}
    if configs:
        progress("train", 0, len(configs), ", ".join(configs))
        results = adapters_mod.ensure_adapters(configs, step, workers=run.options.train_workers)
        progress("train", len(configs), len(configs), "done")
    rows = []
    for spec in recipe.adapters:
        if spec.preset is not None:
            path, reused = results[spec.name]
            rows.append(Row(spec.name, "adapter", path=path, task=spec.task, reused=reused,
                            steps=configs[spec.name].resolved().max_steps))
        else:
            path = adapters_mod.take_given(spec, run.tmp / "adapters" / spec.name, recipe.base)
            rows.append(Row(spec.name, "adapter", path=path, task=spec.task, source=str(spec.path)))
        run.inputs[spec.name] = Path(path)
    return rows


# ---------------------------------------------------------------- candidates

def candidates(run: Run) -> list[Candidate]:
    """The recipe's merges (quick parameters applied in a quick run), then its baselines."""
    recipe = run.recipe
    n = len(recipe.adapters)
    quick = recipe.quick.params if run.options.quick else {}
    made = [Candidate(m.name, "heal" if m.heal else "method", m.method, {**m.params, **quick.get(m.method, {})},
                      m.weights or (1.0,) * n, _heal_steps(run, m.heal))
            for m in recipe.candidates]
    out = [c for c in made if not c.uses_training_compute]
    healed = [c for c in made if c.uses_training_compute]
    ties_density = METHODS.get("ties").Params().density
    baseline = {
        "peft_ties": Candidate("peft_ties", "peft", "ties", {"density": ties_density}, (1.0,) * n),
        "peft_ties_svd": Candidate("peft_ties_svd", "peft", "ties_svd", {"density": ties_density}, (1.0,) * n),
        "mergekit_ties": Candidate("mergekit_ties", "mergekit", "ties", {"density": ties_density}, (1.0,) * n),
        "sequential_training": Candidate("sequential_training", "train", "on_top_of", {}, (1.0,) * n),
    }
    # the merges that use training compute last, side by side: the heals, then sequential training
    return (out + [baseline[b] for b in recipe.baselines if not baseline[b].uses_training_compute] + healed
            + [baseline[b] for b in recipe.baselines if baseline[b].uses_training_compute])


def _heal_steps(run: Run, steps: int) -> int:
    """A candidate's heal steps; a quick run takes the same fraction of them as of the presets' steps."""
    if not steps or run.quick is None:
        return steps
    return max(1, round(steps * run.quick.step_fraction))


def _healed(run: Run, candidate: Candidate, out: Path):
    """The candidate's merge, then its heal (training/heal.py) on the input adapters' own prompts."""
    items = [load_adapter(p) for p in run.inputs.values()]
    config = heal_mod.HealConfig(steps=candidate.heal, seed=run.recipe.seed)
    prompts = heal_mod.resolve_prompts(items, config)  # before the merge: a given adapter may lack training.json
    merged = merge(items, candidate.method, list(candidate.weights), base=run.base, seed=run.recipe.seed,
                   progress=_calibration_progress(run.progress), **candidate.params)
    healed = heal_mod.heal(merged, items, config, base=run.base, prompts=prompts, progress=lambda s, n, loss: run.progress(
        "train", s, n, f"{candidate.name}: heal step {s}/{n} loss {loss:.3f}"))
    healed.save(out)
    return healed


def _sequential_training(run: Run, out: Path) -> Path:
    """Train each next preset on top of the chain so far (`train --on-top-of`), folding the chain
    with the sequential method after each step; the result is one adapter on the base."""
    recipe = run.recipe
    if any(a.preset is None for a in recipe.adapters):
        raise baselines.Skipped("sequential training needs every adapter trained from a preset by the recipe")
    first, *rest = recipe.adapters
    chain = run.inputs[first.name]
    work = run.work / "sequential"
    for spec in rest:
        cfg = adapters_mod.choose_config(spec.preset, base=recipe.base, seed=recipe.seed, quick=run.quick, steps=spec.steps,
                                         on_top_of=chain)
        trained, _ = adapters_mod.ensure_adapter(cfg, lambda s, n, loss, t=spec.name: run.progress(
            "train", len(recipe.adapters), len(recipe.adapters), f"{t} on top of the chain: step {s}/{n}"))
        folded = merge([load_adapter(chain), load_adapter(trained)], "sequential", [1.0, 1.0], base=recipe.base, seed=recipe.seed)
        chain = folded.save(work / f"chain-{spec.name}", force=True)
    shutil.copytree(chain, out)
    return out


def _calibration_progress(progress: Progress):
    """A merge's callback that shows regmean's calibration pass (minutes: the base reads every
    adapter's records) on a bar of its own; the module loop (seconds) stays off it."""

    def show(done: int, total: int, label: str) -> None:
        if label.startswith(PROGRESS_LABEL):
            progress("grams", done, total, label)
    return show


def make_candidate(run: Run, candidate: Candidate) -> Row:
    """Produce one candidate's output; a failure is returned as the row's error, never raised."""
    recipe = run.recipe
    out = run.tmp / "merges" / candidate.name
    paths = dict(run.inputs)
    row = Row(candidate.name, "merge", candidate=candidate)
    started = time.perf_counter()
    try:
        if candidate.kind == "method":
            merged = merge([load_adapter(p) for p in paths.values()], candidate.method, list(candidate.weights),
                           base=recipe.base, seed=recipe.seed, progress=_calibration_progress(run.progress), **candidate.params)
            merged.save(out)
            row.lowrank = _lowrank_summary(merged.metadata)
        elif candidate.kind == "peft":
            baselines.peft_merge(paths, out, candidate.method, base=recipe.base, weights=list(candidate.weights),
                                 density=candidate.params["density"], seed=recipe.seed, work=run.work / "peft")
        elif candidate.kind == "mergekit":
            baselines.mergekit_merge(paths, out, base=recipe.base, weights=list(candidate.weights), density=candidate.params["density"],
                                     work=run.work / "mergekit", executable=run.options.mergekit, threads=torch.get_num_threads())
            row.model = "full"
        elif candidate.kind == "heal":
            row.lowrank = _lowrank_summary(_healed(run, candidate, out).metadata)
        elif candidate.kind == "train":
            _sequential_training(run, out)
        else:
            raise AdapterMergeError(f"unknown candidate kind {candidate.kind!r}")
        row.path = out
    except baselines.Skipped as exc:
        row.error, row.skipped = str(exc), True
    except Exception as exc:  # noqa: BLE001 - one candidate failing must not stop the comparison
        log.warning("candidate %s failed: %s", candidate.name, exc, exc_info=log.isEnabledFor(logging.DEBUG))
        row.error = f"{type(exc).__name__}: {exc}"
        shutil.rmtree(out, ignore_errors=True)
    row.seconds = round(time.perf_counter() - started, 2)
    return row


def _lowrank_summary(provenance: dict) -> dict:
    """Output ranks and the truncation's relative error over the modules (the merge's provenance,
    as written to adaptermerge.json): a sparse merge's row is that of its rank-truncated adapter,
    not of the dense merge."""
    summary = provenance.get("summary") or {}
    return {k: summary[k] for k in ("ranks", "all_exact", "mean_rel_error", "max_rel_error") if k in summary}


# ---------------------------------------------------------------- evaluation

def _eval_candidate(row: Row, base: str | None) -> cand_mod.Candidate:
    kind = "merged" if row.model == "full" else "adapter"
    return cand_mod.Candidate(row.name, kind, Path(row.path), base=base, task=row.task if row.kind == "adapter" else None)


def mark_copies(entries: list[Row]) -> None:
    """A merge with the same weights as an earlier one (dedupe.py) gets `same_as` and
    `probe_difference`; it is not evaluated again."""
    named = [(e.name, Path(e.path)) for e in entries if e.kind == "merge" and e.error is None and e.model == "adapter"]
    by_name = {e.name: e for e in entries}
    for name, (other, diff) in dedupe.find_copies(named).items():
        by_name[name].same_as, by_name[name].probe_difference = other, diff


def to_evaluate(entries: list[Row]) -> list[Row]:
    return [e for e in entries if e.kind != "base" and e.error is None and not e.same_as]


def merge_and_score(run: Run, entries: list[Row], gate_config, split: str = "eval"):
    """Every candidate merged into `entries` (an early helper, where there is one, scoring them as
    they come), then all of them scored on `split`: (the evaluation, merge seconds, scoring seconds)."""
    t = time.perf_counter()
    with EarlyEvaluation(run, gate_config, split) as early:
        early.feed(entries)
        todo = candidates(run)
        for i, candidate in enumerate(todo):
            run.progress("merge", i, len(todo), candidate.name)
            entries.append(make_candidate(run, candidate))
            early.feed(entries)
        run.progress("merge", len(todo), len(todo), "done")
        merged = time.perf_counter()
        evaluated = evaluate_entries(run, entries, gate_config, helper=early.take(), split=split, stage="eval")
    return evaluated, round(merged - t, 2), round(time.perf_counter() - merged, 2)


def _resolve_base(recipe: Recipe, progress: Progress) -> float:
    """The recipe's base resolved (converted once into the cache when embedded); its seconds."""
    t = time.perf_counter()
    progress("base", 0, 1, "resolving")
    progress("base", 1, 1, str(base_mod.resolve_base(recipe.base).name))
    return round(time.perf_counter() - t, 2)


def evaluate_entries(run: Run, entries: list[Row], gate_config, helper=None, split: str = "eval", stage: str | None = None):
    """Evaluate the base and every entry that produced an output (one call: cached results are
    reused; `helper`: one started early, already fed part of them). A copy of an earlier merge
    gets that one's scores."""
    mark_copies(entries)
    cands = [_eval_candidate(e, run.base) for e in to_evaluate(entries)]
    stage = stage or ("eval" if split == "eval" else "sweep")
    evaluated = evaluate(cands, tasks=run.eval_tasks(gate_config), gates=gate_config, settings=run.eval_settings(split),
                         progress=lambda d, n, label: run.progress(stage, d, n, f"{split}: {label}"), helper=helper)
    for e in entries:
        if e.same_as in evaluated.scores:
            evaluated.scores[e.name] = evaluated.scores[e.same_as]
    return evaluated


class EarlyEvaluation:
    """The evaluation helper process, started before the merges (evalsuite/parallel.py): it
    evaluates the base, the input adapters and each merge as soon as it is written, while this
    process, on the threads the helper leaves, goes on with the baselines (sequential training,
    mergekit, PEFT). No helper (one core, a GPU, the results cache off): nothing changes."""

    def __init__(self, run: Run, gate_config, split: str = "eval"):
        self.run, self.gate_config, self.split = run, gate_config, split
        self.helper = None
        self._threads = contextlib.ExitStack()  # this process's thread count while the helper runs

    def __enter__(self) -> "EarlyEvaluation":
        self.helper = start_helper(self.run.eval_tasks(self.gate_config), self.gate_config, self.run.eval_settings(self.split))
        if self.helper is not None:  # the helper has its threads; this process the rest
            self._threads.enter_context(cputhreads.using(max(1, cputhreads.machine_threads() - self.helper.threads)))
        return self

    def feed(self, entries: list[Row]) -> None:
        """Queue the base and every entry with an output that is not a copy of an earlier merge."""
        if self.helper is None:
            return
        mark_copies(entries)
        self.helper.submit(cand_mod.base_candidate(self.run.base))
        for entry in to_evaluate(entries):
            self.helper.submit(_eval_candidate(entry, self.run.base))

    def take(self):
        """The helper, handed to `evaluate`, which ends it."""
        helper, self.helper = self.helper, None
        return helper

    def __exit__(self, *exc) -> None:
        if self.helper is not None:  # never handed over: an error on the way
            self.helper.close()
        self._threads.close()


# ---------------------------------------------------------------- choosing and writing

def _best_method(rows: list[Row]) -> Row | None:
    """The best merge of a registered method: the one the sweep can re-run with new weights and settings."""
    return best_merge([r for r in rows if r.candidate is not None and r.candidate.kind == "method"])


def choice_split(recipe: Recipe) -> tuple[str, str | None]:
    """(the split the sweep chooses on, a note when it is not the one asked for)."""
    lacking = tasks_mod.dev_split_lacking(recipe)
    if recipe.select.split == "eval":
        return "eval", "the recipe chooses on the eval split (select.split: eval): the winner's row is a best of several there"
    if lacking:
        return "eval", (f"no dev split for {', '.join(lacking)} (give `dev: FILE.jsonl` in its gate): the choice was made "
                        "on the eval split, so the winner's row is a best of several there")
    return "dev", None


def sweep(run: Run, best: Row | None, rows: list[Row], entries: list[Row], split: str, searched) -> select.SweepOutcome:
    """select.run_sweep from the best merge and the best of a registered method on the eval split
    (none when no merge gave a usable result: then only the sweep's fallback points)."""
    names = {r.name for r in (best, _best_method(rows)) if r is not None}
    # A copy of an earlier merge (same_as) starts as that merge: the copy is never evaluated itself.
    names = {next((e.same_as or e.name for e in entries if e.name == n), n) for n in names}
    starts = [e for e in entries if e.name in names]

    def merge_point(candidate: Candidate) -> Row:
        run.progress("sweep", 0, 0, f"merging {candidate.name}")  # total 0: a bar without a count
        return replace(make_candidate(run, candidate), sweep=True)

    def evaluate_on(scored, gate_config, on):
        return evaluate_entries(run, scored, gate_config, split=on).scores

    return select.run_sweep(starts, entries, run.recipe, run.plan.docs, run.plan.has_mmlu, run.tmp / "eval-data", merge_point,
                            evaluate_on, split=split, quick=run.options.quick, searched=searched)


def search_weights(run: Run, notes: list[str]):
    """The proxy weight search over the preset adapters, or None (with a note) when it fails."""
    named = {spec.preset: run.inputs[spec.name] for spec in run.recipe.adapters}
    try:
        return weights.search_weights(run.base, named, seed=run.recipe.seed,
                                      per_task=weights.QUICK_PER_TASK if run.options.quick else weights.PER_TASK,
                                      rounds=1 if run.options.quick else weights.ROUNDS,
                                      progress=lambda n, label: run.progress("search", n, 0, label))
    except Exception as exc:  # noqa: BLE001 - the rest of the sweep still runs
        log.warning("weight search failed: %s", exc, exc_info=log.isEnabledFor(logging.DEBUG))
        notes.append(f"weight search failed: {type(exc).__name__}: {exc}")
        return None


def write_winner(run: Run, row: Row, out: Path) -> Winner:
    """out/adapter (the PEFT adapter; none for a full-model merge) and out/<scheme> (the re-quantized model)."""
    scheme = run.recipe.output.quantize
    out.mkdir(parents=True)
    notes, adapter = [], None
    source = Path(row.path)
    run.progress("winner", 0, 1, row.name)
    if row.model == "full":
        notes.append("a full-model merge (mergekit) has no adapter form")
        if scheme is not None:
            quantize_model(source, out / scheme, scheme, source=row.name)
    else:
        shutil.copytree(source, out / "adapter")
        adapter = "adapter"
        if scheme is not None:
            # One adapter through the sequential method is the adapter itself, DoRA included.
            merge_to_model([load_adapter(source)], out / scheme, "sequential", [1.0], base=run.base, requantize=scheme)
    run.progress("winner", 1, 1, "done")
    return Winner(row.name, adapter, scheme, scheme, tuple(notes))


def _winner_or_note(run: Run, row: Row, out: Path, notes: list[str], timings: dict) -> Winner | None:
    """write_winner, timed; a failure becomes a note (the table is still worth writing)."""
    t = time.perf_counter()
    winner = None
    try:
        winner = write_winner(run, row, out)
    except Exception as exc:  # noqa: BLE001 - the table is still worth writing
        log.warning("writing the winner failed: %s", exc, exc_info=log.isEnabledFor(logging.DEBUG))
        notes.append(f"writing the winner {row.name} failed: {type(exc).__name__}: {exc}")
    timings["winner"] = round(time.perf_counter() - t, 2)
    return winner


def _eval_notes(notes: list[str]) -> list[str]:
    # The suite's own retention note concerns its gates; the rows compute retention themselves.
    return [n for n in notes if not n.startswith("retention:")]


def machine() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average": [round(x, 2) for x in load] if load else None}


# ---------------------------------------------------------------- the run

def run_recipe(recipe: Recipe | str | Path, *, output: str | Path, force: bool = False, progress: Progress | None = None,
               quick: bool = False, mmlu_data: str | None = None, threads: int | None = None, mergekit: str | None = None,
               train_workers: int | None = None) -> RecipeResult:
    """Run a recipe (a Recipe or its YAML file) into `output` (see the module docstring).

    `quick`: the recipe's quick settings (fewer training steps, evaluation subsets); `mmlu_data`:
    local cais/mmlu CSVs (None: $ADAPTERMERGE_MMLU_DATA, else the hub). When MMLU cannot be read
    from either, it is not scored: report.json's `warnings` and the top of report.md say so, and
    MMLU's gates fail for every model (recipe/tasks.py)."""
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    check_seeds(recipe, str(recipe.path or "recipe"))  # a Recipe built or changed in code
    progress = progress or _noop
    # the one output rule (fileio.check_destination): never a given adapter or the base folder
    inputs = recipe.given_files
    if recipe.base and Path(recipe.base).expanduser().exists():
        inputs.append(Path(recipe.base).expanduser())
    output = check_destination(Path(output), force, inputs)
    options = RunOptions(quick=quick, mmlu_data=mmlu_data, threads=threads,
                         mergekit=mergekit, train_workers=train_workers)
    if recipe.seeds:
        return run_seeds(recipe, options, output=output, force=force, inputs=inputs, progress=progress)
    recipe = recipe.one_seed(recipe.seed)  # a given adapter's `paths:` entry for the seed as its path
    started, timings, notes, extra, warnings = time.perf_counter(), {}, [], {}, []
    with atomic_dir(output, force=force, inputs=inputs) as tmp:
        run = Run(recipe, options, tmp, progress)
        if run.mmlu_problem:
            warnings.append(tasks_mod.unscored_warning(run.mmlu_problem, recipe))
            log.warning("%s", warnings[-1])
        timings["base"] = _resolve_base(recipe, progress)

        t = time.perf_counter()
        inputs = prepare_adapters(run)
        timings["train"] = round(time.perf_counter() - t, 2)

        (tmp / "merges").mkdir()
        entries = [Row("base", "base"), *inputs]
        gate_config = tasks_mod.gate_config(recipe, run.plan.docs, tmp / "eval-data")
        eval_names = tasks_mod.eval_names(recipe, run.plan.docs)
        headline = {task: recipe.headline(task) for task in eval_names}
        evaluated, timings["merge"], timings["eval"] = merge_and_score(run, entries, gate_config)
        extra["evaluated_by_helper"] = [c["name"] for c in evaluated.candidates if c.get("evaluated_by")]
        rows = _scored_rows(run, entries, evaluated.scores, gate_config, eval_names, headline)

        best = best_merge(rows)
        if recipe.select.sweep and not (best and best.passed):
            t = time.perf_counter()
            split, split_note = choice_split(recipe)
            if split_note:
                notes.append(split_note)
            search = search_weights(run, notes) if recipe.select.weight_search else None
            outcome = sweep(run, best, rows, entries, split, search.best.weights if search else None)
            extra["sweep"] = outcome.summary()
            if outcome.chosen is not None:
                if outcome.chosen.sweep:  # its first evaluation on the eval split
                    entries.append(outcome.chosen)
                    evaluated = evaluate_entries(run, entries, gate_config)
                    rows = _scored_rows(run, entries, evaluated.scores, gate_config, eval_names, headline)
                best = next(r for r in rows if r.name == outcome.chosen.name)
            note = select.selection_note(extra["sweep"], best.name if best else None)
            if note:
                notes.append(note)
            timings["sweep"] = round(time.perf_counter() - t, 2)
            extra["weight_search"] = search.as_dict() if search else None

        winner = None
        if best is not None:
            winner = _winner_or_note(run, best, tmp / "winner", notes, timings)
        else:
            notes.append("no merge produced a usable result: no winner written")
        shutil.rmtree(run.work, ignore_errors=True)
        timings["total"] = round(time.perf_counter() - started, 2)

        data = report_data(run, rows, winner, timings=timings, notes=notes + _eval_notes(evaluated.notes),
                           eval_names=eval_names, headline=headline, extra={"warnings": warnings, **extra})
        report.write(data, tmp)
    return RecipeResult(output, rows, winner, data, best.name if best else None, [best] if best else [])


def run_seeds(recipe: Recipe, options: RunOptions, *, output: Path, force: bool, inputs: list[Path],
              progress: Progress) -> RecipeResult:
    """The run across `recipe.seeds` (the module docstring): for each seed, its adapters, every
    candidate merged from them and scored on the choice split (seed-N/ holds them); the max-min
    choice (select.choose_across_seeds); that merge scored on the eval split at every seed, beside
    the base and each seed's adapters; the first seed's merge written as the winner."""
    seeds, first = recipe.seeds, recipe.seeds[0]
    started, timings, notes, warnings = time.perf_counter(), {}, [], []
    split, split_note = choice_split(recipe)
    notes += [split_note] if split_note else []
    if recipe.select.sweep:
        notes.append("no sweep across seeds: its points follow one seed's best merge; the choice is among the recipe's candidates")
    with atomic_dir(output, force=force, inputs=inputs) as tmp:
        timings["base"] = _resolve_base(recipe, progress)
        runs, entries, choice_rows = {}, {}, {}
        for seed in seeds:
            def shown(stage: str, done: int, total: int, label: str = "", seed=seed) -> None:
                progress(stage, done, total, f"seed {seed}: {label}")

            run = runs[seed] = Run(recipe.one_seed(seed), options, tmp / f"seed-{seed}", shown, eval_seed=first)
            if run.mmlu_problem and not warnings:
                warnings.append(tasks_mod.unscored_warning(run.mmlu_problem, recipe))
                log.warning("%s", warnings[-1])
            t = time.perf_counter()
            entries[seed] = [Row("base", "base"), *prepare_adapters(run)]
            timings[f"train (seed {seed})"] = round(time.perf_counter() - t, 2)
            (run.tmp / "merges").mkdir(parents=True)
            gate_config = tasks_mod.gate_config(run.recipe, run.plan.docs, tmp / "eval-data", split=split)
            names = tasks_mod.eval_names(run.recipe, run.plan.docs, split)
            # as in one seed's run, on the choice split
            evaluated, timings[f"merge (seed {seed})"], timings[f"{split} (seed {seed})"] = merge_and_score(
                run, entries[seed], gate_config, split)
            choice_rows[seed] = _scored_rows(run, entries[seed], evaluated.scores, gate_config, names,
                                             {task: recipe.headline(task) for task in names})
        choice_names = names
        chosen, ranked = select.choose_across_seeds(choice_rows)

        # The chosen merge on the eval split at every seed: its first evaluation there at each.
        t = time.perf_counter()
        run0 = runs[first]
        gate_config = tasks_mod.gate_config(recipe, run0.plan.docs, tmp / "eval-data")
        eval_names = tasks_mod.eval_names(recipe, run0.plan.docs)
        headline = {task: recipe.headline(task) for task in eval_names}
        rows, best_rows, eval_notes = [], {}, []
        for seed in seeds:
            # the chosen merge evaluated itself, even where it was a copy of another on the choice split
            keep = [e if e.kind != "merge" else replace(e, same_as=None, probe_difference=None)
                    for e in entries[seed] if e.kind in ("base", "adapter") or e.name == chosen]
            evaluated = evaluate_entries(runs[seed], keep, gate_config)
            eval_notes += [n for n in _eval_notes(evaluated.notes) if n not in eval_notes]
            scored = _scored_rows(runs[seed], keep, evaluated.scores, gate_config, eval_names, headline)
            named = [replace(r, name=seed_name(r.name, seed)) for r in scored]
            best_rows.update({seed: n for r, n in zip(scored, named) if r.name == chosen})
            rows += [r for r in named if r.kind != "base" or seed == first]
        timings["eval"] = round(time.perf_counter() - t, 2)

        winner = None
        if chosen is not None:
            source = next(e for e in entries[first] if e.name == chosen)
            winner = _winner_or_note(run0, source, tmp / "winner", notes, timings)
            notes.append(f"the winner written is {chosen} merged from the seed-{first} adapters (seed-{first}/merges/{chosen}); "
                         f"the other seeds' merges are in seed-N/merges/")
        else:
            notes.append("no merge was usable at every seed: no winner written")
        for run in runs.values():
            shutil.rmtree(run.work, ignore_errors=True)
        timings["total"] = round(time.perf_counter() - started, 2)

        by_name = {seed: {r.name: r for r in choice_rows[seed]} for seed in seeds}
        section = {
            "seeds": list(seeds), "split": split, "eval_tasks": choice_names, "chosen": chosen,
            "rule": "max-min: each merge's worst seed (rows.rank_key), the best of those",
            "ranking": [{"name": n, "describe": _describe(by_name, n),
                         **select.across_seeds({s: by_name[s][n] for s in seeds if n in by_name[s]})} for n in ranked],
            "eval": select.across_seeds(best_rows) if best_rows else None,
        }
        data = report_data(run0, rows, winner, timings=timings, notes=notes + eval_notes, eval_names=eval_names,
                           headline=headline, extra={"warnings": warnings, "seeds": section}, recipe=recipe, root=tmp)
        report.write(data, tmp)
    return RecipeResult(output, rows, winner, data, chosen, [best_rows[s] for s in seeds if s in best_rows])


def seed_name(name: str, seed: int) -> str:
    """A row's name in a run across seeds: the base is one row, every other row one per seed."""
    return name if name == "base" else f"{name} (seed {seed})"


def _describe(by_name: dict[int, dict[str, Row]], name: str) -> str | None:
    row = next((rows[name] for rows in by_name.values() if name in rows), None)
    return row.candidate.describe if row is not None and row.candidate is not None else None


def _scored_rows(run: Run, entries: list[Row], scores: dict, gate_config, eval_names: dict, headline: dict) -> list[Row]:
    """The rows with their evaluation; when MMLU could not be read, its gates failed on each (gates fail closed)."""
    rows = build_rows(entries, scores, gate_config, eval_names, headline, run.plan.has_mmlu)
    return tasks_mod.fail_unscored(rows, run.recipe, run.mmlu_problem) if run.mmlu_problem else rows


def report_data(run: Run, rows: list[Row], winner: Winner | None, *, timings: dict, notes: list[str], eval_names: dict,
                headline: dict, extra: dict, recipe: Recipe | None = None, root: Path | None = None) -> dict:
    """report.json's data. `recipe`, `root`: the recipe and the run's folder when `run` is one seed's of several."""
    recipe = recipe or run.recipe
    candidates_json = report.plain(rows)
    report.relative_paths(candidates_json, root or run.tmp)
    metrics = {**headline, **({MMLU: "acc"} if run.plan.has_mmlu else {})}
    return {
        "recipe": recipe.name,
        "description": recipe.description,
        "tasks": list(eval_names),
        "metrics": metrics,
        "candidates": candidates_json,
        "winner": report.plain(winner),
        "gates": {"rules": [g.describe() for g in recipe.gates.gates],
                  "retention_min": recipe.gates.retention_min},
        "eval_tasks": eval_names,
        "run": {**report.plain(run.options), "docs": run.plan.docs, "mmlu_limit": run.plan.mmlu_limit,
                "mmlu_subjects": run.plan.mmlu_subjects},
        "settings": report.plain(recipe),
        "timings_s": timings,
        "machine": machine(),
        "notes": notes,
        **report.plain(extra),
    }
