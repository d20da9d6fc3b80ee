"""LoRA adapters on disk and in memory: PEFT's format is the contract.

An adapter on disk is either a PEFT folder (`adapter_config.json` + `adapter_model.safetensors`) or a
bare `.safetensors` file. Tensors are read lazily, one module at a time, with `safe_open`; only
safetensors and JSON are ever read (never pickles).

Scaling follows PEFT exactly: `scale = alpha / r`, or `alpha / sqrt(r)` with `use_rslora`, where a
module's `r` and `alpha` come from `rank_pattern` / `alpha_pattern` when a pattern matches its name
(first matching key, matched as `(.*\\.)?KEY$` like PEFT), else from `r` / `lora_alpha`.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .base import EMBEDDED_ID, is_embedded
from .errors import AdapterMergeError
from .fileio import atomic_dir, read_json_object, sha256_file

log = logging.getLogger(__name__)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."

# base_model.model.<module>.lora_A[.<adapter name>].weight ; <module>.lora_magnitude_vector[.<name>][.weight]
_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+?)\."
    r"(?:(?P<ab>lora_A|lora_B)(?:\.[^.]+)?\.weight|(?P<mag>lora_magnitude_vector)(?:\.[^.]+)?(?:\.weight)?)$"
)
_UNSUPPORTED = ("lora_embedding_A", "lora_embedding_B", "modules_to_save", "lora_bias", "trainable_tokens")


@dataclass(frozen=True)
class LoraFactors:
    """One module's LoRA: `delta = scale * B @ A`; DoRA adds a per-output-row `magnitude`.

    A: [r, in]; B: [out, r]; magnitude: [out] or None.
    """

    A: torch.Tensor
    B: torch.Tensor
    alpha: float
    scale: float
    magnitude: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    @property
    def shape(self) -> tuple[int, int]:  # (out, in) of the weight this adapts
        return (self.B.shape[0], self.A.shape[1])

    @property
    def is_dora(self) -> bool:
        return self.magnitude is not None

    def scaled_B(self) -> torch.Tensor:
        """`scale * B` in float32: with it, `delta = scaled_B() @ A`. # [out, r]"""
        return self.B.float() * self.scale

    def delta(self) -> torch.Tensor:
        """The weight update `scale * B @ A` in float32. # [out, in]"""
        return self.scaled_B() @ self.A.float()

    def to(self, device: str | torch.device) -> "LoraFactors":
        mag = None if self.magnitude is None else self.magnitude.to(device)
        return LoraFactors(self.A.to(device), self.B.to(device), self.alpha, self.scale, mag)


@dataclass(frozen=True)
class ModuleSpec:
    """What the file says about one module, known without reading its tensors."""

    name: str
    rank: int
    alpha: float
    scale: float
    shape: tuple[int, int]  # (out, in)
    keys: dict  # {"A": key, "B": key, "magnitude": key or None}


