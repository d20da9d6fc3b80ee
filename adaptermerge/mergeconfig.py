"""A merge as data: MergeJob, built from CLI flags or read from a mergekit-style YAML file.
Nothing runs here: adaptermerge.api.run_merge_job does the merge.

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
    dtype: bfloat16                    # float16 | bfloat16 | float32: the factors, or the model's weights
    rank: 32
    seed: 0
    out: merged/                       # optional: -o gives it (as mergekit's command line does)

mergekit's own files run as they are, with mergekit's meaning (docs/mergekit.md has the table):
- a parameter the file leaves out takes mergekit's default, not the command's: a Params field
  says so with `mergekit=` in its metadata (ties, dare_linear, dare_ties and breadcrumbs at
  density 1; dare_linear and dare_ties not normalized);
- the base model may be listed among the models (it is the reference, not an input); for linear
  its weight counts in the normalization, as mergekit averages it in as a model;
- a method parameter may sit under each model's parameters when every model gives the same
  value (`density: 0.5` under each), and `weight` under the top-level parameters is every
  model's default weight;
- `int8_mask` (a memory option) and `rescale` at mergekit's default (true for DARE, else false)
  change nothing; `normalize` for task_arithmetic and breadcrumbs divides the weights by their
  sum; `out_dtype` is the output's dtype (computing is float32 here whatever `dtype` says).
What cannot mean the same here is refused in one line: mergekit's slices, per-layer gradients
and filters, other methods. Linear with `normalize: false` on weights that do not sum to 1 (where
mergekit scales the base's weights too) merges the deltas, with a warning.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from . import validate
from .engine import make_params
from .errors import AdapterMergeError
from .fileio import read_yaml
from .methods import METHODS
from .model_output import check_dtype
from .qlora import MERGE_ONTO
from .quantization import COMPUTE_DTYPES, SCHEMES

log = logging.getLogger(__name__)

# key -> its other spelling (mergekit's or ours); a file gives one of the two
_ALIASES = {"merge_method": "method", "base_model": "base", "models": "adapters", "out": "output_path"}
_TOP_KEYS = ("merge_method", "method", "base_model", "base", "models", "adapters", "parameters", "output", "rank", "seed", "out",
             "output_path", "device", "shard_size", "force", "check_base", "requantize", "compute_dtype", "merge_onto", "dtype",
             "out_dtype")
_MODEL_KEYS = ("model", "path", "parameters", "weight", "alpha")
# mergekit keys and methods with no meaning for adapters merged whole in delta space
_MERGEKIT_ONLY_KEYS = {"slices": "layer slices", "modules": "per-module definitions", "tokenizer_source": "tokenizer merging",
                       "tokenizer": "tokenizer merging", "chat_template": "chat template"}
MERGEKIT_ONLY_METHODS = ("slerp", "nuslerp", "multislerp", "karcher", "della", "della_linear", "breadcrumbs_ties", "sce",
                         "model_stock", "nearswap", "arcee_fusion", "passthrough", "ram", "ramplus_tl")
# task-arithmetic methods of mergekit without a normalize field here: a plain weighted sum, so
# mergekit's normalize (divide by the sum of the weights) is exactly a change of the weights
_SUM_METHODS = ("task_arithmetic", "breadcrumbs")
_DARE = ("dare_linear", "dare_ties")

OUTPUTS = ("adapter", "model")
# options that only a full-model output takes, with their defaults
_MODEL_ONLY = {"--requantize": ("requantize", None), "--merge-onto": ("merge_onto", None), "--compute-dtype": ("compute_dtype", "float32")}


@dataclass
class MergeJob:
    """One merge: inputs (adapter folders or bare .safetensors files), method and parameters, and
    the output. Checked for consistency when built (which options apply to which output); values
    are checked where they are used (the method's parameters by the plan, the model options by
    model_output.ModelOutput)."""

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
    dtype: str | None = None  # float16 | bfloat16 | float32: adapter factors or model weights (None: as the inputs)
    heal: int = 0  # post-merge distillation steps (training/heal.py); adapter output only
    heal_prompts: dict[str, Path] = field(default_factory=dict)  # adapter name or task -> JSONL of prompts

    def __post_init__(self):
        # The flags' own types: a YAML file's values were checked with its name by load_merge_config.
        if self.output not in OUTPUTS:
            raise AdapterMergeError(f"output must be adapter or model, got {validate.quote(self.output)}")
        validate.seed(self.seed, "--seed")
        validate.boolean(self.force, "--force")
        validate.boolean(self.check_base, "check_base")
        validate.integer(self.rank, "--rank", minimum=1, maximum=2**31 - 1, optional=True)
        validate.device(self.device, "--device")
        if self.dtype is not None:
            check_dtype(self.dtype, "dtype")
        if self.output == "adapter":
            for flag, (name, default) in _MODEL_ONLY.items():
                if getattr(self, name) != default:
                    raise AdapterMergeError(f"{flag} applies to --output model (the full merged model), not to adapter output")
        elif self.rank is not None:
            raise AdapterMergeError("--rank applies to adapter output; --output model adds the exact merged delta")
        elif self.heal:
            raise AdapterMergeError("--heal applies to adapter output: it trains the merged LoRA adapter")
        if self.alphas is not None and len(self.alphas) not in (1, len(self.inputs)):
            raise AdapterMergeError(f"--alpha: {len(self.alphas)} values for {len(self.inputs)} inputs: give one value, or one per input")

    def alpha_for(self, index: int) -> float | None:
        """The --alpha of input `index` (one value stands for every input)."""
        if self.alphas is None:
            return None
        return self.alphas[0] if len(self.alphas) == 1 else self.alphas[index]


def _one_of(path: Path, data: dict, key: str):
    """data[key] or data[its alias]; both given is an error (which would win is a guess)."""
    alias = _ALIASES[key]
    if key in data and alias in data:
        raise AdapterMergeError(f"{path}: give {key} or {alias}, not both")
    return data.get(key, data.get(alias))


def _model(path: Path, root: Path, i: int, item, method_params: tuple[str, ...]) -> tuple[Path, float | None, float | None, dict]:
    """(input path, weight, alpha, method parameters) of models[i]: a path, or a mapping with model
    (or path) and weight / alpha, directly or under parameters; a method parameter under
    parameters (mergekit's per-model density) is returned for load_merge_config to check."""
    at = f"{path}: models[{i}]"
    if isinstance(item, str):
        item = {"model": item}
    item = validate.mapping(item, at, keys=_MODEL_KEYS)
    if "model" in item and "path" in item:
        raise AdapterMergeError(f"{at}: give model or path, not both")
    src = item.get("model", item.get("path"))
    if src is None:
        raise AdapterMergeError(f"{at} needs a model (or path) entry")
    src = validate.path(src, f"{at} model", root=root)
    params = validate.mapping(item.get("parameters"), f"{at} parameters", optional=True)
    for k, v in params.items():
        _one_value(v, f"{at} {k}")
    extra = [k for k in params if k not in ("weight", "alpha", *method_params)]
    if extra:
        raise AdapterMergeError(f"{at} has per-model parameters {validate.listing(extra)}; only weight and alpha "
                                "are per model, others go under the top-level parameters")
    for k in ("weight", "alpha"):
        if k in params and k in item:
            raise AdapterMergeError(f"{at}: {k} given twice (directly and under parameters)")
    values = {**params, **{k: item[k] for k in ("weight", "alpha") if k in item}}
    weight = validate.number(values.get("weight"), f"{at} weight", optional=True)
    alpha = validate.number(values.get("alpha"), f"{at} alpha", above=0, optional=True)
    return src, weight, alpha, {k: v for k, v in params.items() if k in method_params}


def load_merge_config(path: str | Path, *, out: str | Path | None = None, force: bool = False) -> MergeJob:
    """The MergeJob a YAML file describes. Relative paths in it are relative to the file; `out`
    (-o) replaces the file's output folder, and `force` (--force) adds to its `force`. Every value
    is checked here, so each error names the file and the key."""
    path = Path(path)
    data = validate.document(read_yaml(path, "merge config"), str(path))
    if not isinstance(data, dict):
        raise AdapterMergeError(f"{path}: expected a mapping with merge_method and models, got {validate.quote(data)}")
    for name, what in _MERGEKIT_ONLY_KEYS.items():
        if name in data:
            raise AdapterMergeError(f"{path}: {name} (mergekit's {what}) is not supported here: adapters merge whole "
                                    "(models:), see docs/mergekit.md")
    validate.mapping(data, str(path), keys=_TOP_KEYS)

    def key(name: str) -> str:
        return f"{path}: {name}"

    method = _one_of(path, data, "merge_method")
    if method is None:
        raise AdapterMergeError(f"{path}: missing merge_method")
    if isinstance(method, str) and method in MERGEKIT_ONLY_METHODS:
        raise AdapterMergeError(f"{key('merge_method')}: {method} is a mergekit method with no delta-space form here; "
                                f"the methods: {', '.join(METHODS)}")
    method = validate.string(method, key("merge_method"), choices=tuple(METHODS))
    items = validate.sequence(_one_of(path, data, "models"), key("models"), nonempty=True)
    root = path.parent
    base = _one_of(path, data, "base_model")
    local = None
    if base is not None:
        local = validate.path(base, key("base_model"), root=root)
        base = str(local) if validate.probe(local) == "folder" else base
    method_params = tuple(f.name.rstrip("_") for f in dataclasses.fields(METHODS.get(method).Params))
    inputs, weights, alphas, per_model = [], [], [], []
    base_weight = None
    for i, item in enumerate(items):
        src, weight, alpha, extra = _model(path, root, i, item, method_params)
        if local is not None and src == local:
            # mergekit lists the base model among the models; it is the reference, not an input.
            # mergekit's linear averages it in as a model: its weight counts in the normalization.
            if method == "linear" and weight is not None and alpha is None and not extra and base_weight is None:
                base_weight = weight
                continue
            if weight is not None or alpha is not None or extra:
                raise AdapterMergeError(f"{path}: models[{i}] is the base model, which adds nothing to merge with {method}: "
                                        "drop its parameters (or the entry)")
            continue
        inputs.append(src)
        weights.append(weight)
        alphas.append(alpha)
        per_model.append(extra)
    if not inputs:
        raise AdapterMergeError(f"{path}: models lists only the base model: give the adapters to merge")
    params = dict(validate.mapping(data.get("parameters"), key("parameters"), optional=True))
    for k, v in params.items():
        _one_value(v, key(f"parameters.{k}"))
    if "weight" in params:  # mergekit: a top-level parameter is every model's default
        shared = validate.number(params.pop("weight"), key("parameters.weight"))
        weights = [shared if w is None else w for w in weights]
    if any(w is not None for w in weights) and any(w is None for w in weights):
        raise AdapterMergeError(f"{path}: give a weight for every model or for none")
    if out is None:
        out = _one_of(path, data, "out")
        if out is None:
            raise AdapterMergeError(f"{path}: missing out (the output folder), or pass -o")
        out = validate.path(out, key("out"), root=root)
    params = _lift_per_model(path, method, params, per_model)
    params, weights = _mergekit_params(path, method, params, None if weights[0] is None else weights, len(inputs), base_weight)
    make_params(METHODS.get(method), params, where=key("parameters"), strict=True)  # checked now, with the file's name
    dtype = data.get("out_dtype", data.get("dtype"))  # mergekit: out_dtype, else dtype, is the output's
    shard_size = data.get("shard_size", "2GB")
    if isinstance(shard_size, int) and not isinstance(shard_size, bool):
        shard_size = validate.integer(shard_size, key("shard_size"), minimum=1, maximum=2**62)  # bytes
    else:
        shard_size = validate.string(shard_size, key("shard_size"), nonempty=True)
    return MergeJob(
        inputs=inputs,
        out=Path(out),
        method=method,
        weights=weights,
        alphas=None if all(a is None for a in alphas) else alphas,
        params=dict(params),
        rank=validate.integer(data.get("rank"), key("rank"), minimum=1, maximum=2**31 - 1, optional=True),
        base=base,
        output=validate.string(data.get("output", "adapter"), key("output"), choices=OUTPUTS),
        shard_size=str(shard_size),
        seed=validate.seed(data.get("seed", 0), key("seed")),
        device=validate.device(data.get("device", "cpu"), key("device")),
        check_base=validate.boolean(data.get("check_base", True), key("check_base")),
        force=validate.boolean(data.get("force", False), key("force")) or force,
        merge_onto=validate.string(data.get("merge_onto"), key("merge_onto"), choices=("auto", *MERGE_ONTO), optional=True),
        requantize=validate.string(data.get("requantize"), key("requantize"), choices=SCHEMES, optional=True),
        compute_dtype=validate.string(data.get("compute_dtype", "float32"), key("compute_dtype"),
                                      choices=tuple(COMPUTE_DTYPES)),
        dtype=None if dtype is None else check_dtype(dtype, key("out_dtype" if "out_dtype" in data else "dtype")),
    )


def _one_value(value, where: str) -> None:
    """A list or mapping where a number belongs is mergekit's per-layer gradient or filter list."""
    if isinstance(value, (list, dict)):
        raise AdapterMergeError(f"{where} must be a number, got {validate.quote(value, 40)}: mergekit's per-layer "
                                "gradients and filters are not supported")


def _lift_per_model(path: Path, method: str, params: dict, per_model: list[dict]) -> dict:
    """A method parameter given under every model with one value moves up to the top-level
    parameters (a different value per model is a one-line error: the methods here take one)."""
    for name in sorted({k for extra in per_model for k in extra}):
        values = [extra.get(name) for extra in per_model]
        if any(v is None for v in values) or any(v != values[0] for v in values):
            raise AdapterMergeError(f"{path}: models give parameters.{name} {validate.quote(values)}: {method} takes one {name} "
                                    f"for every model; give the same value under each model, or one under the top-level parameters")
        if name in params and params[name] != values[0]:
            raise AdapterMergeError(f"{path}: parameters.{name} is {validate.quote(params[name])} but the models give "
                                    f"{validate.quote(values[0])}: give one")
        params[name] = values[0]
    return params


def _mergekit_params(path: Path, method: str, params: dict, weights: list[float] | None, count: int,
                     base_weight: float | None) -> tuple[dict, list[float] | None]:
    """The parameters and weights that make this merge mergekit's: its options taken in or
    refused, and its defaults where the file gives no value (the fields' `mergekit` metadata)."""
    fields = {f.name.rstrip("_"): f for f in dataclasses.fields(METHODS.get(method).Params)}

    def flag(name: str) -> bool:
        return validate.boolean(params.pop(name), f"{path}: parameters.{name}")

    if "int8_mask" in params and "int8_mask" not in fields:
        flag("int8_mask")  # mergekit stores its masks in int8 to save memory: nothing to do here
    if "rescale" in params and "rescale" not in fields:
        if method not in (*_SUM_METHODS, "ties", *_DARE):
            raise AdapterMergeError(f"{path}: parameters.rescale does not apply to {method}")
        if flag("rescale") != (method in _DARE):  # mergekit's default for each: the only rescaling here
            raise AdapterMergeError(f"{path}: parameters.rescale: {'false' if method in _DARE else 'true'} is not supported: "
                                    f"{'DARE here always rescales the kept entries (by 1/density)' if method in _DARE else f'{method} here never rescales'}")
    if "normalize" in params and "normalize" not in fields:
        if method not in _SUM_METHODS:
            raise AdapterMergeError(f"{path}: parameters.normalize does not apply to {method}")
        if flag("normalize"):
            weights = _normalized(path, weights or [1.0] * count)
    for name, f in fields.items():
        if "mergekit" in f.metadata and name not in params:
            params[name] = f.metadata["mergekit"]
    if method == "breadcrumbs" and params.get("density") == 1.0:
        params["gamma"] = 0.0  # mergekit masks nothing at density 1 (its gamma then does nothing)
    if method == "linear":
        weights = _linear(path, params, weights, count, base_weight)
    return params, weights


def _normalized(path: Path, weights: list[float], what: str = "the weights") -> list[float]:
    total = math.fsum(weights)
    if total == 0:
        raise AdapterMergeError(f"{path}: parameters.normalize: {what} sum to 0 and cannot be normalized")
    return [w / total for w in weights]


def _linear(path: Path, params: dict, weights: list[float] | None, count: int, base_weight: float | None) -> list[float] | None:
    """mergekit's linear averages whole weights: `sum_i w_i W_i` over the models (the base, with
    its weight, among them), divided by the weights' sum when normalize. In deltas that is
    `W0 * sum(w) + sum_i w_i delta_i`: a delta merge only when the base's factor is 1. So the
    base's weight is folded into the normalization. With normalize: false the merge here stays
    `W0 + sum_i w_i delta_i`, with a warning when mergekit's would differ (weights, the base's
    included, that do not sum to 1)."""
    normalize = validate.boolean(params.get("normalize", True), f"{path}: parameters.normalize")
    if not normalize:
        total = math.fsum(weights or [1.0] * count) + (base_weight or 0.0)
        if abs(total - 1.0) > 1e-6:
            log.warning("%s: linear with normalize: false merges W0 + sum w_i delta_i here; mergekit would also scale the "
                        "base's weights by the sum of the weights (%g)", path, total)
        return weights
    if base_weight is None:
        return weights
    params["normalize"] = False  # done here: the base's zero delta counts in the divisor
    return _normalized(path, [*(weights or [1.0] * count), base_weight], "the weights (the base's included)")[:-1]
