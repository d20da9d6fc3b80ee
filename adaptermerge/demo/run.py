"""`run_demo(config, progress)`: the stages of the end-to-end demo, each a small function.

base -> train (cached) -> merge every way -> evaluate -> (sweep) -> winner (PEFT adapter + NF4 model)
-> report. Everything is written into a temporary folder beside the output, which replaces the
output in one rename at the end. An approach that fails becomes a row with its error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from .. import base as base_mod
from ..errors import AdapterMergeError
from ..train.data import TASKS
from . import adapters as adapters_mod
from . import baselines, devsweep, identical, plan, report, results, weightsearch
from .plan import Approach, DemoConfig

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int, str], None]  # (stage, done, total, label)


@dataclass
class DemoResult:
    output: Path
    rows: list[dict]
    winner: str | None  # the best merge, written to output/winner (None when writing it failed)
    report: dict
    best: str | None = None  # the best merge by the gates, whether or not writing it worked


def _noop(stage: str, done: int, total: int, label: str = "") -> None:
    pass


# ---------------------------------------------------------------- stages

def train_singles(config: DemoConfig, progress: Progress) -> dict[str, dict]:
    """{task: {"path", "reused", "steps"}} for the three task adapters; those not cached train side
    by side on a multi-core CPU (adapters.ensure_adapters)."""
    configs = {task: adapters_mod.choose_config(task, base=config.base, seed=config.seed, quick=config.quick,
                                                steps=(config.train_steps or {}).get(task)) for task in TASKS}
    steps: dict[str, str] = {}
    finished: set[str] = set()

    def step(task: str, done: int, total: int, loss: float) -> None:
        steps[task] = f"{task} step {done}/{total} loss {loss:.3f}"
        if done == total:
            finished.add(task)
        progress("train", len(finished), len(TASKS), ", ".join(steps.values()))

    progress("train", 0, len(TASKS), ", ".join(TASKS))
    trained = adapters_mod.ensure_adapters(configs, step, workers=config.train_workers)
    progress("train", len(TASKS), len(TASKS), "done")
    return {task: {"path": path, "reused": reused, "steps": configs[task].resolved().max_steps}
            for task, (path, reused) in trained.items()}


def _sequential_training(singles: dict[str, dict], config: DemoConfig, out: Path, work: Path, progress: Progress) -> Path:
    """Train each next task on top of the chain so far (`train --on-top-of`), folding the chain with
    the sequential method after each step; the result is one adapter on the base."""
    from .. import load_adapter, merge

    chain = singles[TASKS[0]]["path"]
    for task in TASKS[1:]:
        cfg = adapters_mod.choose_config(task, base=config.base, seed=config.seed, quick=config.quick,
                                         steps=(config.train_steps or {}).get(task), on_top_of=chain)
        trained, _ = adapters_mod.ensure_adapter(cfg, lambda s, n, loss, t=task: progress("train", len(TASKS), len(TASKS), f"{t} on top of the chain: step {s}/{n}"))
        folded = merge([load_adapter(chain), load_adapter(trained)], "sequential", [1.0, 1.0], base=config.base, seed=config.seed)
        chain = folded.save(work / f"chain-{task}", force=True)
    shutil.copytree(chain, out)
    return out


def _calibration_progress(progress: Progress):
    """A merge's callback that shows regmean's calibration pass (minutes: the base reads every
    adapter's records) on a bar of its own; the module loop (seconds) stays off it."""
    from ..calibration import PROGRESS_LABEL

    def report(done: int, total: int, label: str) -> None:
        if label.startswith(PROGRESS_LABEL):
            progress("grams", done, total, label)
    return report


def run_approach(approach: Approach, singles: dict[str, dict], config: DemoConfig, merges_dir: Path, work: Path,
                 progress: Progress) -> dict:
    """Produce one approach's output; a failure is returned as the row's error, never raised."""
    from .. import load_adapter, merge

    out = merges_dir / approach.name
    paths = {task: singles[task]["path"] for task in TASKS}
    entry = {"name": approach.name, "kind": "merge", "approach": approach.to_dict(), "path": None, "model": "adapter",
             "error": None, "skipped": False}
    started = time.perf_counter()
    try:
        if approach.kind == "method":
            merged = merge([load_adapter(p) for p in paths.values()], approach.method, list(approach.weights),
                           base=config.base, seed=config.seed, progress=_calibration_progress(progress), **approach.params)
            merged.save(out)
            entry["lowrank"] = _lowrank_summary(merged.metadata)
        elif approach.kind == "peft":
            baselines.peft_merge(paths, out, approach.method, base=config.base, weights=list(approach.weights),
                                 density=approach.params["density"], seed=config.seed, work=work / "peft")
        elif approach.kind == "mergekit":
            import torch

            baselines.mergekit_merge(paths, out, base=config.base, weights=list(approach.weights), density=approach.params["density"],
                                     work=work / "mergekit", executable=config.mergekit, threads=torch.get_num_threads())
            entry["model"] = "full"
        elif approach.kind == "train":
            _sequential_training(singles, config, out, work / "sequential", progress)
        else:
            raise AdapterMergeError(f"unknown approach kind {approach.kind!r}")
        entry["path"] = out
    except baselines.Skipped as exc:
        entry.update(error=f"skipped: {exc}", skipped=True)
    except Exception as exc:  # noqa: BLE001 - one approach failing must not stop the comparison
        log.warning("approach %s failed: %s", approach.name, exc, exc_info=log.isEnabledFor(logging.DEBUG))
        entry["error"] = f"{type(exc).__name__}: {exc}"
        shutil.rmtree(out, ignore_errors=True)
    entry["seconds"] = round(time.perf_counter() - started, 2)
    return entry


def _lowrank_summary(provenance: dict) -> dict:
    """Output ranks and the truncation's relative error over the modules (the merge's provenance,
    as written to adaptermerge.json): a sparse merge's row is that of its rank-truncated adapter,
    not of the dense merge."""
    summary = provenance.get("summary") or {}
    return {k: summary[k] for k in ("ranks", "all_exact", "mean_rel_error", "max_rel_error") if k in summary}


def _candidate(entry: dict, base: str | None):
    from ..evalsuite.candidates import Candidate

    kind = "merged" if entry.get("model") == "full" else "adapter"
    task = entry["name"] if entry["kind"] == "adapter" else None
    return Candidate(entry["name"], kind, Path(entry["path"]), base=base, task=task)


def eval_settings(config: DemoConfig, split: str = "eval"):
    """The evaluation settings; on the dev split MMLU's questions come from its dev split."""
    from ..evalsuite.runner import EvalSettings

    return EvalSettings(base=config.base, mmlu_data=config.mmlu_data, mmlu_limit=config.mmlu_limit,
                        mmlu_subjects=config.mmlu_subjects, seed=config.seed, mmlu_split="dev" if split == "dev" else "test",
                        threads=config.threads, batch_size=config.eval_batch_size, dtype=config.eval_dtype)


def eval_tasks(gate_config, has_mmlu: bool) -> list[str]:
    return [t for t in gate_config.tasks if has_mmlu or t != plan.MMLU]


def mark_copies(entries: list[dict]) -> None:
    """A merge with the same weights as an earlier one (identical.py) gets `same_as` and
    `probe_difference` in its entry; it is not evaluated again."""
    adapters = [(e["name"], Path(e["path"])) for e in entries
                if e["kind"] == "merge" and e.get("error") is None and e.get("model") == "adapter"]
    for name, (other, diff) in identical.find_copies(adapters).items():
        entry = next(e for e in entries if e["name"] == name)
        entry.update(same_as=other, probe_difference=diff)


def to_evaluate(entries: list[dict]) -> list[dict]:
    return [e for e in entries if e["kind"] != "base" and e.get("error") is None and not e.get("same_as")]


def evaluate_entries(entries: list[dict], config: DemoConfig, gate_config, has_mmlu: bool, progress: Progress, helper=None,
                     split: str = "eval"):
    """Evaluate the base and every entry that produced an output (one call: cached results are
    reused; `helper`: the one started early by `run_demo`, already fed part of them). A copy of an
    earlier merge gets that one's scores."""
    from ..evalsuite.runner import evaluate

    mark_copies(entries)
    cands = [_candidate(e, config.base) for e in to_evaluate(entries)]
    stage = "eval" if split == "eval" else "sweep"
    evaluated = evaluate(cands, tasks=eval_tasks(gate_config, has_mmlu), gates=gate_config, settings=eval_settings(config, split),
                         progress=lambda d, n, label: progress(stage, d, n, f"{split}: {label}"), helper=helper)
    for e in entries:
        if e.get("same_as") in evaluated.scores:
            evaluated.scores[e["name"]] = evaluated.scores[e["same_as"]]
    return evaluated


def write_winner(row: dict, config: DemoConfig, out: Path, progress: Progress) -> dict:
    """out/adapter (the PEFT adapter; none for a full-model merge) and out/nf4 (the NF4 model)."""
    from .. import load_adapter, merge_to_model
    from ..quantize import quantize_model

    out.mkdir(parents=True)
    info = {"name": row["name"], "adapter": None, "nf4": None, "notes": []}
    source = Path(row["path"])
    progress("winner", 0, 1, row["name"])
    if row.get("model") == "full":
        info["notes"].append("a full-model merge (mergekit) has no adapter form")
        quantize_model(source, out / "nf4", "nf4", source=row["name"])
    else:
        shutil.copytree(source, out / "adapter")
        info["adapter"] = "adapter"
        # One adapter through the sequential method is the adapter itself, DoRA included.
        merge_to_model([load_adapter(source)], out / "nf4", "sequential", [1.0], base=config.base, requantize="nf4")
    info["nf4"] = "nf4"
    progress("winner", 1, 1, "done")
    return info


class EarlyEvaluation:
    """The evaluation helper process, started before the merges (see evalsuite/parallel.py): it
    evaluates the base, the single-task adapters and each merge as soon as it is written, while this
    process, on the threads the helper leaves, goes on with the baselines (sequential training,
    mergekit, PEFT).
    On 2 cores the baselines' training and model writing leave the second core partly idle, and
    the evaluation that followed them ran in two processes anyway. No helper (one core, a GPU,
    the results cache off): nothing changes."""

    def __init__(self, config: DemoConfig, gate_config, has_mmlu: bool):
        self.config, self.gate_config, self.has_mmlu = config, gate_config, has_mmlu
        self.helper = None
        self._threads = contextlib.ExitStack()  # this process's thread count while the helper runs

    def __enter__(self) -> "EarlyEvaluation":
        from .. import cputhreads
        from ..evalsuite.runner import start_helper

        settings = eval_settings(self.config)
        self.helper = start_helper(eval_tasks(self.gate_config, self.has_mmlu), self.gate_config, settings)
        if self.helper is not None:  # the helper has its threads; this process the rest
            self._threads.enter_context(cputhreads.using(max(1, cputhreads.machine_threads() - self.helper.threads)))
        return self

    def feed(self, entries: list[dict]) -> None:
        """Queue the base and every entry with an output that is not a copy of an earlier merge."""
        from ..evalsuite import candidates as cand_mod

        if self.helper is None:
            return
        mark_copies(entries)
        self.helper.submit(cand_mod.base_candidate(self.config.base))
        for entry in to_evaluate(entries):
            self.helper.submit(_candidate(entry, self.config.base))

    def take(self):
        """The helper, handed to `evaluate`, which ends it."""
        helper, self.helper = self.helper, None
        return helper

    def __exit__(self, *exc) -> None:
        if self.helper is not None:  # never handed over: an error on the way
            self.helper.close()
        self._threads.close()


# ---------------------------------------------------------------- the run

def run_demo(config: DemoConfig, progress: Progress | None = None) -> DemoResult:
    """Run the whole demo into config.output (see the module docstring)."""
    from ..fileio import atomic_dir, check_output

    config = config.checked()
    progress = progress or _noop
    output = check_output(config.output, config.force)
    if config.mmlu_data is None:
        config.mmlu_data = plan.default_mmlu_data()
    has_mmlu = config.mmlu_data is not None
    started, timings, notes, extra = time.perf_counter(), {}, [], {}
    if not has_mmlu:
        notes.append("MMLU skipped: no data (pass --mmlu-data or set ADAPTERMERGE_MMLU_DATA)")
    with atomic_dir(output, force=config.force) as tmp:
        t = time.perf_counter()
        progress("base", 0, 1, "resolving")
        base_dir = base_mod.resolve_base(config.base)
        progress("base", 1, 1, str(base_dir.name))
        timings["base"] = round(time.perf_counter() - t, 2)

        t = time.perf_counter()
        singles = train_singles(config, progress)
        timings["train"] = round(time.perf_counter() - t, 2)

        t = time.perf_counter()
        (tmp / "merges").mkdir()
        work = tmp / ".work"
        entries = [{"name": "base", "kind": "base", "approach": None, "path": None, "error": None}]
        entries += [{"name": task, "kind": "adapter", "approach": None, "path": info["path"], "error": None,
                     "reused": info["reused"], "steps": info["steps"]} for task, info in singles.items()]
        gate_config = plan.gate_config(config, tmp / "eval-data")
        eval_names = {task: plan.eval_task_name(task, config) for task in TASKS}
        with EarlyEvaluation(config, gate_config, has_mmlu) as early:
            early.feed(entries)
            approaches = plan.approaches(config)
            for i, approach in enumerate(approaches):
                progress("merge", i, len(approaches), approach.name)
                entries.append(run_approach(approach, singles, config, tmp / "merges", work, progress))
                early.feed(entries)
            progress("merge", len(approaches), len(approaches), "done")
            timings["merge"] = round(time.perf_counter() - t, 2)

            t = time.perf_counter()
            evaluated = evaluate_entries(entries, config, gate_config, has_mmlu, progress, helper=early.take())
        extra["evaluated_by_helper"] = [c["name"] for c in evaluated.candidates if c.get("evaluated_by")]
        rows = results.build_rows(entries, evaluated.scores, gate_config, eval_names, has_mmlu)
        timings["eval"] = round(time.perf_counter() - t, 2)

        best = results.best_merge(rows)
        if config.sweep and not (best and best["passed"]):
            t = time.perf_counter()
            search = _search_weights(singles, config, progress, notes) if config.weight_search else None
            outcome = _sweep(best, rows, entries, singles, config, has_mmlu, tmp, work, progress, search)
            extra["sweep"] = devsweep.summary(outcome)
            if outcome.chosen is not None:
                if outcome.chosen.get("sweep"):  # its first evaluation on the eval split
                    entries.append(outcome.chosen)
                    evaluated = evaluate_entries(entries, config, gate_config, has_mmlu, progress)
                    rows = results.build_rows(entries, evaluated.scores, gate_config, eval_names, has_mmlu)
                best = next(r for r in rows if r["name"] == outcome.chosen["name"])
            note = devsweep.selection_note(extra["sweep"], best["name"] if best else None)
            if note:
                notes.append(note)
            timings["sweep"] = round(time.perf_counter() - t, 2)
            extra["weight_search"] = search.as_dict() if search else None

        winner = None
        if best is not None:
            t = time.perf_counter()
            try:
                winner = write_winner(best, config, tmp / "winner", progress)
            except Exception as exc:  # noqa: BLE001 - the table is still worth writing
                log.warning("writing the winner failed: %s", exc, exc_info=log.isEnabledFor(logging.DEBUG))
                notes.append(f"writing the winner {best['name']} failed: {type(exc).__name__}: {exc}")
            timings["winner"] = round(time.perf_counter() - t, 2)
        else:
            notes.append("no merge produced a usable result: no winner written")
        shutil.rmtree(work, ignore_errors=True)
        timings["total"] = round(time.perf_counter() - started, 2)

        data = report.to_json(rows, winner, config=config, timings=timings, notes=notes + _eval_notes(evaluated.notes),
                              eval_names=eval_names, output=output, tmp=tmp, machine=machine())
        data.update(extra)
        report.write(data, tmp)
    return DemoResult(output, data["candidates"], winner["name"] if winner else None, data, best["name"] if best else None)


def _best_method(rows: list[dict]) -> dict | None:
    """The best merge of a registered method: the one the sweep can re-run with new weights and settings."""
    return results.best_merge([r for r in rows if (r.get("approach") or {}).get("kind") == "method"])


def _sweep(best: dict | None, rows: list[dict], entries: list[dict], singles, config, has_mmlu, tmp, work, progress, search):
    """devsweep.run_sweep from the best merge and the best of a registered method on the eval split
    (none when no merge gave a usable result: then only the sweep's fallback points)."""
    names = {r["name"] for r in (best, _best_method(rows)) if r is not None}
    # A copy of an earlier merge (same_as) starts as that merge: the copy is never evaluated itself.
    names = {next((e.get("same_as") or e["name"] for e in entries if e["name"] == n), n) for n in names}
    starts = [e for e in entries if e["name"] in names]

    def merge_point(approach) -> dict:
        progress("sweep", 0, 0, f"merging {approach.name}")  # total 0: a bar without a count
        return {**run_approach(approach, singles, config, tmp / "merges", work, progress), "sweep": True}

    def evaluate_on(scored, gate_config, split):
        return evaluate_entries(scored, config, gate_config, has_mmlu, progress, split=split).scores

    return devsweep.run_sweep(starts, entries, config, has_mmlu, tmp / "eval-data", merge_point, evaluate_on,
                              searched=search.best.weights if search else None)


def _search_weights(singles: dict[str, dict], config: DemoConfig, progress: Progress, notes: list[str]):
    """The proxy weight search over the three adapters, or None (with a note) when it fails."""
    adapters = {task: Path(singles[task]["path"]) for task in TASKS}
    try:
        return weightsearch.search_weights(config.base, adapters, seed=config.seed,
                                           per_task=weightsearch.QUICK_PER_TASK if config.quick else weightsearch.PER_TASK,
                                           rounds=1 if config.quick else weightsearch.ROUNDS,
                                           progress=lambda n, label: progress("search", n, 0, label))
    except Exception as exc:  # noqa: BLE001 - the rest of the sweep still runs
        log.warning("weight search failed: %s", exc, exc_info=log.isEnabledFor(logging.DEBUG))
        notes.append(f"weight search failed: {type(exc).__name__}: {exc}")
        return None


def _eval_notes(notes: list[str]) -> list[str]:
    # The suite's own retention note concerns its gates; the demo computes retention itself.
    return [n for n in notes if not n.startswith("retention:")]


def machine() -> dict:
    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average": [round(x, 2) for x in load] if load else None}
