"""The recipe: a YAML file that says which adapters to merge, how, how to judge them and what to keep.

    name: manga-assist
    base: null                       # HF id or folder; null: the embedded SmolLM2-135M-Instruct
    seed: 0                          # or `seeds: [0, 1, 2]`: choose on the worst seed (below); not both
    adapters:                        # at least two; order = the order of `weights`
      domain: {preset: domain}       # trained from a built-in preset (cached by its settings)
      faq: {path: faq.safetensors, alpha: 16, task: faq}   # given: a PEFT folder or a bare .safetensors
      # with `seeds:`, a given adapter names one file per seed: {paths: {0: faq-s0/, 1: faq-s1/}, task: faq}
    candidates:                      # `all` (every registered method at its defaults) or a list:
      - ties                         #   a method at its defaults
      - {method: ties, name: ties_dense, params: {density: 0.5}, weights: [1, 2]}
      - {method: regmean, heal: 40}  #   then 40 steps of distillation (row regmean+heal40; uses training compute)
    baselines: [peft_ties, peft_ties_svd, mergekit_ties, sequential_training]   # or all / none
    gates:                           # the gates file format (evalsuite/gates.py), plus `dev:` per user task
      tasks:
        domain: {metric: exact_match, min: 0.75}
        faq: {data: faq-eval.jsonl, dev: faq-dev.jsonl, metric: exact_match, min: 0.5}
        mmlu: {metric: acc, max_drop: 0.01}
      retention: {min: 0.95}
    eval: {docs: {domain: 8}, mmlu_limit: 3, mmlu_subjects: null, batch_size: 32, dtype: auto}
    select: {split: dev, sweep: true, weight_search: false}
    output: {quantize: nf4}          # the winner as an adapter, plus a re-quantized model (nf4, int8 or null)
    quick: {step_fraction: 0.1, anchor_unique: 16, docs: {domain: 8}, mmlu_limit: 1, mmlu_subjects: 19,
            params: {regmean: {calib_size: 16}}}

`seeds:` (two or more distinct seeds, `seed_list`): the adapters are trained (or taken) at every
seed, every candidate is merged and scored on the dev split at each, and the candidate whose worst
seed ranks best wins (recipe/select.py, `choose_across_seeds`); one seed is a plain run at that seed.

Relative paths are taken from the recipe file's folder. Loading is strict: an unknown key, a value
of the wrong type (a string is never a bool or a number), a non-finite number, an unknown method,
task, metric or preset each raise one AdapterMergeError naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..engine import make_params
from .. import validate
from ..errors import AdapterMergeError
from ..fileio import read_yaml
from ..evalsuite import gates as gates_mod
from ..evalsuite.taskdata import BUILTIN_TASKS
from ..methods import METHODS

MMLU = gates_mod.MMLU
BASELINES = ("peft_ties", "peft_ties_svd", "mergekit_ties", "sequential_training")
SPLITS = ("dev", "eval")
QUANTIZE = ("nf4", "int8")
DTYPES = ("auto", "float32", "bfloat16")
RESERVED = ("base",)  # row names the pipeline uses itself


@dataclass(frozen=True)
class AdapterSpec:
    """One input adapter: trained from a built-in `preset`, or taken from `path`."""

    name: str
    preset: str | None = None
    path: Path | None = None  # a PEFT folder or a bare .safetensors file
    task: str | None = None  # the gate task it was trained for: retention's denominator
    alpha: float | None = None  # a bare .safetensors file without lora_alpha in its metadata
    steps: int | None = None  # training steps instead of the preset's (and of --quick's)
    paths: dict[int, Path] | None = None  # given per training seed (`seeds:`): seed -> a folder or file


@dataclass(frozen=True)
class MergeSpec:
    """One merge the recipe asks for: a registered method with its parameters and weights."""

    name: str
    method: str
    params: dict = field(default_factory=dict)  # the method's Params field names (lambda_, density...)
    weights: tuple[float, ...] | None = None  # None: 1 for every adapter
    heal: int = 0  # post-merge distillation steps (training/heal.py): a candidate that uses training compute


@dataclass(frozen=True)
class EvalOptions:
    docs: dict[str, int] | None = None  # documents per task (None: the whole split)
    mmlu_limit: int = 3  # MMLU questions per subject
    mmlu_subjects: int | None = None  # that many subjects, evenly spaced (None: all 57)
    batch_size: int = 32
    dtype: str = "auto"


@dataclass(frozen=True)
class QuickOptions:
    """What --quick changes: a short run for a smoke test or CI."""

    step_fraction: float = 0.1  # of the presets' training steps
    anchor_unique: int | None = 16  # distinct anchor prompts of a quick training run
    docs: dict[str, int] | None = None
    mmlu_limit: int = 1
    mmlu_subjects: int | None = None
    params: dict[str, dict] = field(default_factory=dict)  # method -> parameters set in quick runs


@dataclass(frozen=True)
class SelectOptions:
    """How the winner is chosen (recipe/select.py)."""

    split: str = "dev"  # the sweep's points are scored and chosen there (eval: on the reported split)
    sweep: bool = True  # when no candidate passes every gate, try a few more points
    weight_search: bool = False  # a proxy search of task-arithmetic weights first (recipe/weights.py)


@dataclass(frozen=True)
class OutputOptions:
    quantize: str | None = "nf4"  # the winner also as a re-quantized full model (None: adapter only)


@dataclass(frozen=True)
class Recipe:
    name: str
    adapters: tuple[AdapterSpec, ...]
    candidates: tuple[MergeSpec, ...]
    gates: gates_mod.GateConfig
    dev_data: dict[str, Path] = field(default_factory=dict)  # user task -> its dev-split JSONL
    baselines: tuple[str, ...] = ()
    base: str | None = None
    seed: int = 0  # the run's seed; with `seeds`, their first
    seeds: tuple[int, ...] | None = None  # two or more: a run at each, chosen on the worst (None: `seed` alone)
    description: str = ""
    eval: EvalOptions = field(default_factory=EvalOptions)
    select: SelectOptions = field(default_factory=SelectOptions)
    output: OutputOptions = field(default_factory=OutputOptions)
    quick: QuickOptions = field(default_factory=QuickOptions)
    path: Path | None = None  # the file it was read from

    @property
    def tasks(self) -> list[str]:
        """The gate tasks, in file order (MMLU included when gated)."""
        return list(self.gates.tasks)

    @property
    def user_tasks(self) -> list[str]:
        return [t for t in self.tasks if t in self.gates.user_tasks]

    def headline(self, task: str) -> str:
        """The metric a task's column shows: its first gate's."""
        return self.gates.metric_for(task)

    @property
    def seed_list(self) -> tuple[int, ...]:
        """The training seeds of the run: `seeds`, else `seed` alone."""
        return self.seeds or (self.seed,)

    def at_seeds(self, seeds, where: str = "seeds") -> "Recipe":
        """A copy run at `seeds` (checked as the recipe key is; `where` names the option in errors):
        one seed is a plain run at it. The given adapters must have a file for each (`check_seeds`)."""
        seeds = seed_list(seeds, where)
        recipe = dataclasses.replace(self, seed=seeds[0], seeds=seeds if len(seeds) > 1 else None)
        check_seeds(recipe, where)
        return recipe

    def one_seed(self, seed: int) -> "Recipe":
        """The recipe of the run at `seed`: that seed alone, each given adapter's file for it as its `path`."""
        adapters = tuple(dataclasses.replace(a, path=a.paths[seed], paths=None) if a.paths is not None else a
                         for a in self.adapters)
        return dataclasses.replace(self, seed=seed, seeds=None, adapters=adapters)

    @property
    def given_files(self) -> list[Path]:
        """Every given adapter file or folder, at every seed (the output may never be one of them)."""
        return [p for a in self.adapters for p in ([a.path] if a.path is not None else list((a.paths or {}).values()))]

    def with_overrides(self, **changes) -> "Recipe":
        """A copy with top-level fields replaced (`eval`, `select`... as dicts of their fields)."""
        for key in ("eval", "select", "output", "quick"):
            if isinstance(changes.get(key), dict):
                changes[key] = dataclasses.replace(getattr(self, key), **changes[key])
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------- strict reading