def resolve_pattern(patterns: dict | None, module: str, default):
    """PEFT's rule: the first pattern key K (in file order) for which `module` matches `(.*\\.)?K$`."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def module_scale(alpha: float, rank: int, rslora: bool) -> float:
    return alpha / math.sqrt(rank) if rslora else alpha / rank


class Adapter:
    """A LoRA adapter: name, base model id, `{module: LoraFactors}` (read lazily), config, metadata.

    Build one with `load_adapter(path)` or `Adapter.from_factors(...)`; write it with `save(path)`.
    `inputs` are the files and folders it was read or made from (its own file or folder, a
    merge's input adapters and base model folder): `save` never writes over or into them.
    """

    def __init__(
        self,
        name: str,
        specs: dict[str, ModuleSpec],
        read: Callable[[str], torch.Tensor],
        *,
        config: dict,
        base_model: str | None,
        source: Path | None = None,
        metadata: dict | None = None,
        inputs: Iterable[str | Path] = (),
    ):
        self.name = name
        self.specs = specs
        self._read = read
        self.config = config
        self.base_model = base_model
        self.source = source
        self.metadata = metadata or {}
        self.inputs: tuple[Path, ...] = (*((Path(source),) if source is not None else ()), *(Path(p) for p in inputs))
        self.is_dora = any(s.keys.get("magnitude") for s in specs.values())

    # -- reading ---------------------------------------------------------------------------
    @property
    def modules(self) -> list[str]:
        return list(self.specs)

    @property
    def dtype(self) -> torch.dtype:
        first = next(iter(self.specs.values()))
        return self._read(first.keys["A"]).dtype

    def _label(self) -> str:
        """How errors name this adapter: by its file or folder where it has one (names are made
        unique with #N suffixes, which a user would not recognize)."""
        return f"adapter {self.name} ({self.source})" if self.source else f"adapter {self.name}"

    def factors(self, module: str, device: str | torch.device = "cpu", *, check: bool = True) -> LoraFactors:
        """Read one module's factors and check them (finite values, consistent shapes).
        check=False leaves the finiteness check to the caller (`check_finite`), e.g. to a merge
        worker, so that the thread that reads does nothing else."""
        spec = self.specs[module]
        A, B = self._read(spec.keys["A"]), self._read(spec.keys["B"])
        mag = self._read(spec.keys["magnitude"]) if spec.keys.get("magnitude") else None
        if mag is not None and tuple(mag.shape) != (spec.shape[0],):
            raise AdapterMergeError(
                f"{self._label()}: module {module} lora_magnitude_vector has shape {tuple(mag.shape)}, expected ({spec.shape[0]},)"
            )
        f = LoraFactors(A, B, spec.alpha, spec.scale, mag).to(device)
        if check:
            self.check_finite(module, f)
        return f

    def check_finite(self, module: str, f: LoraFactors) -> None:
        """Refuse factors with a NaN or Inf entry, naming this adapter and the module."""
        for label, t in (("lora_A", f.A), ("lora_B", f.B), ("lora_magnitude_vector", f.magnitude)):
            # A NaN or Inf entry makes the sum NaN or Inf, and a float64 sum of finite float32 (or
            # narrower) values cannot overflow: one reduction, where isfinite(t).all() writes a
            # bool mask first.
            if t is not None and not torch.isfinite(t.sum(dtype=torch.float64)):
                raise AdapterMergeError(f"{self._label()}: module {module} {label} contains NaN or Inf values")

    def __repr__(self) -> str:
        kind = "DoRA" if self.is_dora else "LoRA"
        ranks = sorted({s.rank for s in self.specs.values()})
        return f"Adapter({self.name!r}, {kind}, {len(self.specs)} modules, ranks {ranks}, base {self.base_model!r})"

    # -- building and writing --------------------------------------------------------------
    @classmethod
    def from_factors(
        cls,
        name: str,
        factors: dict[str, LoraFactors],
        *,
        base_model: str | None,
        config: dict | None = None,
        metadata: dict | None = None,
        inputs: Iterable[str | Path] = (),
    ) -> "Adapter":
        """An in-memory adapter (e.g. a merge result). Tensors are stored with scale folded in
        when saved; `config` may carry extra PEFT fields (task_type...); `inputs`: what it was made
        from, which `save` refuses to write over."""
        tensors: dict[str, torch.Tensor] = {}
        specs = {}
        for module, f in factors.items():
            keys = {"A": f"{module}.A", "B": f"{module}.B", "magnitude": f"{module}.m" if f.is_dora else None}
            tensors[keys["A"]], tensors[keys["B"]] = f.A, f.B
            if f.is_dora:
                tensors[keys["magnitude"]] = f.magnitude
            specs[module] = ModuleSpec(module, f.rank, f.alpha, f.scale, f.shape, keys)
        return cls(name, specs, tensors.__getitem__, config=dict(config or {}), base_model=base_model, metadata=metadata, inputs=inputs)

    def peft_config(self) -> dict:
        """adapter_config.json for this adapter. Each module's alpha is written so that its scale
        comes out exactly (alpha = scale * r, no rsLoRA), with per-module rank/alpha patterns."""
        ranks = Counter(s.rank for s in self.specs.values())
        r = ranks.most_common(1)[0][0]
        alpha_of = {m: s.scale * s.rank for m, s in self.specs.items()}
        alphas = Counter(alpha_of[m] for m, s in self.specs.items() if s.rank == r)
        lora_alpha = alphas.most_common(1)[0][0] if alphas else float(r)
        rank_pattern = {re.escape(m): s.rank for m, s in self.specs.items() if s.rank != r}
        alpha_pattern = {re.escape(m): alpha_of[m] for m in self.specs if alpha_of[m] != lora_alpha}
        keep = {k: v for k, v in self.config.items() if k in ("task_type", "revision", "lora_dropout", "fan_in_fan_out", "bias")}
        return {
            **keep,
            "peft_type": "LORA",
            "base_model_name_or_path": self.base_model,
            "r": r,
            "lora_alpha": lora_alpha,
            "use_rslora": False,
            "use_dora": self.is_dora,
            # Exact module names: only the modules that carry tensors get a LoRA layer.
            "target_modules": sorted(self.specs),
            "rank_pattern": rank_pattern,
            "alpha_pattern": alpha_pattern,
            "init_lora_weights": True,
            "inference_mode": True,
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors under PEFT's saved key names."""
        out = {}
        for module, spec in self.specs.items():
            f = self.factors(module)
            out[f"{PEFT_PREFIX}{module}.lora_A.weight"] = f.A.contiguous()
            out[f"{PEFT_PREFIX}{module}.lora_B.weight"] = f.B.contiguous()
            if f.is_dora:
                out[f"{PEFT_PREFIX}{module}.lora_magnitude_vector"] = f.magnitude.contiguous()
        return out

    def save(self, path: str | Path, *, force: bool = False, extra_files: dict[str, str] | None = None) -> Path:
        """Write a PEFT adapter folder atomically (temp folder, then rename). `path` may not be
        one of this adapter's `inputs`, nor inside or above one, even with force."""
        with atomic_dir(path, force=force, inputs=self.inputs) as tmp:
            save_file(self.state_dict(), str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
            (tmp / CONFIG_NAME).write_text(json.dumps(self.peft_config(), indent=2) + "\n")
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text)
            if self.metadata:
                (tmp / "adaptermerge.json").write_text(json.dumps(self.metadata, indent=2, default=str) + "\n")
        return Path(path)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _open_header(path: Path) -> tuple[dict[str, tuple], dict]:
    """Shapes of every tensor and the metadata, from the safetensors header alone."""
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            return shapes, f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterMergeError(f"{path}: not a readable safetensors file ({exc})") from None


def _reader(path: Path, name: str) -> Callable[[str], torch.Tensor]:
    handle = None

    def read(key: str) -> torch.Tensor:
        nonlocal handle
        try:
            if handle is None:
                # Opened once, on the first read, and kept: opening per tensor parses the header
                # every time (~1 s of a 210-module merge of three adapters). It maps the file
                # read-only; tensors are copied out one at a time, so memory stays per module.
                handle = safe_open(str(path), framework="pt")
            return handle.get_tensor(key)
        except (SafetensorError, OSError) as exc:  # truncated data past a valid header
            raise AdapterMergeError(f"adapter {name}: cannot read tensor {key} from {path} ({exc})") from None

    return read


def _group_keys(path: Path, shapes: dict[str, tuple]) -> dict[str, dict]:
    modules: dict[str, dict] = {}
    for key in shapes:
        bad = next((u for u in _UNSUPPORTED if u in key), None)
        if bad:
            raise AdapterMergeError(f"{path}: tensor {key} is a {bad} tensor; only LoRA/DoRA on linear layers can be merged")
        m = _KEY.match(key)
        if not m:
            raise AdapterMergeError(f"{path}: tensor {key} is not a LoRA tensor (expected ...lora_A.weight, ...lora_B.weight or ...lora_magnitude_vector)")
        slot = m.group("ab")[-1] if m.group("ab") else "magnitude"
        entry = modules.setdefault(m.group("module"), {})
        if slot in entry:
            raise AdapterMergeError(f"{path}: module {m.group('module')} has two {slot} tensors ({entry[slot]}, {key}); multi-adapter files are not supported")
        entry[slot] = key
    if not modules:
        raise AdapterMergeError(f"{path}: holds no LoRA tensors")
    return modules


def _module_specs(path: Path, name: str, shapes: dict, grouped: dict, config: dict) -> dict[str, ModuleSpec]:
    rslora = bool(config.get("use_rslora", False))
    specs = {}
    for module in sorted(grouped):
        keys = grouped[module]
        if "A" not in keys or "B" not in keys:
            raise AdapterMergeError(f"{path}: module {module} has lora_{'A' if 'B' in keys else 'B'} missing")
        a, b = shapes[keys["A"]], shapes[keys["B"]]
        if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
            raise AdapterMergeError(f"{path}: module {module} has lora_A {a} and lora_B {b}; expected A [r, in] and B [out, r]")
        rank = a[0]
        expected_rank = resolve_pattern(config.get("rank_pattern"), module, config.get("r", rank))
        if expected_rank != rank:
            raise AdapterMergeError(f"{path}: module {module} has rank {rank} but adapter_config says r={expected_rank}")
        alpha = float(resolve_pattern(config.get("alpha_pattern"), module, config["lora_alpha"]))
        specs[module] = ModuleSpec(module, rank, alpha, module_scale(alpha, rank, rslora), (b[0], a[1]), {**keys, "magnitude": keys.get("magnitude")})
    return specs


def _check_config(path: Path, config: dict) -> None:
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterMergeError(f"{path}: peft_type is {config.get('peft_type')!r}; only LORA adapters can be merged")
    if config.get("fan_in_fan_out"):
        raise AdapterMergeError(f"{path}: fan_in_fan_out=true (Conv1D layers) is not supported")
    if config.get("lora_bias"):
        raise AdapterMergeError(f"{path}: lora_bias=true is not supported")
    if "lora_alpha" not in config:
        raise AdapterMergeError(f"{path}: adapter_config has no lora_alpha")
    alphas = [config["lora_alpha"], *(config.get("alpha_pattern") or {}).values()]
    if not all(isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) for a in alphas):
        raise AdapterMergeError(f"{path}: lora_alpha and alpha_pattern must be finite numbers, got {alphas}")


def _config_belongs(config: dict, grouped: dict, shapes: dict) -> bool:
    """A config beside a bare file is used only if its ranks and targets fit the file's tensors."""
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    for module, keys in grouped.items():
        if "A" not in keys:
            return False
        rank = shapes[keys["A"]][0]
        if resolve_pattern(config.get("rank_pattern"), module, config.get("r")) != rank:
            return False
        if isinstance(config.get("target_modules"), list) and not any(module == t or module.endswith("." + t) for t in targets):
            return False
    return True


def _alpha_from_metadata(meta: dict) -> float | None:
    for key in ("lora_alpha", "alpha", "ss_network_alpha"):
        if key in meta:
            try:
                return float(meta[key])
            except ValueError:
                pass
    if "adapter_config" in meta:
        try:
            return float(json.loads(meta["adapter_config"])["lora_alpha"])
        except (ValueError, KeyError, TypeError):
            pass
    return None


def load_adapter(path: str | Path, *, alpha: float | None = None, name: str | None = None) -> Adapter:
    """Open an adapter lazily: a PEFT folder or a bare `.safetensors` file.

    For a bare file, the `adapter_config.json` beside it is used when the file is
    `adapter_model.safetensors` or the config's ranks and target modules fit the file's tensors.
    Otherwise ranks and targets come from the tensors and alpha from the file's metadata
    (`lora_alpha`/`alpha`), else from the `alpha` argument (`--alpha`).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise AdapterMergeError(f"{path}: no such file or folder")
    if path.is_dir():
        weights, config_path = path / WEIGHTS_NAME, path / CONFIG_NAME
        if not config_path.is_file():
            if (path / "config.json").is_file():
                # a full model, e.g. the output of --output model: its adaptermerge.json says what was merged
                raise AdapterMergeError(f"{path}: a full model folder (config.json), not a LoRA adapter: expected a PEFT adapter folder"
                                        + ("; its adaptermerge.json records the merge that made it" if (path / "adaptermerge.json").is_file() else ""))
            raise AdapterMergeError(f"{path}: no {CONFIG_NAME} (expected a PEFT adapter folder, or pass the .safetensors file itself)")
        if not weights.is_file():
            has_bin = (path / "adapter_model.bin").is_file()
            hint = " (only adapter_model.bin: pickled weights are never read; convert them to safetensors)" if has_bin else ""
            raise AdapterMergeError(f"{path}: no {WEIGHTS_NAME}{hint}")
    elif path.suffix == ".safetensors":
        weights, config_path = path, path.parent / CONFIG_NAME
    else:
        raise AdapterMergeError(f"{path}: expected a PEFT adapter folder or a .safetensors file")

    shapes, meta = _open_header(weights)
    grouped = _group_keys(weights, shapes)
    name = name or (path.name if path.is_dir() else path.stem)

    config = None
    if config_path.is_file():
        candidate = read_json_object(config_path)
        if path.is_dir() or weights.name == WEIGHTS_NAME or _config_belongs(candidate, grouped, shapes):
            config = candidate
        else:
            log.info("%s: ignoring %s beside it (its ranks/targets do not fit the file)", weights, config_path)
    if alpha is not None and not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        # zero would silently drop the adapter and a negative one flip its sign
        raise AdapterMergeError(f"{weights}: --alpha must be a positive finite number, got {alpha!r}")
    if config is None:
        file_alpha = _alpha_from_metadata(meta)
        if file_alpha is None and alpha is None:
            raise AdapterMergeError(
                f"{weights}: no adapter_config.json belongs to it and its metadata has no lora_alpha: pass --alpha (one value, or one per input)"
            )
        config = {"peft_type": "LORA", "lora_alpha": alpha if alpha is not None else file_alpha, "base_model_name_or_path": meta.get("base_model_name_or_path")}
    elif alpha is not None:
        log.warning("%s: --alpha ignored: its adapter_config.json gives lora_alpha", weights)
    _check_config(weights, config)

    specs = _module_specs(weights, name, shapes, grouped, config)
    return Adapter(
        name,
        specs,
        _reader(weights, name),
        config=config,
        base_model=config.get("base_model_name_or_path"),
        source=path,
        metadata={"sha256": sha256_file(weights)},
    )


def canonical_base(name: str | None) -> str | None:
    """Compare base models by their last path component, case-insensitively: a hub id and a local
    copy of it (`meta-llama/Llama-3.1-8B` and `/models/Llama-3.1-8B`) count as the same base."""
    if name is None:
        return None
    if is_embedded(name):
        name = EMBEDDED_ID
    marker = Path(str(name)) / "adaptermerge_base.json"
    if marker.is_file():
        name = json.loads(marker.read_text()).get("id", name)
    return str(name).rstrip("/").split("/")[-1].lower()
