"""LoRA adapters on disk and in memory: PEFT's format is the contract.

An adapter on disk is either a PEFT folder (`adapter_config.json` + `adapter_model.safetensors`) or a
bare `.safetensors` file. Tensors are read lazily, one module at a time, with `safe_open`; only
safetensors and JSON are ever read (never pickles).

Scaling follows PEFT exactly: `scale = alpha / r`, or `alpha / sqrt(r)` with `use_rslora`, where a
module's `r` and `alpha` come from `rank_pattern` / `alpha_pattern` when a pattern matches its name
(first matching key, matched as `(.*\\.)?KEY$` like PEFT), else from `r` / `lora_alpha`.

Every value read is checked (types, ranges, regexes, tensor dtypes) with a one-line error naming
the file and key, and every module's `scale * B @ A` must fit float32, where merges compute.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

try:  # re's own parser, to look at a pattern's structure (public as sre_parse before 3.11)
    from re import _parser as _sre
except ImportError:  # pragma: no cover
    import sre_parse as _sre

from . import validate
from .base import EMBEDDED_ID, is_embedded
from .errors import AdapterMergeError
from .fileio import atomic_dir, read_json_object, regular_file, sha256_file
from .modelcard import model_card

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
# safetensors dtypes a LoRA tensor may have: merges compute in float32, and an integer or bool
# "factor" is not a trained adapter
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
F32_MAX = torch.finfo(torch.float32).max


def check_alpha(value, where: str) -> float:
    """A LoRA alpha or scale, from any source (adapter_config's lora_alpha and alpha_pattern, file
    metadata, --alpha, LoraFactors given to Adapter.from_factors): a positive number within float32's
    range, as a float. Zero would drop the adapter, a negative one flip its sign, and one beyond
    float32 turns every factor it scales into Inf or NaN."""
    try:
        x = float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else math.nan
    except OverflowError:  # an int beyond float's range
        x = math.inf
    if not 0 < x <= F32_MAX:  # NaN fails the comparison too
        raise AdapterMergeError(f"{where} must be a positive finite number (at most {F32_MAX:.3g}, float32's largest), "
                                f"got {validate.quote(value)}")
    return x


def max_abs(t: torch.Tensor) -> float:
    """The largest |entry| of `t` as a float: NaN when an entry is NaN, inf when one is infinite.

    One aminmax pass, which propagates NaN and cannot overflow: a float32 sum overflows on large
    finite entries, isfinite(t).all() writes a bool mask first, and a float64 sum is 20x slower."""
    if t.numel() == 0:
        return 0.0
    lo, hi = torch.aminmax(t.detach())
    return float(torch.maximum(-lo, hi))


def delta_problem(A: torch.Tensor, B: torch.Tensor, scale: float = 1.0, magnitude: torch.Tensor | None = None,
                  limit: float = F32_MAX) -> str | None:
    """Why `scale * B @ A` (and `magnitude`) would not be finite within `limit` (float32's range by
    default), or None when it is.

    Every entry of the product is bounded by |scale| * rank * max|B| * max|A| (free from the peaks
    checked first), then by |scale| * max_i ||B[i, :]|| * max_j ||A[:, j]|| (Cauchy-Schwarz, a
    cheap float64 bound); only when both exceed `limit` is the product formed, in float64 and by
    row blocks, to tell a real overflow from a loose bound."""
    peaks = {}
    for label, t in (("lora_A", A), ("lora_B", B), ("lora_magnitude_vector", magnitude)):
        if t is None:
            continue
        if not t.is_floating_point():
            return f"{label} has dtype {str(t.dtype).removeprefix('torch.')}; LoRA tensors must be floating point"
        peaks[label] = max_abs(t)
        if not math.isfinite(peaks[label]):
            return f"{label} contains NaN or Inf values"
        if peaks[label] > limit:
            return f"{label} holds {peaks[label]:.3g}, beyond the range of {_range_name(limit)}"
    scale = abs(float(scale))
    if not scale <= limit:
        return f"has scale {scale:.3g}, beyond the range of {_range_name(limit)}"
    if A.numel() == 0 or B.numel() == 0:
        return None
    if scale * peaks["lora_B"] > limit:  # the methods form scale * B first
        return f"has scale * lora_B reaching {scale * peaks['lora_B']:.3g}, beyond the range of {_range_name(limit)}"
    # |(B A)_ij| <= rank * max|B| * max|A|: free from the peaks above, and far within range for
    # any real adapter, so the float64 norms below (5 % of a small-module TIES merge) are rarely needed
    if scale * peaks["lora_B"] * peaks["lora_A"] * A.shape[0] <= limit:
        return None
    b_rows = float(torch.linalg.vector_norm(B, dim=1, dtype=torch.float64).max())
    a_cols = float(torch.linalg.vector_norm(A, dim=0, dtype=torch.float64).max())
    if scale * b_rows * a_cols <= limit:
        return None
    A64, peak = A.double(), 0.0
    for rows in B.split(1024):
        peak = max(peak, max_abs((rows.double() * scale) @ A64))
    if peak > limit:
        return f"has a delta (scale * lora_B @ lora_A) reaching {peak:.3g}, beyond the range of {_range_name(limit)}"
    return None


def _range_name(limit: float) -> str:
    names = {torch.finfo(d).max: str(d).removeprefix("torch.") for d in (torch.float16, torch.bfloat16, torch.float32)}
    return names.get(limit, f"{limit:g}")


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

    def label(self) -> str:
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
                f"{self.label()}: module {module} lora_magnitude_vector has shape {tuple(mag.shape)}, expected ({spec.shape[0]},)"
            )
        f = LoraFactors(A, B, spec.alpha, spec.scale, mag).to(device)
        if check:
            self.check_finite(module, f)
        return f

    def check_finite(self, module: str, f: LoraFactors) -> None:
        """Refuse factors with a NaN or Inf entry, or whose delta `scale * B @ A` overflows float32
        (where every merge computes it), naming this adapter, the module and its alpha."""
        problem = delta_problem(f.A, f.B, f.scale, f.magnitude)
        if problem is not None:
            raise AdapterMergeError(f"{self.label()}: module {module} {problem} (lora_alpha {f.alpha:.3g}, rank {f.rank}, "
                                    f"scale {f.scale:.3g})")

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
            check_alpha(f.alpha, f"adapter {name}: module {module}: alpha")
            check_alpha(f.scale, f"adapter {name}: module {module}: scale")
            if f.rank < 1:
                raise AdapterMergeError(f"adapter {name}: module {module} has rank 0; a LoRA needs rank >= 1")
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
        keep = {k: v for k, v in self.config.items() if k in ("revision", "lora_dropout", "fan_in_fan_out", "bias")}
        keep.update(shared_peft_fields([self]))  # task_type / auto_mapping, when well-formed
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
                if "method" in self.metadata and "README.md" not in (extra_files or {}):  # a merge's provenance
                    (tmp / "README.md").write_text(model_card({**self.metadata, "output": "adapter"}))
        return Path(path)


# adapter_config fields that tell AutoPeftModel* which model class to load: PEFT writes task_type
# (e.g. CAUSAL_LM), or, when it is None, auto_mapping {base_model_class, parent_library}
PEFT_LOAD_FIELDS = ("task_type", "auto_mapping")


def shared_peft_fields(adapters: Iterable["Adapter"]) -> dict:
    """The PEFT_LOAD_FIELDS that every adapter's config gives with the same value, so that a merge
    of CAUSAL_LM adapters is a CAUSAL_LM adapter (AutoPeftModelForCausalLM loads it). A field one
    input lacks, or on which inputs differ, is left out: which would be right is a guess."""
    adapters = list(adapters)
    out = {}
    for key in PEFT_LOAD_FIELDS:
        values = [a.config.get(key) for a in adapters]
        first = values[0] if values else None
        if first is None or any(v != first for v in values):
            continue
        if key == "task_type" and isinstance(first, str):
            out[key] = first
        elif key == "auto_mapping" and isinstance(first, dict) and all(
                isinstance(first.get(k), str) for k in ("base_model_class", "parent_library")):
            out[key] = {"base_model_class": first["base_model_class"], "parent_library": first["parent_library"]}
    return out


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _short(text: str) -> str:
    """A key or module name from a file, fit for a one-line message: control characters escaped,
    cut to about 80 characters."""
    text = text if text.isprintable() else repr(text)[1:-1]
    return text if len(text) <= validate.LIMIT else text[: validate.LIMIT - 3] + "..."


def _open_header(path: Path) -> tuple[dict[str, tuple], dict[str, str], dict]:
    """Shapes and dtypes of every tensor, and the metadata, from the safetensors header alone."""
    regular_file(path, "adapter weights")  # before safe_open: a FIFO would block it forever
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes, dtypes = {}, {}
            for k in f.keys():
                piece = f.get_slice(k)
                shapes[k], dtypes[k] = tuple(piece.get_shape()), piece.get_dtype()
            return shapes, dtypes, f.metadata() or {}
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise AdapterMergeError(f"{path}: not a readable safetensors file ({validate.quote(str(exc))[1:-1]})") from None


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
            raise AdapterMergeError(f"adapter {name}: cannot read tensor {_short(key)} from {path} ({validate.quote(str(exc))[1:-1]})") from None

    return read


def _group_keys(path: Path, shapes: dict[str, tuple], dtypes: dict[str, str]) -> dict[str, dict]:
    modules: dict[str, dict] = {}
    for key in shapes:
        bad = next((u for u in _UNSUPPORTED if u in key), None)
        if bad:
            raise AdapterMergeError(f"{path}: tensor {_short(key)} is a {bad} tensor; only LoRA/DoRA on linear layers can be merged")
        m = _KEY.match(key)
        if not m:
            raise AdapterMergeError(f"{path}: tensor {_short(key)} is not a LoRA tensor (expected ...lora_A.weight, ...lora_B.weight or ...lora_magnitude_vector)")
        if dtypes[key] not in FLOAT_DTYPES:
            raise AdapterMergeError(f"{path}: tensor {_short(key)} has dtype {_short(dtypes[key])}; LoRA tensors must be floating point "
                                    f"({', '.join(FLOAT_DTYPES)})")
        if len(m.group("module")) > MAX_NAME:
            raise AdapterMergeError(f"{path}: tensor {_short(key)} names a module of {len(m.group('module'))} characters; "
                                    f"module names are at most {MAX_NAME}")
        slot = m.group("ab")[-1] if m.group("ab") else "magnitude"
        entry = modules.setdefault(m.group("module"), {})
        if slot in entry:
            raise AdapterMergeError(f"{path}: module {_short(m.group('module'))} has two {slot} tensors ({_short(entry[slot])}, {_short(key)}); "
                                    "multi-adapter files are not supported")
        entry[slot] = key
    if not modules:
        raise AdapterMergeError(f"{path}: holds no LoRA tensors")
    return modules


def _module_specs(path: Path, config_path: Path, shapes: dict, grouped: dict, config: dict) -> dict[str, ModuleSpec]:
    rslora = config["use_rslora"]
    specs = {}
    for module in sorted(grouped):
        keys = grouped[module]
        where = f"{path}: module {_short(module)}"
        if "A" not in keys or "B" not in keys:
            raise AdapterMergeError(f"{where} has lora_{'A' if 'B' in keys else 'B'} missing")
        a, b = shapes[keys["A"]], shapes[keys["B"]]
        if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
            raise AdapterMergeError(f"{where} has lora_A {a} and lora_B {b}; expected A [r, in] and B [out, r]")
        if 0 in a or 0 in b:
            # rank 0 would divide alpha by zero; an empty in or out adapts no weight
            raise AdapterMergeError(f"{where} has lora_A {a} and lora_B {b}; a LoRA needs rank >= 1 and non-empty weights")
        mag = keys.get("magnitude")
        if mag is not None and shapes[mag] != (b[0],):
            raise AdapterMergeError(f"{where} lora_magnitude_vector has shape {shapes[mag]}, expected ({b[0]},)")
        rank = a[0]
        expected_rank = resolve_pattern(config["rank_pattern"], module, config["r"] or rank)
        if expected_rank != rank:
            raise AdapterMergeError(f"{where} has rank {rank} but {config_path.name} says r={expected_rank}")
        alpha = resolve_pattern(config["alpha_pattern"], module, config["lora_alpha"])
        specs[module] = ModuleSpec(module, rank, alpha, module_scale(alpha, rank, rslora), (b[0], a[1]), {**keys, "magnitude": mag})
    return specs


# Bounds that keep PEFT's pattern match fast on hostile input: backtracking over a name of n
# characters costs up to n ** (repeats + 1), and nested repeats cost 2 ** n.
MAX_NAME = 300  # characters of a module name (real ones are under 150)
MAX_REPEATS = 2  # unbounded repeats (*, +, {n,}) in one pattern key


def _regex_keys(patterns: dict, where: str) -> None:
    """Each key of rank_pattern / alpha_pattern compiles as the regex PEFT builds from it, and is
    cheap to match: no repeat inside a repeat, no alternation inside a repeat (`(a+)+`, `(ab|a)*`)
    and at most MAX_REPEATS repeats. A failed match of the others backtracks for exponential or
    high-polynomial time, which would hang the load on a hostile config."""
    for key in patterns:
        try:
            re.compile(rf"(.*\.)?({key})$")
            slow = len(key) > 1000 or _slow_regex(_sre.parse(key))
        except (re.error, RecursionError, OverflowError) as exc:
            reason = "nested too deep" if isinstance(exc, RecursionError) else validate.quote(str(exc))[1:-1]
            raise AdapterMergeError(f"{where}: key {validate.quote(key)} is not a valid regular expression ({reason})") from None
        if slow:
            raise AdapterMergeError(f"{where}: key {validate.quote(key)} could take exponential time to match (a repeat inside a "
                                    f"repeat or alternation, or more than {MAX_REPEATS} repeats): use module names or a simpler pattern")


def _slow_regex(items) -> bool:
    """True when a parsed regex (re's own parser) has a repeat or an alternation inside a repeat
    that can run more than once, or more than MAX_REPEATS such repeats."""
    repeats = 0

    def walk(items, in_repeat: bool) -> bool:
        nonlocal repeats
        for op, av in items:
            name = str(op)
            if name.endswith("REPEAT"):  # MAX_REPEAT, MIN_REPEAT, POSSESSIVE_REPEAT: (min, max, body)
                many = av[1] > 1
                repeats += many
                if in_repeat or repeats > MAX_REPEATS or walk(av[2], in_repeat or many):
                    return True
            elif name == "BRANCH":
                if in_repeat or any(walk(b, in_repeat) for b in av[1]):
                    return True
            elif name == "SUBPATTERN" and walk(av[3], in_repeat):
                return True
            elif name in ("ASSERT", "ASSERT_NOT") and walk(av[1], in_repeat):  # (direction, body)
                return True
            elif name == "ATOMIC_GROUP" and walk(av, in_repeat):
                return True
            elif name == "GROUPREF_EXISTS" and any(b is not None and walk(b, in_repeat) for b in av[1:]):
                return True
        return False

    return walk(items, False)


def _checked_config(path: Path, config: dict) -> dict:
    """The adapter_config fields this package reads, type-checked, with defaults filled in (other
    fields are kept as they are). `lora_alpha` may be missing here: a bare file's alpha can come
    from elsewhere, and load_adapter requires one in the end."""
    def where(key):
        return f"{path}: {key}"

    out = dict(config)
    out["peft_type"] = validate.string(config.get("peft_type", "LORA"), where("peft_type"), optional=True) or "LORA"
    out["r"] = validate.integer(config.get("r"), where("r"), minimum=1, optional=True)
    if config.get("lora_alpha") is not None:
        out["lora_alpha"] = check_alpha(config["lora_alpha"], where("lora_alpha"))
    for key in ("use_rslora", "use_dora", "fan_in_fan_out", "lora_bias"):
        out[key] = bool(validate.boolean(config.get(key), where(key), optional=True))
    rank_pattern = validate.mapping(config.get("rank_pattern"), where("rank_pattern"), optional=True)
    alpha_pattern = validate.mapping(config.get("alpha_pattern"), where("alpha_pattern"), optional=True)
    _regex_keys(rank_pattern, where("rank_pattern"))
    _regex_keys(alpha_pattern, where("alpha_pattern"))
    out["rank_pattern"] = {k: validate.integer(v, where(f"rank_pattern[{validate.quote(k)}]"), minimum=1) for k, v in rank_pattern.items()}
    out["alpha_pattern"] = {k: check_alpha(v, where(f"alpha_pattern[{validate.quote(k)}]")) for k, v in alpha_pattern.items()}
    targets = config.get("target_modules")
    if not (targets is None or isinstance(targets, str) or (isinstance(targets, list) and all(isinstance(t, str) for t in targets))):
        raise AdapterMergeError(f"{where('target_modules')} must be a string or a list of strings, got {validate.quote(targets)}")
    out["base_model_name_or_path"] = validate.string(config.get("base_model_name_or_path"), where("base_model_name_or_path"), optional=True)
    return out


def _check_config(path: Path, config: dict) -> None:
    if config["peft_type"] != "LORA":
        raise AdapterMergeError(f"{path}: peft_type is {validate.quote(config['peft_type'])}; only LORA adapters can be merged")
    if config["fan_in_fan_out"]:
        raise AdapterMergeError(f"{path}: fan_in_fan_out=true (Conv1D layers) is not supported")
    if config["lora_bias"]:
        raise AdapterMergeError(f"{path}: lora_bias=true is not supported")
    if config.get("lora_alpha") is None:
        raise AdapterMergeError(f"{path}: adapter_config has no lora_alpha")


def _config_belongs(config: dict, grouped: dict, shapes: dict) -> bool:
    """A config beside a bare file is used only if its ranks and targets fit the file's tensors."""
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    for module, keys in grouped.items():
        if "A" not in keys or len(shapes[keys["A"]]) != 2:
            return False
        rank = shapes[keys["A"]][0]
        if resolve_pattern(config["rank_pattern"], module, config["r"]) != rank:
            return False
        if isinstance(config.get("target_modules"), list) and not any(module == t or module.endswith("." + t) for t in targets):
            return False
    return True


def _alpha_from_metadata(path: Path, meta: dict) -> float | None:
    """lora_alpha from a bare file's safetensors metadata (all values there are strings), checked
    like any other alpha; an entry that is not a number at all is taken as unrelated and skipped."""
    for key in ("lora_alpha", "alpha", "ss_network_alpha"):
        if key in meta:
            try:
                value = float(meta[key])
            except (TypeError, ValueError):
                continue
            return check_alpha(value, f"{path}: metadata {key}")
    if "adapter_config" in meta:
        try:
            embedded = json.loads(meta["adapter_config"])
        except (TypeError, ValueError, RecursionError):
            return None
        if isinstance(embedded, dict) and embedded.get("lora_alpha") is not None:
            return check_alpha(embedded["lora_alpha"], f"{path}: metadata adapter_config.lora_alpha")
    return None


def _present(path: Path) -> bool:
    """Something is there (a dangling or looping symlink counts: regular_file names it)."""
    return path.exists() or path.is_symlink()


def load_adapter(path: str | Path, *, alpha: float | None = None, name: str | None = None) -> Adapter:
    """Open an adapter lazily: a PEFT folder or a bare `.safetensors` file.

    For a bare file, the `adapter_config.json` beside it is used when the file is
    `adapter_model.safetensors` or the config's ranks and target modules fit the file's tensors.
    Otherwise ranks and targets come from the tensors and alpha from the file's metadata
    (`lora_alpha`/`alpha`), else from the `alpha` argument (`--alpha`).
    """
    path = Path(path).expanduser()
    if not _present(path):
        raise AdapterMergeError(f"{path}: no such file or folder")
    if path.is_dir():
        weights, config_path = path / WEIGHTS_NAME, path / CONFIG_NAME
        if not _present(config_path):
            if (path / "config.json").is_file():
                # a full model, e.g. the output of --output model: its adaptermerge.json says what was merged
                raise AdapterMergeError(f"{path}: a full model folder (config.json), not a LoRA adapter: expected a PEFT adapter folder"
                                        + ("; its adaptermerge.json records the merge that made it" if (path / "adaptermerge.json").is_file() else ""))
            raise AdapterMergeError(f"{path}: no {CONFIG_NAME} (expected a PEFT adapter folder, or pass the .safetensors file itself)")
        if not _present(weights):
            has_bin = (path / "adapter_model.bin").is_file()
            hint = " (only adapter_model.bin: pickled weights are never read; convert them to safetensors)" if has_bin else ""
            raise AdapterMergeError(f"{path}: no {WEIGHTS_NAME}{hint}")
    elif path.suffix == ".safetensors":
        weights, config_path = path, path.parent / CONFIG_NAME
    else:
        raise AdapterMergeError(f"{path}: expected a PEFT adapter folder or a .safetensors file")
    if alpha is not None:
        alpha = check_alpha(alpha, f"{weights}: --alpha")

    shapes, dtypes, meta = _open_header(weights)
    grouped = _group_keys(weights, shapes, dtypes)
    name = name or (path.name if path.is_dir() else path.stem)

    config = None
    # a bare file's neighbour is read only when it is a regular file: a FIFO there is not opened
    if path.is_dir() or config_path.is_file():
        candidate = _checked_config(config_path, read_json_object(config_path, "adapter config"))
        if path.is_dir() or weights.name == WEIGHTS_NAME or _config_belongs(candidate, grouped, shapes):
            config = candidate
        else:
            log.info("%s: ignoring %s beside it (its ranks/targets do not fit the file)", weights, config_path)
    if config is None:
        file_alpha = _alpha_from_metadata(weights, meta)
        if file_alpha is None and alpha is None:
            raise AdapterMergeError(
                f"{weights}: no adapter_config.json belongs to it and its metadata has no lora_alpha: pass --alpha (one value, or one per input)"
            )
        config_path = weights
        config = _checked_config(weights, {"peft_type": "LORA", "lora_alpha": alpha if alpha is not None else file_alpha,
                                           "base_model_name_or_path": meta.get("base_model_name_or_path")})
    elif alpha is not None:
        log.warning("%s: --alpha ignored: its adapter_config.json gives lora_alpha", weights)
    _check_config(config_path, config)

    specs = _module_specs(weights, config_path, shapes, grouped, config)
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
        recorded = read_json_object(marker, "base marker").get("id")
        name = recorded if isinstance(recorded, str) else name
    return str(name).rstrip("/").split("/")[-1].lower()
