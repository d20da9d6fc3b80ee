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
    rank: 32
    seed: 0
    out: merged/
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import AdapterMergeError
from .fileio import read_yaml

_TOP_KEYS = {"merge_method", "method", "base_model", "base", "models", "adapters", "parameters", "output", "rank", "seed", "out", "output_path", "device", "shard_size", "force", "check_base", "requantize", "compute_dtype", "merge_onto"}

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

    def __post_init__(self):
        if self.output not in OUTPUTS:
            raise AdapterMergeError(f"output must be adapter or model, got {self.output!r}")
        if self.output == "adapter":
            for flag, (name, default) in _MODEL_ONLY.items():
                if getattr(self, name) != default:
                    raise AdapterMergeError(f"{flag} applies to --output model (the full merged model), not to adapter output")
        elif self.rank is not None:
            raise AdapterMergeError("--rank applies to adapter output; --output model adds the exact merged delta")
        if self.alphas is not None and len(self.alphas) not in (1, len(self.inputs)):
            raise AdapterMergeError(f"--alpha: {len(self.alphas)} values for {len(self.inputs)} inputs: give one value, or one per input")

    def alpha_for(self, index: int) -> float | None:
        """The --alpha of input `index` (one value stands for every input)."""
        if self.alphas is None:
            return None
        return self.alphas[0] if len(self.alphas) == 1 else self.alphas[index]


def _number(path, index: int, key: str, value) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    except (TypeError, ValueError):
        raise AdapterMergeError(f"{path}: models[{index}] {key} must be a number, got {value!r}") from None


def _typed(path, key: str, value, kind: type):
    """A top-level value of the YAML file as `kind` (int or bool), or a one-line error naming the key."""
    if kind is bool and not isinstance(value, bool):
        raise AdapterMergeError(f"{path}: {key} must be true or false, got {value!r}")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise AdapterMergeError(f"{path}: {key} must be an integer, got {value!r}")
    return value


def load_merge_config(path: str | Path, *, out: str | Path | None = None, force: bool = False) -> MergeJob:
    """The MergeJob a YAML file describes. Relative paths in it are relative to the file; `out`
    (-o) replaces the file's output folder, and `force` (--force) adds to its `force`."""
    path = Path(path)
    data = read_yaml(path, "merge config")
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
    if out is None:
        out = data.get("out", data.get("output_path"))
        if out is None:
            raise AdapterMergeError(f"{path}: missing out (the output folder), or pass -o")
        out = root / out
    base = data.get("base_model", data.get("base"))
    if base is not None and (root / str(base)).is_dir():
        base = str(root / str(base))
    return MergeJob(
        inputs=inputs,
        out=Path(out),
        method=str(method),
        weights=None if weights[0] is None else [_number(path, i, "weight", w) for i, w in enumerate(weights)],
        alphas=None if all(a is None for a in alphas) else [_number(path, i, "alpha", a) if a is not None else None for i, a in enumerate(alphas)],
        params=dict(data.get("parameters") or {}),
        rank=None if data.get("rank") is None else _typed(path, "rank", data["rank"], int),
        base=base,
        output=data.get("output", "adapter"),
        shard_size=str(data.get("shard_size", "2GB")),
        seed=_typed(path, "seed", data.get("seed", 0), int),
        device=data.get("device", "cpu"),
        check_base=_typed(path, "check_base", data.get("check_base", True), bool),
        force=force or _typed(path, "force", data.get("force", False), bool),
        merge_onto=data.get("merge_onto"),
        requantize=data.get("requantize"),
        compute_dtype=str(data.get("compute_dtype", "float32")),
    )

