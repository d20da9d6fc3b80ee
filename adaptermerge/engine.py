"""The streaming merge: validate at the edges, then one module at a time.

    adapters (lazy) -> plan (checked: method, params, weights, shapes, base) ->
    per module: read factors -> method.merge_module -> low-rank factors or base + delta -> write

Only one module's dense tensors exist at any moment, so peak memory does not grow with the
number of modules. Outputs: `merge` gives an adapter (in memory; `save` writes it), and
`merge_to_model` writes the full model through model_output. The public front door, which also
takes paths, is adaptermerge.api.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Iterable, Sequence

import torch

from . import base as base_mod
from . import validate
from .adapter import F32_MAX, Adapter, LoraFactors, canonical_base, delta_problem, max_abs, shared_peft_fields
from .basemodel import BaseWeights
from .errors import AdapterMergeError
from .fileio import check_destination
from .lowrank import LowRankStats, factor_sum, truncate
from .methods import METHODS, MergeContext, ModuleResult
from .methods.math import dora_weight, row_norm
from .model_output import OUTPUT_DTYPES, ModelOutput, check_dtype, write_full_model
from .progress import Progress, StageProgress
from .provenance import provenance
from .workers import heap_reuse, ordered_map, worker_count

log = logging.getLogger(__name__)
# Modules with up to this many stacked delta entries (all adapters) run several at a time (every
# SmolLM2 module: 4.3 s against 4.7 s one at a time); 1024 x 4096 ones in pairs were slower (an
# 8B-shaped merge took 91 s against 76 s).
PARALLEL_MAX_ENTRIES = 1 << 22


def input_paths(adapters: Iterable[Adapter], bases: Iterable[str | Path | None] = ()) -> tuple[Path, ...]:
    """What a merge reads from disk and its outputs may never overwrite: every adapter's inputs (its
    file or folder; for a merge result, what that merge read) and each base that is a local folder
    (a hub id or the embedded base has no folder a user would name)."""
    paths = [p for a in adapters for p in a.inputs]
    for name in (*bases, *(a.base_model for a in adapters)):
        if name is not None and Path(str(name)).expanduser().is_dir():
            paths.append(Path(str(name)).expanduser())
    return tuple(dict.fromkeys(paths))


def natural_key(name: str):
    """model.layers.10 sorts after model.layers.9."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def make_params(method, overrides: dict, *, where: str | None = None, strict: bool = False):
    """Build the method's Params from keyword overrides; unknown names are an error. `where` (a
    file and key, e.g. "merge.yaml: parameters") prefixes the messages; `strict` refuses numeric
    strings, which the Python API takes as numbers ("0.5")."""
    fields = {f.name: f for f in dataclasses.fields(method.Params)}
    prefix = f"{where}: " if where else ""
    clean = {}
    for key, value in overrides.items():
        if value is None:
            continue
        name = key if key in fields else f"{key}_" if isinstance(key, str) and f"{key}_" in fields else None
        if name is None:
            known = ", ".join(n.rstrip("_") for n in fields) or "none"
            raise AdapterMergeError(f"{prefix}method {method.name} has no parameter {validate.quote(key)} (its parameters: {known})")
        label = f"{where}.{name.rstrip('_')}" if where else f"method {method.name}: {name.rstrip('_')}"
        clean[name] = _typed(label, value, fields[name], strict)
    try:
        return method.Params(**clean)
    except (AdapterMergeError, TypeError) as exc:  # the method's own range checks
        raise AdapterMergeError(f"{prefix}method {method.name}: {exc}") from None


def _typed(label: str, value, field: dataclasses.Field, strict: bool):
    """`value` as the type of the parameter's default (finite, bounded), or a one-line error
    naming it: the Python API gets no help from a command-line parser, and a string "no" for a
    bool would be true."""
    default = field.default
    if isinstance(default, bool):
        return validate.boolean(value, label)
    if isinstance(default, (int, float)):
        if not strict and isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise AdapterMergeError(f"{label} must be a number, got {validate.quote(value)}") from None
        if isinstance(default, int):
            if not strict and isinstance(value, float) and value.is_integer():
                value = int(value)
            # counts and repeats: beyond 2**31 is a typo, and torch takes no larger sizes
            return validate.integer(value, label, minimum=-(2**31), maximum=2**31 - 1)
        return validate.number(value, label)
    if isinstance(default, str):
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        return validate.string(value, label, choices=field.metadata.get("choices"))
    return value


