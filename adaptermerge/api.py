"""The public front door: every operation a user calls, typed and documented in one place.

Each runs one implementation, a layer down: engine.merge and engine.merge_to_model (the
pipeline merge -> onto/requantize -> write, which the recipe pipeline uses too), quantize, the
evaluation runner, the trainer, the recipe pipeline. Added here: paths wherever adapters are
expected, an `out` for `merge`, and MergeJob dispatch (CLI flags, YAML files).

The modules behind `quantize` and `train` are named `quantization` and `training`, so that the
package's attributes of those names are these functions and nothing hides a module.

    from adaptermerge import load_adapter, merge, merge_to_model
    merged = merge(["a/", "b/"], "ties", [1, 1], density=0.2, out="merged/")
    merge_to_model([load_adapter("a/")], "full/", requantize="nf4")

An output is never an input: not an input adapter's folder or file, not the base model's folder,
and not inside or above one of them, even with force (fileio.check_destination). The rule is
enforced where each output folder is written (fileio.atomic_dir, given the inputs), so
`merge(...).save(out, force=True)`, `merge_to_model`, `quantize` and the CLI all refuse alike.

Nothing here changes process-wide state unless asked: `tune_allocator=True` lets glibc keep
module-sized blocks on its heap for the rest of the process (the CLI turns it on).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Sequence, Union

from . import calibration, diagnostics, validate
from .adapter import Adapter, LoraFactors, load_adapter
from .chat.data import TASKS
from .engine import MergePlan, input_paths
from .engine import merge as _merge
from .engine import merge_to_model as _merge_to_model
from .errors import AdapterMergeError
from .evalsuite import spread
from .evalsuite.candidates import Candidate
from .evalsuite.gates import GateConfig, load_gates
from .evalsuite.runner import EvalReport
from .evalsuite.runner import evaluate as _evaluate
from .evalsuite.settings import EvalSettings
from .fileio import atomic_dir, check_destination, read_json_object, write_text_atomic
from .mergeconfig import MergeJob
from .methods import METHODS
from .model_output import ModelOutput
from .progress import Progress, StageProgress
from .quantization import quantize_model
from .recipe import Recipe, RecipeResult
from .recipe import run_recipe as _run_recipe
from .training import heal as heal_mod
from .training.trainer import ProgressFn as TrainProgress
from .training.trainer import TrainConfig
from .training.trainer import train as _train

__all__ = [
    "METHODS",
    "Adapter",
    "AdapterMergeError",
    "EvalReport",
    "EvalSettings",
    "LoraFactors",
    "MergeJob",
    "MergePlan",
    "ModelOutput",
    "Recipe",
    "RecipeResult",
    "TrainConfig",
    "diagnose",
    "evaluate",
    "load_adapter",
    "merge",
    "merge_to_model",
    "quantize",
    "run_merge_job",
    "run_recipe",
    "train",
]

AdapterLike = Union[Adapter, str, os.PathLike]  # an Adapter, or a PEFT folder / bare .safetensors file to load


def _adapters(items: Sequence[AdapterLike], alphas: Sequence[float | None] | None = None) -> list[Adapter]:
    """Adapters as given, paths loaded (`alphas`: each path's --alpha). Loaded inputs that share a
    name (a/adapter_model.safetensors, b/adapter_model.safetensors) get #N suffixes, so that the
    provenance and the errors tell them apart."""
    if isinstance(items, (str, os.PathLike, Adapter)):
        raise AdapterMergeError(f"adapters must be a list of adapters or paths, got {items!r}")
    loaded = []
    for i, item in enumerate(items):
        if isinstance(item, Adapter):
            loaded.append((item, False))
        elif isinstance(item, (str, os.PathLike)):
            loaded.append((load_adapter(item, alpha=alphas[i] if alphas else None), True))
        else:
            raise AdapterMergeError(f"adapters[{i}]: expected an Adapter or a path, got {type(item).__name__}")
    names = [a.name for a, _ in loaded]
    for i, (a, ours) in enumerate(loaded):
        if ours and names.count(a.name) > 1:
            a.name = f"{a.name}#{i + 1}"
    return [a for a, _ in loaded]


def merge(
    adapters: Sequence[AdapterLike],
    method: str = "linear",
    weights: Sequence[float] | None = None,
    *,
    out: str | os.PathLike | None = None,
    force: bool = False,
    base: str | None = None,
    rank: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    check_base: bool = True,
    progress: Progress | None = None,
    tune_allocator: bool = False,
    dtype: str | None = None,
    heal: int = 0,
    heal_prompts: dict[str, str | os.PathLike] | None = None,
    heal_options: dict | None = None,
    heal_progress: TrainProgress | None = None,
    **params,
) -> Adapter:
    """Merge adapters into one LoRA adapter; with `out`, also write it there as a PEFT folder.

    adapters: Adapter objects or paths (PEFT folders, bare .safetensors files with alpha in their
    metadata). method: a name in METHODS; `params` are its parameters (density=0.2 for ties...).
    weights: one per adapter (default 1 each). base: the base model (HF id or folder) for methods
    that read it (default: the adapters' recorded base). rank: the output rank (default: exact for
    the linear family, the sum of input ranks otherwise). seed: for random methods (DARE).
    dtype: the factors' dtype, float16, bfloat16 or float32 (default: the first input's half
    precision, else float32). With `out`, README.md (a model card) is written beside the weights.
    out/force: checked before the merge runs; the returned adapter's `save` checks the same rule.
    tune_allocator: see the module docstring. Raises AdapterMergeError on any bad input.

    heal: optimizer steps of the post-merge distillation (adaptermerge.training.heal; 0: none), a
    merge that uses training compute: each adapter's replies on its own training prompts (from its
    training.json, or `heal_prompts` {adapter name or task: JSONL file}) and the base's on anchor
    prompts are distilled into the merged adapter. heal_options: HealConfig fields (lr, batch_size,
    max_length, prompts_per_task, anchor_prompts, qlora, threads); heal_progress(step, total, loss).
    """
    items = _adapters(adapters)
    heal_config = _heal_config(heal, heal_prompts, heal_options, seed)
    prompts = heal_mod.resolve_prompts(items, heal_config) if heal_config.steps else None  # before the merge, too
    if out is not None:
        check_destination(out, force, input_paths(items, (base,)))  # before the merge's minutes, not after
    merged = _merge(items, method, weights, base=base, rank=rank, seed=seed, device=device, progress=progress,
                    check_base=check_base, tune_allocator=tune_allocator, dtype=dtype, **params)
    if heal_config.steps:
        merged = heal_mod.heal(merged, items, heal_config, base=base, prompts=prompts, progress=heal_progress)
    if out is not None:
        merged.save(out, force=force)
    return merged


def _heal_config(steps, prompts, options, seed: int) -> "heal_mod.HealConfig":
    """The heal's settings, every value checked (the CLI's --heal and --heal-prompts refuse alike)."""
    steps = heal_mod.check_steps(steps)
    if prompts is not None and not isinstance(prompts, dict):
        raise AdapterMergeError(f"heal_prompts: expected a mapping of adapter names to JSONL files, got {prompts!r}")
    if prompts and not steps:
        raise AdapterMergeError("--heal-prompts applies with --heal STEPS (1 or more)")
    fields = {f.name for f in dataclasses.fields(heal_mod.HealConfig)} - {"steps", "prompts", "seed"}
    unknown = sorted(set(options or {}) - fields)
    if unknown:
        raise AdapterMergeError(f"heal_options: unknown option {', '.join(unknown)}; expected among {', '.join(sorted(fields))}")
    config = heal_mod.HealConfig(steps=steps, prompts={str(k): Path(v) for k, v in (prompts or {}).items()}, seed=seed,
                                 **(options or {}))
    for name in ("prompts_per_task", "batch_size", "max_length"):
        validate.integer(getattr(config, name), f"heal_options.{name}", minimum=1)
    validate.integer(config.anchor_prompts, "heal_options.anchor_prompts", minimum=0)
    validate.number(config.lr, "heal_options.lr", above=0)
    validate.boolean(config.qlora, "heal_options.qlora")
    return config


def merge_to_model(
    adapters: Sequence[AdapterLike],
    out: str | os.PathLike,
    method: str = "linear",
    weights: Sequence[float] | None = None,
    *,
    base: str | None = None,
    seed: int = 0,
    device: str = "cpu",
    shard_size: str | int = "2GB",
    force: bool = False,
    check_base: bool = True,
    merge_onto: str | None = None,
    requantize: str | None = None,
    compute_dtype: str = "float32",
    dtype: str | None = None,
    progress: Progress | None = None,
    quantize_progress: StageProgress | None = None,
    **params,
) -> Path:
    """Merge adapters straight into the base model's weights and write the full model to `out`.

    The merged update is exact here (no low-rank truncation): W0 + delta, or the DoRA weight.
    merge_onto: "original" (W0), "dequantized" (dequant(NF4(W0)), what a QLoRA adapter was trained
    against) or None to choose from the adapters' training.json and requantize (adaptermerge.qlora).
    requantize: "nf4" or "int8" writes the model quantized with bitsandbytes, with the quantization
    report in adaptermerge.json; compute_dtype is its matmul dtype. dtype (float16, bfloat16,
    float32) is the unquantized model's weight dtype (default: the base's). Every option and the output
    folder are checked before any weight is read. Returns `out`.
    """
    return _merge_to_model(_adapters(adapters), out, method, weights, base=base, seed=seed, device=device, shard_size=shard_size,
                           force=force, check_base=check_base, merge_onto=merge_onto, requantize=requantize,
                           compute_dtype=compute_dtype, dtype=dtype, progress=progress, quantize_progress=quantize_progress,
                           **params)


def run_merge_job(
    job: MergeJob,
    *,
    progress: Progress | None = None,
    quantize_progress: StageProgress | None = None,
    tune_allocator: bool = False,
) -> dict:
    """Run a MergeJob (from CLI flags or a YAML file: mergeconfig.load_merge_config) through
    `merge` or `merge_to_model`. Returns the provenance written to the output's adaptermerge.json."""
    adapters = _adapters(job.inputs, [job.alpha_for(i) for i in range(len(job.inputs))])
    common = dict(base=job.base, seed=job.seed, device=job.device, check_base=job.check_base, progress=progress, **job.params)
    if job.output == "model":
        out = merge_to_model(adapters, job.out, job.method, job.weights, shard_size=job.shard_size, force=job.force,
                             merge_onto=job.merge_onto, requantize=job.requantize, compute_dtype=job.compute_dtype,
                             dtype=job.dtype, quantize_progress=quantize_progress, **common)
        return read_json_object(out / "adaptermerge.json")
    heal_progress = None if progress is None else (lambda step, total, loss: progress(step, total, f"heal: step {step}/{total} loss {loss:.3f}"))
    merged = merge(adapters, job.method, job.weights, out=job.out, force=job.force, rank=job.rank, tune_allocator=tune_allocator,
                   dtype=job.dtype, heal=job.heal, heal_prompts=job.heal_prompts or None, heal_progress=heal_progress, **common)
    return merged.metadata


