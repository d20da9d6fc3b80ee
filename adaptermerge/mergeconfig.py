"""A merge as data: MergeJob, read from CLI flags or a mergekit-style YAML file, and run_job.

    merge_method: ties                 # or `method`
    base_model: HuggingFaceTB/SmolLM2-135M-Instruct   # optional (or `base`)
    models:                            # or `adapters`; paths relative to this file
      - model: adapters/domain         # or `path`
        parameters: {weight: 0.6}      # or `weight: 0.6`; `alpha:` for bare files
      - model: adapters/structured
        parameters: {weight: 0.4}
    parameters: {density: 0.2}         # the method's parameters
    output: adapter                    # or model
    merge_onto: dequantized            # model output: original | dequantized (default from training.json)
    requantize: nf4                    # model output: nf4 | int8, with compute_dtype: float32
    rank: 32
    seed: 0
    out: merged/
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .adapter import load_adapter
from .engine import MergePlan, Progress
from .errors import AdapterMergeError
from .fileio import check_not_an_input, check_output

_TOP_KEYS = {"merge_method", "method", "base_model", "base", "models", "adapters", "parameters", "output", "rank", "seed", "out", "output_path", "device", "shard_size", "force", "check_base", "dtype", "requantize", "compute_dtype", "merge_onto"}


@dataclass
class MergeJob:
    inputs: list[Path]
    out: Path
    method: str = "linear"
    weights: list[float] | None = None
    alphas: list[float] | None = None
    params: dict = field(default_factory=dict)
    rank: int | None = None
    base: str | None = None
    output: str = "adapter"
    shard_size: str = "2GB"
    seed: int = 0
    device: str = "cpu"
    check_base: bool = True
    force: bool = False
    merge_onto: str | None = None  # None: from the adapters' training.json (adaptermerge.qlora)
    requantize: str | None = None  # nf4 | int8, with output model
    compute_dtype: str = "float32"


def _number(path, index: int, key: str, value) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    except (TypeError, ValueError):
        raise AdapterMergeError(f"{path}: models[{index}] {key} must be a number, got {value!r}") from None


def _alpha_for(alphas, i, n):
    if alphas is None:
        return None
    if len(alphas) == 1:
        return alphas[0]
    if len(alphas) != n:
        raise AdapterMergeError(f"--alpha: {len(alphas)} values for {n} inputs: give one value, or one per input")
    return alphas[i]


def check_job(job: MergeJob) -> None:
    """What can be checked before any work: the output kind and folder, the model-only options."""
    from .qlora import check_merge_onto

    if job.output not in ("adapter", "model"):
        raise AdapterMergeError(f"output must be adapter or model, got {job.output!r}")
    check_output(job.out, job.force)
    check_not_an_input(job.out, job.inputs)

    if job.compute_dtype != "float32" and job.requantize is None:
        raise AdapterMergeError(f"--compute-dtype {job.compute_dtype} applies to --requantize (the quantized model's compute dtype); without it the model is written in float32")
    if job.output != "model":
        for flag, value in (("--requantize", job.requantize), ("--merge-onto", job.merge_onto)):
            if value is not None:
                raise AdapterMergeError(f"{flag} applies to --output model (the full merged model), not to adapter output")
        return
    if job.rank is not None:
        raise AdapterMergeError("--rank applies to adapter output; --output model adds the exact merged delta")
    check_merge_onto(job.merge_onto)
    if job.requantize is not None:
        from .quantize import check_compute_dtype, check_scheme, require_bitsandbytes

        check_scheme(job.requantize)
        check_compute_dtype(job.compute_dtype)
        require_bitsandbytes()


def run_job(job: MergeJob, progress: Progress | None = None, quantize_progress=None) -> dict:
    """Load, check, merge and write. Returns the provenance written to adaptermerge.json.

    quantize_progress(stage, done, total) follows the re-quantization of --requantize.
    """
    check_job(job)
    adapters = [load_adapter(p, alpha=_alpha_for(job.alphas, i, len(job.inputs))) for i, p in enumerate(job.inputs)]
    names = [a.name for a in adapters]
    for i, a in enumerate(adapters):  # two inputs named alike (a/adapter_model.safetensors, b/...) stay distinguishable
        if names.count(a.name) > 1:
            a.name = f"{a.name}#{i + 1}"
    # the base folder is an input too (--force onto it would replace the base with the merge);
    # checked before the plan, whose preparation (regmean's Grams) can take minutes
    bases = [job.base] if job.base is not None else [a.base_model for a in adapters if a.base_model]
    check_not_an_input(job.out, [b for b in bases if Path(str(b)).expanduser().is_dir()])
    plan = MergePlan(
        adapters,
        job.method,
        job.weights,
        base=job.base,
        need_base=job.output == "model",
        seed=job.seed,
        device=job.device,
        check_base=job.check_base,
        progress=progress,
        **job.params,
    )
    if job.output == "model":
        from .model_output import write_full_model
        from .qlora import apply_merge_onto

        choice = apply_merge_onto(plan, job.merge_onto, job.requantize)
        return write_full_model(
            plan, job.out, shard_size=job.shard_size, force=job.force, progress=progress, extra_meta={"merge_onto": choice},
            requantize=job.requantize, compute_dtype=job.compute_dtype, quantize_progress=quantize_progress,
        )
    merged = plan.to_adapter(job.rank, progress)
    merged.save(job.out, force=job.force)
    return merged.metadata


def load_merge_config(path: str | Path) -> MergeJob:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise AdapterMergeError(f"{path}: no such merge config") from None
    except yaml.YAMLError as exc:
        raise AdapterMergeError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise AdapterMergeError(f"{path}: expected a mapping with merge_method and models")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise AdapterMergeError(f"{path}: unknown keys {', '.join(sorted(unknown))} (expected some of {', '.join(sorted(_TOP_KEYS))})")
    method = data.get("merge_method", data.get("method"))
    if not method:
        raise AdapterMergeError(f"{path}: missing merge_method")
    items = data.get("models", data.get("adapters"))
    if not isinstance(items, list) or not items:
        raise AdapterMergeError(f"{path}: models must be a non-empty list of adapters")
    root = path.parent
    inputs, weights, alphas = [], [], []
    for i, item in enumerate(items):
        if isinstance(item, str):
            item = {"model": item}
        src = item.get("model", item.get("path")) if isinstance(item, dict) else None
        if not src:
            raise AdapterMergeError(f"{path}: models[{i}] needs a model (or path) entry")
        params = {**(item.get("parameters") or {}), **{k: v for k, v in item.items() if k in ("weight", "alpha")}}
        extra = set(params) - {"weight", "alpha"}
        if extra:
            raise AdapterMergeError(f"{path}: models[{i}] has per-model parameters {', '.join(sorted(extra))}; only weight and alpha are per model, others go under the top-level parameters")
        inputs.append(root / src if not Path(src).is_absolute() else Path(src))
        weights.append(params.get("weight"))
        alphas.append(params.get("alpha"))
    if any(w is not None for w in weights) and any(w is None for w in weights):
        raise AdapterMergeError(f"{path}: give a weight for every model or for none")
    out = data.get("out", data.get("output_path"))
    if out is None:
        raise AdapterMergeError(f"{path}: missing out (the output folder), or pass -o")
    base = data.get("base_model", data.get("base"))
    if base is not None and (root / str(base)).is_dir():
        base = str(root / str(base))
    return MergeJob(
        inputs=inputs,
        out=root / out,
        method=str(method),
        weights=None if weights[0] is None else [_number(path, i, "weight", w) for i, w in enumerate(weights)],
        alphas=None if all(a is None for a in alphas) else [_number(path, i, "alpha", a) if a is not None else None for i, a in enumerate(alphas)],
        params=dict(data.get("parameters") or {}),
        rank=data.get("rank"),
        base=base,
        output=data.get("output", "adapter"),
        shard_size=str(data.get("shard_size", "2GB")),
        seed=int(data.get("seed", 0)),
        device=data.get("device", "cpu"),
        check_base=bool(data.get("check_base", True)),
        force=bool(data.get("force", False)),
        merge_onto=data.get("merge_onto"),
        requantize=data.get("requantize"),
        compute_dtype=str(data.get("compute_dtype", "float32")),
    )


def job_as_dict(job: MergeJob) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(job).items()}