class MergePlan:
    """A checked merge, ready to run module by module."""

    def __init__(
        self,
        adapters: list[Adapter],
        method: str = "linear",
        weights: list[float] | None = None,
        *,
        base: str | None = None,
        need_base: bool = False,
        seed: int = 0,
        device: str = "cpu",
        check_base: bool = True,
        base_transform=None,
        progress: Progress | None = None,
        tune_allocator: bool = False,
        **params,
    ):
        """`tune_allocator`: let glibc serve module-sized blocks from its heap during the merge
        (workers.heap_reuse; about 15 % faster on small modules). It changes malloc settings for
        the rest of the process, so it is off unless asked for; the CLI turns it on."""
        if not adapters:
            raise AdapterMergeError("no adapters to merge")
        self.adapters = adapters
        self.method = METHODS.get(method)
        self.params = make_params(self.method, params)
        self.weights = self._weights(weights)
        self.seed = validate.seed(seed, "seed")
        self.device = torch.device(device if isinstance(device, torch.device) else validate.device(device, "device"))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise AdapterMergeError("device cuda (--device cuda): no CUDA device is available here")
        if not self.method.accepts_dora:
            for a in adapters:
                if a.is_dora:
                    raise AdapterMergeError(
                        f"adapter {a.name} is a DoRA adapter (lora_magnitude_vector): method {self.method.name} merges plain "
                        "LoRA deltas and would drop its magnitudes; use the dora or sequential method"
                    )
        self.tune_allocator = bool(tune_allocator)
        self.base_model = self._base_name(base, check_base)
        self.modules = self._modules()
        self.base_weights = None
        if need_base or self.method.needs_base(adapters):
            self.base_weights = BaseWeights(base_mod.resolve_base(self.base_model), transform=base_transform)
            self._check_base_shapes()
        # every output of this plan is checked against these (fileio.check_destination)
        folder = self.base_weights.folder if self.base_weights is not None else None
        self.sources = input_paths(adapters, (base, folder))
        self.dora_output = self.method.name == "dora" or any(a.is_dora for a in adapters)
        # a method's preparation (regmean's calibration Grams: minutes) reports to the same callback
        self.progress = progress
        prepare = getattr(self.method, "prepare", None)
        self.prepared = prepare(self) if prepare is not None else None

    # -- checks ----------------------------------------------------------------------------
    def _weights(self, weights):
        n = len(self.adapters)
        if weights is None:
            return [1.0] * n
        try:
            weights = [float(w) for w in weights]
        except (TypeError, ValueError):
            raise AdapterMergeError(f"weights must be a list of numbers, one per adapter, got {weights!r}") from None
        if len(weights) != n:
            raise AdapterMergeError(f"{len(weights)} weights given for {n} adapters: give one weight per adapter")
        if not all(torch.isfinite(torch.tensor(weights))):
            raise AdapterMergeError(f"weights must be finite numbers, got {weights}")
        return weights

    def _base_name(self, base, check_base):
        if base is not None and str(base).startswith(("/", "./", "../", "~")) and not Path(base).expanduser().exists():
            raise AdapterMergeError(f"base {base} (--base): no such folder (expected a local model folder or a Hugging Face id)")
        recorded = [(a.name, a.base_model) for a in self.adapters if a.base_model]
        if check_base:
            names = {canonical_base(b) for _, b in recorded}
            if len(names) > 1:
                listing = ", ".join(f"{n}: {b}" for n, b in recorded)
                raise AdapterMergeError(f"the adapters were trained on different base models ({listing}); pass --ignore-base-mismatch (check_base=False in Python) to merge anyway")
            if base is not None and names and canonical_base(base) not in names:
                raise AdapterMergeError(
                    f"base {base} (--base) differs from the adapters' base model {recorded[0][1]}; pass --ignore-base-mismatch (check_base=False) if it is the same model"
                )
        if base is not None:
            # a local folder is recorded absolute: a relative one means nothing beside the output
            local = Path(str(base)).expanduser()
            return str(local.resolve()) if not base_mod.is_embedded(base) and validate.probe(local) == "folder" else base
        return recorded[0][1] if recorded else None

    def _modules(self) -> list[str]:
        shapes: dict[str, tuple[str, tuple]] = {}
        for a in self.adapters:
            for m, spec in a.specs.items():
                if m in shapes and shapes[m][1] != spec.shape:
                    other, shape = shapes[m]
                    raise AdapterMergeError(
                        f"module {m}: adapter {a.name} adapts a {spec.shape[0]}x{spec.shape[1]} weight but adapter {other} a "
                        f"{shape[0]}x{shape[1]} one; the adapters do not fit the same base model"
                    )
                shapes.setdefault(m, (a.name, spec.shape))
        self.shapes = {m: s for m, (_, s) in shapes.items()}
        return sorted(shapes, key=natural_key)

    def _check_base_shapes(self):
        for m in self.modules:
            shape = self.base_weights.shape(m)
            if tuple(shape) != self.shapes[m]:
                raise AdapterMergeError(
                    f"module {m}: the adapters adapt a {self.shapes[m][0]}x{self.shapes[m][1]} weight but base model "
                    f"{self.base_weights.folder} has {tuple(shape)}"
                )

    # -- per module ------------------------------------------------------------------------
    def read_inputs(self, module: str) -> tuple[list[LoraFactors | None], torch.Tensor | None]:
        """One module's factors from every adapter (None where one lacks it) and its base weight
        when needed (float32). Reads happen on the calling thread."""
        # Checked for NaN/Inf in module_result, on the worker: reading is the one serial step.
        inputs = [a.factors(module, self.device, check=False) if module in a.specs else None for a in self.adapters]
        w0 = self.base_weights.weight(module, self.device).float() if self.base_weights is not None else None
        return inputs, w0

    def module_result(self, module: str, read=None) -> tuple[ModuleResult, torch.Tensor | None]:
        """The merged update of one module, and the base weight when it was needed (float32).
        `read`: what `read_inputs(module)` returned, when already read."""
        inputs, w0 = read if read is not None else self.read_inputs(module)
        # Each input's own delta must fit float32 (check_finite); what is merged from them is
        # checked below and again as output factors or weights, so nothing non-finite is written.
        for adapter, f in zip(self.adapters, inputs):
            if f is not None:
                adapter.check_finite(module, f)
        if w0 is not None and not math.isfinite(max_abs(w0)):
            raise AdapterMergeError(f"base model {self.base_weights.folder}: the weight of module {module} contains NaN or Inf values")
        ctx = MergeContext(module, self.seed, self.device, self.prepared)
        result = self.method.merge_module(inputs, self.weights, w0, self.params, ctx)
        terms = [t for pair in result.terms or () for t in pair]
        for label, t in (("delta", result.dense), ("magnitude", result.magnitude), *(("delta", t) for t in terms)):
            if t is not None and not max_abs(t) <= F32_MAX:  # NaN fails the comparison too
                raise self.overflow(module, f"the merged {label} is not finite (NaN or Inf past float32's range)")
        return result, w0

    def overflow(self, module: str, what: str) -> AdapterMergeError:
        """The error for a merged value that is not finite though each input's delta is: it names
        the module and the inputs that have it, with their weights."""
        inputs = [f"{a.label()} at weight {w:g}" for a, w in zip(self.adapters, self.weights) if module in a.specs]
        return AdapterMergeError(f"module {module}: {what}, merging {validate.listing(inputs, 240)} with {self.method.name}: "
                                 "use smaller weights or inputs")

    def input_rank(self, module: str) -> int:
        return sum(a.specs[module].rank for a in self.adapters if module in a.specs)

    def is_small(self, module: str) -> bool:
        """Small enough to run beside other modules (see adaptermerge.workers)."""
        out, inp = self.shapes[module]
        return out * inp * len(self.adapters) <= PARALLEL_MAX_ENTRIES

    def to_factors(self, module: str, rank: int | None, read=None) -> tuple[LoraFactors, dict]:
        """One module's output factors, and what to record about it (low-rank error, and what
        the method reported, e.g. the density a sampled cut kept)."""
        result, w0 = self.module_result(module, read)
        try:
            if result.concat:
                B = torch.cat([b for b, _ in result.terms], 1)
                A = torch.cat([a for _, a in result.terms], 0)
                stats = LowRankStats(A.shape[0], 0.0, 1.0, True)
            elif result.terms is not None:
                B, A, stats = factor_sum([b for b, _ in result.terms], [a for _, a in result.terms], rank)
            else:
                B, A, stats = truncate(result.dense, rank or self.input_rank(module), sketch=result.sketch, seed=self.seed)
        except torch.linalg.LinAlgError:  # an SVD of finite values near float32's limit can fail
            raise self.overflow(module, "the merged delta cannot be factored: its values come too close to float32's limit") from None
        magnitude = result.magnitude
        if magnitude is None and self.dora_output:
            # A DoRA adapter needs a magnitude on every module; ||W0 + BA|| makes this one plain LoRA.
            magnitude = row_norm(w0 + B @ A)
        r = A.shape[0]
        factors = LoraFactors(A.cpu(), B.cpu(), float(r), 1.0, None if magnitude is None else magnitude.float().cpu())
        self.check_output(module, factors)
        return factors, {**stats.as_dict(), **result.info}

    def check_output(self, module: str, factors: LoraFactors) -> None:
        """The output factors, in their own dtype, and their product must be finite: a sum of
        finite deltas can still overflow."""
        limit = min(torch.finfo(factors.A.dtype).max, F32_MAX)
        problem = delta_problem(factors.A, factors.B, factors.scale, factors.magnitude, limit=limit)
        if problem is not None:
            raise self.overflow(module, f"the merged factors: {problem.removeprefix('has ')}")

    # -- outputs ---------------------------------------------------------------------------
    def to_adapter(self, rank: int | None = None, progress: Progress | None = None, name: str = "merged",
                   dtype: str | None = None) -> Adapter:
        """The merged adapter, in memory. `dtype` (float16, bfloat16, float32) sets the factors'
        dtype; None keeps the inputs' half precision when the first input has it, else float32."""
        target = OUTPUT_DTYPES[check_dtype(dtype)] if dtype is not None else None
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
            raise AdapterMergeError(f"rank (--rank) must be a positive integer, got {rank!r}")
        if rank is not None and self.method.name == "cat":
            raise AdapterMergeError("cat keeps every factor (rank = sum of ranks); use linear for an exact merge at a chosen --rank")
        start = time.time()
        factors, stats = {}, {}
        allocator = heap_reuse() if self.tune_allocator else contextlib.nullcontext()
        done = ordered_map(
            self.modules, self.read_inputs, lambda m, read: self.to_factors(m, rank, read), self.is_small, worker_count(self.device)
        )
        # closing: a progress callback that raises still ends the workers and restores the threads now
        with allocator, contextlib.closing(done):
            for i, (module, (factors[module], stats[module])) in enumerate(done):
                if progress:
                    progress(i + 1, len(self.modules), module)
        if target is None:
            first = self.adapters[0].dtype
            target = first if first in (torch.float16, torch.bfloat16) else torch.float32
        meta = provenance(self, output="adapter", rank=rank, modules=stats, wall_s=time.time() - start,
                          dtype=str(target).removeprefix("torch."))
        if target != torch.float32:
            factors = {m: _cast(f, target) for m, f in factors.items()}
            for module, f in factors.items():  # float16 overflows long before float32
                self.check_output(module, f)
        base_model = base_mod.base_id(self.base_model) if self.base_model else None
        return Adapter.from_factors(name, factors, base_model=base_model, config=shared_peft_fields(self.adapters), metadata=meta,
                                    inputs=self.sources)

    def merged_weight(self, module: str) -> torch.Tensor:
        """The full merged weight of one module (float32): W0 + delta, or the DoRA weight."""
        result, w0 = self.module_result(module)
        delta = result.delta()
        weight = dora_weight(w0, delta, result.magnitude) if result.magnitude is not None else w0 + delta
        if not max_abs(weight) <= F32_MAX:  # finite terms can still sum past float32
            raise self.overflow(module, "the merged weight is not finite (NaN or Inf past float32's range)")
        return weight