def quantize(
    model_dir: str | os.PathLike,
    out: str | os.PathLike,
    scheme: str = "nf4",
    *,
    compute_dtype: str = "float32",
    device: str = "cpu",
    force: bool = False,
    prompts: Sequence[str] | None = None,
    progress: StageProgress | None = None,
) -> dict:
    """Quantize a full-precision model folder (nf4 or int8, bitsandbytes) into `out`, a folder that
    reloads quantized with from_pretrained; returns the report (per-layer error, next-token KL on
    fixed prompts, sizes) also written into out/adaptermerge.json. `out` is never `model_dir`."""
    return quantize_model(model_dir, out, scheme, compute_dtype=compute_dtype, device=device, force=force,
                          prompts=prompts, progress=progress)


def evaluate(
    candidates: Sequence[str | Candidate],
    tasks: Sequence[str] | None = None,
    gates: GateConfig | str | os.PathLike | None = None,
    settings: EvalSettings | None = None,
    *,
    progress: Progress | None = None,
) -> EvalReport:
    """Evaluate the base model and `candidates` (adapter folders or model folders) on `tasks`
    (default: the gates' tasks, else the built-in tasks and MMLU), check `gates` (a GateConfig or
    a gates YAML file), and return the report. Results are cached by model content and settings.
    """
    if isinstance(gates, (str, os.PathLike)):
        gates = load_gates(gates)
    return _evaluate(list(candidates), list(tasks) if tasks is not None else None, gates, settings, progress)