class _Reader:
    """validate's checks with the recipe file's name: each error names the file and the key."""

    def __init__(self, where: str):
        self.where = where

    def at(self, key: str) -> str:
        return f"{self.where}: {key}" if key else self.where

    def fail(self, key: str, message: str) -> AdapterMergeError:
        return AdapterMergeError(f"{self.where}: {key}: {message}")

    def mapping(self, value, key: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
        value = validate.mapping(value, self.at(key), optional=True)
        unknown = [k for k in value if k not in allowed]
        if unknown:  # named as a dotted key, like every other error of a recipe
            name = validate.listing([unknown[0]])
            raise self.fail(f"{key}.{name}" if key else name, f"unknown key: expected one of {', '.join(allowed)}")
        for k in required:
            if k not in value:
                raise self.fail(f"{key}.{k}" if key else k, "missing")
        return value

    def boolean(self, value, key: str) -> bool:
        return validate.boolean(value, self.at(key))

    def integer(self, value, key: str, minimum: int | None = None, optional: bool = False) -> int | None:
        # counts and steps: beyond 2**31 is a typo, and torch takes no larger sizes
        return validate.integer(value, self.at(key), minimum=minimum, maximum=2**31 - 1, optional=optional)

    def number(self, value, key: str, optional: bool = False) -> float | None:
        return validate.number(value, self.at(key), optional=optional)

    def string(self, value, key: str, choices: tuple[str, ...] | None = None, optional: bool = False) -> str | None:
        return validate.string(value, self.at(key), choices=choices, optional=optional)

    def name(self, value, key: str) -> str:
        text = self.string(value, key)
        if not text or "/" in text or text.startswith(".") or "\0" in text:
            raise self.fail(key, f"{validate.quote(text)} is not a usable name (it names folders: no '/', no leading '.')")
        return text

    def path(self, value, key: str, root: Path) -> Path:
        return validate.path(value, self.at(key), root=root)

    def counts(self, value, key: str, tasks: list[str]) -> dict[str, int] | None:
        if value is None:
            return None
        data = self.mapping(value, key, tuple(t for t in tasks if t != MMLU))
        return {str(t): self.integer(n, f"{key}.{t}", minimum=1) for t, n in data.items()}


def _non_finite(data, key: str = "") -> str | None:
    """The key path of the first NaN or infinity anywhere in the parsed YAML (YAML's .nan, .inf)."""
    if isinstance(data, float) and not math.isfinite(data):
        return key or "(top level)"
    if isinstance(data, dict):
        for k, v in data.items():
            found = _non_finite(v, f"{key}.{k}" if key else str(k))
            if found:
                return found
    if isinstance(data, list):
        for i, v in enumerate(data):
            found = _non_finite(v, f"{key}[{i}]")
            if found:
                return found
    return None


def seed_list(value, where: str) -> tuple[int, ...]:
    """Training seeds (the `seeds:` key, the --seeds option): a non-empty list of distinct
    integers in 0..2**63-1, in the order given."""
    if not isinstance(value, (list, tuple)) or not value:
        raise AdapterMergeError(f"{where}: expected a non-empty list of seeds such as [0, 1, 2], got {validate.quote(value)}")
    seeds = tuple(validate.seed(s, f"{where}[{i}]") for i, s in enumerate(value))
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise AdapterMergeError(f"{where}: seed {repeated[0]} is given twice: expected distinct seeds")
    return seeds


def check_seeds(recipe: Recipe, where: str) -> None:
    """Every given adapter has a file at each of the run's seeds: a `path:` serves one seed only
    (a file cannot be retrained at another), `paths:` must name every seed. `where`: the recipe
    file, or the option that set the seeds."""
    if recipe.seeds and recipe.select.weight_search:  # its proxy scores one seed's adapters
        raise AdapterMergeError(f"{where}: select.weight_search runs at one seed: not with seeds {', '.join(map(str, recipe.seeds))}")
    for spec in recipe.adapters:
        if spec.paths is not None:
            missing = [s for s in recipe.seed_list if s not in spec.paths]
            if missing:
                raise AdapterMergeError(f"{where}: adapters.{spec.name}.paths: no file for seed {missing[0]} "
                                        f"(it has seeds {', '.join(map(str, spec.paths))})")
        elif spec.path is not None and recipe.seeds:
            raise AdapterMergeError(f"{where}: adapters.{spec.name}.path: a given file cannot be retrained at seeds "
                                    f"{', '.join(map(str, recipe.seeds))}: give one file per seed as "
                                    f"`paths: {{{recipe.seeds[0]}: FILE, ...}}`, or train it from a preset")


_TOP = ("name", "description", "base", "seed", "seeds", "adapters", "candidates", "baselines", "gates", "eval", "select", "output", "quick")


def load_recipe(path: str | Path) -> Recipe:
    """Read and check a recipe file (yaml.safe_load only)."""
    path = Path(path).expanduser()
    data = validate.document(read_yaml(path, "recipe"), str(path))
    return parse_recipe(data, where=str(path), root=path.parent.resolve(), source=path)


def parse_recipe(data, *, where: str = "recipe", root: Path | None = None, source: Path | None = None) -> Recipe:
    """A Recipe from the parsed YAML mapping; `where` names the file in errors, `root` resolves paths."""
    r = _Reader(where)
    root = root or Path.cwd()
    bad = _non_finite(data)
    if bad:
        raise r.fail(bad, "expected a finite number, got a NaN or an infinity")
    data = r.mapping(data, "", _TOP, required=("adapters", "candidates", "gates"))
    name = r.name(data.get("name", source.stem if source else "recipe"), "name")
    description = r.string(data.get("description", ""), "description")
    base = r.string(data.get("base"), "base", optional=True)
    if base is not None and not Path(base).is_absolute() and validate.probe(root / base) is not None:
        base = str(root / base)
    seed = validate.seed(data.get("seed", 0), r.at("seed"))
    seeds = None
    if "seeds" in data:
        if "seed" in data:  # which one a run uses would be a guess
            raise r.fail("seeds", "give `seed:` (one run) or `seeds:` (a run at each, chosen on the worst), not both")
        seeds = seed_list(data["seeds"], r.at("seeds"))
        seed, seeds = seeds[0], (seeds if len(seeds) > 1 else None)

    gates, dev_data = _gates(r, data["gates"], root)
    tasks = list(gates.tasks)
    adapters = _adapters(r, data["adapters"], root, tasks)
    candidates = _candidates(r, data["candidates"], len(adapters))
    baselines = _baselines(r, data.get("baselines", "none"))
    taken = {"base", *(a.name for a in adapters)}
    for c in (*candidates, *(MergeSpec(b, "") for b in baselines)):
        if c.name in taken:
            raise r.fail("candidates", f"the name {validate.quote(c.name)} is used twice (rows are named by adapters, candidates and baselines)")
        taken.add(c.name)

    ev = r.mapping(data.get("eval"), "eval", ("docs", "mmlu_limit", "mmlu_subjects", "batch_size", "dtype"))
    eval_opts = EvalOptions(
        docs=r.counts(ev.get("docs"), "eval.docs", tasks),
        mmlu_limit=r.integer(ev.get("mmlu_limit", EvalOptions.mmlu_limit), "eval.mmlu_limit", minimum=1),
        mmlu_subjects=r.integer(ev.get("mmlu_subjects"), "eval.mmlu_subjects", minimum=1, optional=True),
        batch_size=r.integer(ev.get("batch_size", EvalOptions.batch_size), "eval.batch_size", minimum=1),
        dtype=r.string(ev.get("dtype", "auto"), "eval.dtype", DTYPES))

    sel = r.mapping(data.get("select"), "select", ("split", "sweep", "weight_search"))
    select = SelectOptions(split=r.string(sel.get("split", "dev"), "select.split", SPLITS),
                           sweep=r.boolean(sel.get("sweep", True), "select.sweep"),
                           weight_search=r.boolean(sel.get("weight_search", False), "select.weight_search"))
    if select.weight_search:
        given = [a.name for a in adapters if a.preset is None]
        if given:  # its proxy scores the presets' training records
            raise r.fail("select.weight_search", f"needs adapters trained from built-in presets; {', '.join(given)} are given files")

    out = r.mapping(data.get("output"), "output", ("quantize",))
    output = OutputOptions(quantize=r.string(out.get("quantize", "nf4"), "output.quantize", QUANTIZE, optional=True))

    q = r.mapping(data.get("quick"), "quick", ("step_fraction", "anchor_unique", "docs", "mmlu_limit", "mmlu_subjects", "params"))
    fraction = r.number(q.get("step_fraction", QuickOptions.step_fraction), "quick.step_fraction")
    if not 0 < fraction <= 1:
        raise r.fail("quick.step_fraction", f"must be in (0, 1], got {fraction}")
    quick = QuickOptions(
        step_fraction=fraction,
        anchor_unique=r.integer(q.get("anchor_unique", QuickOptions.anchor_unique), "quick.anchor_unique", minimum=1, optional=True),
        docs=r.counts(q.get("docs"), "quick.docs", tasks),
        mmlu_limit=r.integer(q.get("mmlu_limit", QuickOptions.mmlu_limit), "quick.mmlu_limit", minimum=1),
        mmlu_subjects=r.integer(q.get("mmlu_subjects"), "quick.mmlu_subjects", minimum=1, optional=True),
        params=_quick_params(r, q.get("params")))
    recipe = Recipe(name=name, description=description, base=base, seed=seed, seeds=seeds, adapters=adapters, candidates=candidates,
                    baselines=baselines, gates=gates, dev_data=dev_data, eval=eval_opts, select=select, output=output,
                    quick=quick, path=source.resolve() if source else None)
    check_seeds(recipe, where)
    return recipe


def _gates(r: _Reader, value, root: Path) -> tuple[gates_mod.GateConfig, dict[str, Path]]:
    """The gates section through evalsuite's own parser, after taking out each user task's `dev:`."""
    value = r.mapping(value, "gates", ("tasks", "retention"), required=("tasks",))
    tasks = value.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        raise r.fail("gates.tasks", "expected a mapping of task names to gate settings, e.g. {domain: {metric: exact_match, min: 0.75}}")
    dev_data, stripped = {}, {}
    for task, spec in tasks.items():
        key = f"gates.tasks.{task}"
        if not isinstance(task, str):
            raise r.fail(key, "task names are strings")
        if not isinstance(spec, dict):
            raise r.fail(key, f"expected a mapping such as {{metric: exact_match, min: 0.75}}, got {validate.quote(spec)}")
        spec = dict(spec)
        if "dev" in spec:
            if "data" not in spec:
                raise r.fail(f"{key}.dev", "a built-in task has its own dev split; `dev:` is for user tasks (with `data:`)")
            dev_data[task] = r.path(spec.pop("dev"), f"{key}.dev", root)
        if "data" in spec:
            r.string(spec["data"], f"{key}.data")
        if "metric" in spec:
            r.string(spec["metric"], f"{key}.metric")
        if "reference" in spec:
            r.string(spec["reference"], f"{key}.reference")
        if "max_gen_toks" in spec:
            r.integer(spec["max_gen_toks"], f"{key}.max_gen_toks", minimum=1)
        for k, v in spec.items():  # thresholds: numbers (evalsuite checks the key names)
            if k in ("min", "max_drop") or str(k).endswith("_min"):
                r.number(v, f"{key}.{k}")
        stripped[task] = spec
    if "retention" in value and value["retention"] is not None:
        ret = r.mapping(value["retention"], "gates.retention", ("min", "adapters"), required=("min",))
        r.number(ret["min"], "gates.retention.min")
    try:
        gates = gates_mod.parse_gates({**value, "tasks": stripped}, f"{r.where}: gates", root=root)
    except AdapterMergeError as exc:  # its message names the file and the key already
        raise AdapterMergeError(str(exc)) from None
    for task, spec in gates.user_tasks.items():
        if validate.probe(spec["data"]) != "file":
            raise r.fail(f"gates.tasks.{task}.data", f"{spec['data']} does not exist")
    for task, dev in dev_data.items():
        if validate.probe(dev) != "file":
            raise r.fail(f"gates.tasks.{task}.dev", f"{dev} does not exist")
    return gates, dev_data


def _adapters(r: _Reader, value, root: Path, tasks: list[str]) -> tuple[AdapterSpec, ...]:
    if not isinstance(value, dict) or len(value) < 2:
        raise r.fail("adapters", "expected a mapping of at least two adapters, e.g. {domain: {preset: domain}, faq: {path: faq/}}")
    out = []
    for name, spec in value.items():
        key = f"adapters.{name}"
        name = r.name(name, key)
        if name in RESERVED:
            raise r.fail(key, f"{validate.quote(name)} is reserved for the base model's row")
        spec = r.mapping(spec, key, ("preset", "path", "paths", "task", "alpha", "steps"))
        if sum(k in spec for k in ("preset", "path", "paths")) != 1:
            raise r.fail(key, "expected exactly one of `preset:` (train it), `path:` (a PEFT folder or .safetensors file) "
                              "or `paths:` (one per seed)")
        preset = r.string(spec.get("preset"), f"{key}.preset", BUILTIN_TASKS, optional=True)
        path, paths = None, None
        if "path" in spec:
            path = _given(r, spec["path"], f"{key}.path", root)
        if "paths" in spec:
            given = spec["paths"]
            if not isinstance(given, dict) or not given:
                raise r.fail(f"{key}.paths", "expected a mapping of seeds to files, e.g. {0: faq-s0/, 1: faq-s1/}")
            paths = {validate.seed(s, r.at(f"{key}.paths.{validate.listing([s])}")): _given(r, p, f"{key}.paths.{s}", root)
                     for s, p in given.items()}
        if path is not None or paths is not None:
            if "steps" in spec:
                raise r.fail(f"{key}.steps", "only an adapter trained from a preset has training steps")
        elif "alpha" in spec:
            raise r.fail(f"{key}.alpha", "only a given .safetensors file may need its alpha")
        task = r.string(spec.get("task", preset if preset else (name if name in tasks else None)), f"{key}.task", optional=True)
        if task is not None and (task not in tasks or task == MMLU):
            raise r.fail(f"{key}.task", f"{validate.quote(task)} is not a task of the gates: expected one of {', '.join(t for t in tasks if t != MMLU)}")
        alpha = r.number(spec.get("alpha"), f"{key}.alpha", optional=True)
        if alpha is not None and alpha <= 0:
            raise r.fail(f"{key}.alpha", f"must be positive, got {alpha}")
        out.append(AdapterSpec(name, preset, path, task, alpha, r.integer(spec.get("steps"), f"{key}.steps", minimum=1, optional=True),
                               paths))
    return tuple(out)


def _given(r: _Reader, value, key: str, root: Path) -> Path:
    """A given adapter's file: an existing PEFT folder or .safetensors file."""
    path = r.path(value, key, root)
    if validate.probe(path) is None:
        raise r.fail(key, f"{path} does not exist")
    if not (validate.probe(path) == "folder" or path.suffix == ".safetensors"):
        raise r.fail(key, f"{path}: expected a PEFT adapter folder or a .safetensors file")
    return path


def check_params(method: str, params, key: str, r: _Reader) -> dict:
    """The method's parameters, each of its default's type, under the Params field names."""
    params = validate.mapping(params, r.at(key), optional=True)
    fields = {f.name for f in dataclasses.fields(METHODS.get(method).Params)}
    names = {}
    for k in params:
        name = k if k in fields else f"{k}_" if f"{k}_" in fields else None
        if name is None:
            known = ", ".join(n.rstrip("_") for n in fields) or "none"
            raise r.fail(f"{key}.{validate.listing([k])}", f"method {method} has no such parameter (its parameters: {known})")
        names[k] = name
    # the types and the method's own range checks: engine.make_params, strict about strings
    typed = make_params(METHODS.get(method), params, where=r.at(key), strict=True)
    return {name: getattr(typed, name) for name in names.values()}


def _method(r: _Reader, value, key: str) -> str:
    method = r.string(value, key)
    if method not in METHODS:
        raise r.fail(key, f"unknown method {validate.quote(method)}: expected one of {', '.join(METHODS)}")
    return method


def _candidates(r: _Reader, value, n_adapters: int) -> tuple[MergeSpec, ...]:
    if value == "all":
        return tuple(MergeSpec(m, m) for m in METHODS)
    if not isinstance(value, list) or not value:
        raise r.fail("candidates", f"expected `all` or a list of methods, got {validate.quote(value)}")
    out = []
    for i, item in enumerate(value):
        key = f"candidates[{i}]"
        if isinstance(item, str):
            method = _method(r, item, key)
            out.append(MergeSpec(method, method))
            continue
        item = r.mapping(item, key, ("method", "name", "params", "weights", "heal"), required=("method",))
        method = _method(r, item["method"], f"{key}.method")
        heal = validate.integer(item.get("heal", 0), r.at(f"{key}.heal"), minimum=0, maximum=2**31 - 1)
        weights = item.get("weights")
        if weights is not None:
            if not isinstance(weights, list) or len(weights) != n_adapters:
                raise r.fail(f"{key}.weights", f"expected a list of {n_adapters} numbers (one per adapter), got {validate.quote(weights)}")
            weights = tuple(r.number(w, f"{key}.weights[{j}]") for j, w in enumerate(weights))
        default_name = f"{method}+heal{heal}" if heal else method
        out.append(MergeSpec(r.name(item.get("name", default_name), f"{key}.name"), method,
                             check_params(method, item.get("params"), f"{key}.params", r), weights, heal))
    return tuple(out)


def _baselines(r: _Reader, value) -> tuple[str, ...]:
    if value == "all":
        return BASELINES
    if value in ("none", None):
        return ()
    if not isinstance(value, list):
        raise r.fail("baselines", f"expected all, none or a list among {', '.join(BASELINES)}, got {validate.quote(value)}")
    for i, b in enumerate(value):
        r.string(b, f"baselines[{i}]", BASELINES)
    return tuple(value)


def _quick_params(r: _Reader, value) -> dict[str, dict]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise r.fail("quick.params", f"expected a mapping of methods to parameters, got {validate.quote(value)}")
    return {_method(r, m, f"quick.params.{m}"): check_params(m, p, f"quick.params.{m}", r) for m, p in value.items()}


__all__ = ["AdapterSpec", "BASELINES", "BUILTIN_TASKS", "EvalOptions", "MergeSpec", "OutputOptions", "QuickOptions",
           "Recipe", "SelectOptions", "check_seeds", "load_recipe", "parse_recipe", "seed_list"]