def _cast(f: LoraFactors, dtype) -> LoraFactors:
    return LoraFactors(f.A.to(dtype), f.B.to(dtype), f.alpha, f.scale, f.magnitude)


def merge(
    adapters: Sequence[Adapter],
    method: str = "linear",
    weights: Sequence[float] | None = None,
    *,
    base: str | None = None,
    rank: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: Progress | None = None,
    check_base: bool = True,
    tune_allocator: bool = False,
    dtype: str | None = None,
    **params,
) -> Adapter:
    """Merge adapters into one adapter, in memory (`.save(path)` writes a PEFT folder).

    `params` are the method's parameters (e.g. density=0.2 for ties; see `adaptermerge methods`).
    `rank` caps the output rank (default: exact for linear families, sum of input ranks for
    sparse ones). `dtype` (float16, bfloat16, float32) sets the factors' dtype (default: the first
    input's half precision, else float32). The result's `metadata` is the provenance written as adaptermerge.json, and its
    `inputs` the adapters' files and the base folder, which its `save` refuses to overwrite.
    """
    plan = MergePlan(list(adapters), method, weights, base=base, seed=seed, device=device, check_base=check_base, progress=progress,
                     tune_allocator=tune_allocator, **params)
    return plan.to_adapter(rank, progress, dtype=dtype)


def merge_to_model(
    adapters: Sequence[Adapter],
    out: str | Path,
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
    against) or None to choose from the adapters' training.json and requantize (see adaptermerge.qlora).
    requantize: "nf4" or "int8" writes the merged model quantized with bitsandbytes, with the
    quantization report in adaptermerge.json; compute_dtype is its matmul dtype, and
    quantize_progress(stage, done, total) follows that step. dtype (float16, bfloat16, float32)
    is the floating-point weights' dtype in the shards (default: the base's own). The options and the output folder
    (never an input adapter or the base folder, even with force) are checked before any weight is
    read. Returns `out`.
    """
    output = ModelOutput(Path(out), force, shard_size, merge_onto, requantize, compute_dtype, dtype)
    adapters = list(adapters)
    # before the plan: a method's preparation (regmean's calibration) can take minutes
    check_destination(output.out, force, input_paths(adapters, (base,)))
    plan = MergePlan(adapters, method, weights, base=base, need_base=True, seed=seed, device=device, check_base=check_base,
                     progress=progress, **params)
    write_full_model(plan, output, progress=progress, quantize_progress=quantize_progress)
    return output.out