def train(config: TrainConfig | None = None, *, progress: TrainProgress | None = None, **options) -> Path:
    """Train a (Q)LoRA adapter and write it to its output folder; returns that folder.

    Pass a TrainConfig, or its fields as keywords (task="domain", output="adapters/domain", ...).
    progress(step, total_steps, loss) is called after every optimizer step.
    """
    if config is None:
        try:
            config = TrainConfig(**options)
        except TypeError as exc:
            raise AdapterMergeError(f"train: {exc}") from None
    elif options:
        raise AdapterMergeError(f"train: pass a TrainConfig or keyword options, not both (got {', '.join(sorted(options))})")
    return _train(config, progress)


def run_recipe(recipe: Recipe | str | os.PathLike, *, output: str | os.PathLike, force: bool = False, **options) -> RecipeResult:
    """Run a recipe (a Recipe, or its YAML file such as examples/manga-assist.yaml): train or take
    its adapters, merge them with every candidate it lists, evaluate each against its gates, choose
    the winner and write it with the report into `output`. `options` are the pipeline's run
    options (quick=True, mmlu_data=..., threads=...: see adaptermerge.recipe.run_recipe)."""
    if spread.world().size > 1:
        raise AdapterMergeError("a recipe runs in one process: start `adaptermerge run` without accelerate launch or torchrun "
                                "(train and eval spread over processes; merging streams one module at a time and needs one)")
    return _run_recipe(recipe, output=output, force=force, **options)


TRAINING_DATA = "train"  # a --calib entry: the adapter's own training data (its training.json)


def _calibrations(items: list[Adapter], calib, size: int, seed: int) -> list[calibration.Calibration]:
    """Each adapter's task inputs: per adapter a built-in task name, a JSONL file of chat records,
    or "train" (its training data); one "train" stands for all."""
    entries = [e.strip() for e in calib.split(",")] if isinstance(calib, str) else list(calib)
    if entries == [TRAINING_DATA]:
        entries = entries * len(items)
    if len(entries) != len(items):
        raise AdapterMergeError(f"calib: got {len(entries)} entries for {len(items)} adapters; give one per adapter "
                                f"(a built-in task {', '.join(TASKS)}, a JSONL file, or {TRAINING_DATA!r} for its training data)")
    out = []
    for adapter, entry in zip(items, entries):
        if not isinstance(entry, (str, os.PathLike)) or not str(entry):
            raise AdapterMergeError(f"calib: expected a task name, a JSONL file or {TRAINING_DATA!r} for adapter {adapter.name}, got {entry!r}")
        entry = str(entry)
        if entry == TRAINING_DATA:
            out.append(calibration.from_training(adapter, size, seed))
        elif entry in TASKS:
            out.append(calibration.from_task(entry, size, seed))
        else:
            out.append(calibration.from_file(entry, size, seed))
    return out


def diagnose(
    adapters: Sequence[AdapterLike],
    *,
    calib: Sequence[str] | str | None = None,
    merged: Sequence[AdapterLike] = (),
    weights: Sequence[float] | None = None,
    density: float = diagnostics.DENSITY,
    calib_size: int = 64,
    calib_max_length: int = 512,
    seed: int = 0,
    base: str | None = None,
    check_base: bool = True,
    out: str | os.PathLike | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> dict:
    """Interference diagnostics of two or more adapters, before any merge is evaluated (the
    statistics and the predicted-interference formula: adaptermerge.diagnostics).

    calib: per adapter, its task's inputs: a built-in task (domain, structured, safety), a JSONL
    file of chat records, or "train" (the data its training.json names; "train" alone: for all).
    With it, each task's input Grams are collected (the base with that adapter folded in reads
    `calib_size` records, `seed` draws them; cached like regmean's) and the report adds
    cross-activation and output-space predictions; without it, the statistics are data-free.
    merged: merged adapters (PEFT folders) whose predicted interference per task is reported too.
    weights: the merge's weights, for the sum and average predictions (default 1 each).
    density: the fraction of each delta's entries counted as significant for sign conflicts.
    out: a folder to write diagnostics.json and heatmap.png into (refused if it exists, unless force).
    Returns the report (JSON-able). Raises AdapterMergeError on any bad input.
    """
    items = _adapters(adapters)
    if len(items) < 2:
        raise AdapterMergeError(f"adapters: diagnose compares adapters, give at least two (got {len(items)})")
    scored = _adapters(merged)
    for a in (*items, *scored):
        if a.is_dora:
            raise AdapterMergeError(f"{a.label()} is DoRA: diagnose reads plain LoRA deltas (scale * B @ A)")
    density = validate.number(density, "density", above=0, maximum=1)
    calib_size = validate.integer(calib_size, "calib_size", minimum=1)
    calib_max_length = validate.integer(calib_max_length, "calib_max_length", minimum=1)
    # shapes, bases, weights checked as for a merge; with calibration the base's weights too
    plan = MergePlan(items, "linear", weights, base=base, seed=seed, check_base=check_base, need_base=calib is not None)
    for a in scored:
        for module, spec in a.specs.items():
            if plan.shapes.get(module) != spec.shape:
                expected = "no such module in the adapters" if module not in plan.shapes else f"{plan.shapes[module][0]}x{plan.shapes[module][1]}"
                raise AdapterMergeError(f"merged: {a.label()} module {module} is {spec.shape[0]}x{spec.shape[1]}; expected {expected}")
    inputs = input_paths([*items, *scored], (base, plan.base_weights.folder if plan.base_weights is not None else None))
    if out is not None:
        check_destination(out, force, inputs)  # before the Grams' minutes
    grams = base_weight = None
    if calib is not None:
        calibs = _calibrations(items, calib, calib_size, plan.seed)
        store = calibration.gram_store(items, calibs, plan.base_model, plan.modules, max_length=calib_max_length, progress=progress)
        grams = store.grams
        base_weight = plan.base_weights.weight
    report = diagnostics.diagnose_adapters(items, plan.modules, plan.weights, merged=scored, grams=grams, base_weight=base_weight,
                                           density=density, progress=progress)
    report["calibration"] = store.describe() if calib is not None else None
    if out is not None:
        with atomic_dir(out, force=force, inputs=inputs) as tmp:
            write_text_atomic(tmp / "diagnostics.json", json.dumps(report, indent=1, allow_nan=False) + "\n")
            diagnostics.heatmap(tmp / "heatmap.png", report)
    return report
