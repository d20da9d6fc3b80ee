"""Gates: the pass/fail rules of a gates YAML file, checked against evaluated scores.

    tasks:
      domain:     {metric: exact_match, min: 0.75}
      structured: {metric: schema_valid, min: 0.85}
      safety:     {metric: refusal_rate, min: 0.90, benign_answer_rate_min: 0.90}
      mmlu:       {metric: acc, max_drop: 0.01}            # against the base (or `reference: NAME`)
      faq:        {data: faq.jsonl, metric: exact_match, min: 0.5}   # a user task
    retention:    {min: 0.95}     # (merged - base) / (single-task adapter - base), per task

Kinds: `min` (score >= threshold), `max_drop` (reference - score <= threshold, on the same items,
reported with the paired standard error), `retention` (the TIES paper's normalized accuracy,
for every task with a single-task adapter among the candidates). A gate whose evaluation errored,
is missing, or is undefined (NaN, a single adapter that does not beat the base) fails: gates fail closed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from .. import validate
from ..errors import AdapterMergeError
from ..fileio import read_yaml
from . import stats
from .metrics import METRICS
from .taskdata import BUILTIN_TASKS, METRIC_SCORER

MMLU = "mmlu"
MMLU_METRICS = ("acc", "acc_norm")
DEFAULT_METRIC = {**{t: m[0] for t, m in METRICS.items()}, MMLU: "acc"}
_TASK_KEYS = {"metric", "min", "max_drop", "reference", "data", "max_gen_toks"}


@dataclass(frozen=True)
class Gate:
    task: str
    metric: str
    kind: str  # "min" | "max_drop" | "retention"
    threshold: float
    reference: str | None = None  # max_drop: the candidate compared with (None: the base)

    def describe(self) -> str:
        if self.kind == "min":
            return f"{self.task}.{self.metric} >= {self.threshold:g}"
        if self.kind == "max_drop":
            return f"{self.task}.{self.metric} drop vs {self.reference or 'base'} <= {self.threshold:g}"
        return f"{self.task}.{self.metric} retention >= {self.threshold:g}"

    def to_dict(self) -> dict:
        return {"task": self.task, "metric": self.metric, "kind": self.kind, "threshold": self.threshold,
                "reference": self.reference, "rule": self.describe()}


@dataclass
class GateResult:
    gate: Gate
    candidate: str
    passed: bool
    value: float | None  # min: the score; max_drop: the drop; retention: the ratio
    detail: str = ""
    paired: dict | None = None

    def to_dict(self) -> dict:
        return {**self.gate.to_dict(), "candidate": self.candidate, "passed": self.passed, "value": self.value,
                "detail": self.detail, "paired": self.paired}


@dataclass
class GateConfig:
    gates: list[Gate] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)  # every task named, in file order
    user_tasks: dict[str, dict] = field(default_factory=dict)  # name -> {"data", "metric", "max_gen_toks"}
    retention_min: float | None = None
    retention_adapters: dict[str, str] = field(default_factory=dict)  # task -> candidate (name or path)

    def metric_for(self, task: str) -> str:
        """The task's headline metric: its first gate's, else the task's default."""
        for gate in self.gates:
            if gate.task == task and gate.kind != "retention":
                return gate.metric
        if task in self.user_tasks:
            return self.user_tasks[task]["metric"]
        return DEFAULT_METRIC.get(task, "exact_match")


def task_metrics(task: str, user_tasks: dict[str, dict] | None = None) -> tuple[str, ...]:
    if task == MMLU:
        return MMLU_METRICS
    if task in METRICS:
        return METRICS[task]
    if user_tasks and task in user_tasks:
        return METRICS[METRIC_SCORER[user_tasks[task]["metric"]]]
    raise AdapterMergeError(f"unknown task {validate.quote(task)}: expected one of {', '.join((*BUILTIN_TASKS, MMLU))} or a user task with `data:`")


MAX_GEN_TOKS = 1 << 16  # tokens a user task's answer may take


def parse_gates(data: dict, where: str = "gates", root: Path | None = None) -> GateConfig:
    """A GateConfig from the parsed YAML mapping; `where` names the file in error messages, and
    relative `data:` paths are taken from `root` (the gates file's folder) when given. Every value
    is checked here, so a bad threshold fails when the file is read, not after the evaluation."""
    validate.document(data, where)
    if not isinstance(data, dict):
        raise AdapterMergeError(f"{where}: expected a mapping with `tasks:` and optionally `retention:`, got {validate.quote(data)}")
    validate.mapping(data, where, keys=("tasks", "retention"))
    tasks = validate.mapping(data.get("tasks"), f"{where}: tasks")
    if not tasks:  # a file that gates nothing would pass every candidate
        raise AdapterMergeError(f"{where}: tasks is empty: name at least one task, e.g. {{domain: {{min: 0.75}}}}")
    config = GateConfig()
    for task, spec in tasks.items():
        at = f"{where}: tasks.{validate.listing([task])}"
        spec = validate.mapping(spec, at, optional=True)
        if "data" in spec:
            metric = validate.string(spec.get("metric", "exact_match"), f"{at}.metric", choices=tuple(METRIC_SCORER))
            if task in (*BUILTIN_TASKS, MMLU):
                raise AdapterMergeError(f"{at}: `data` is for user tasks; {validate.quote(task)} is built in")
            data_path = validate.path(spec["data"], f"{at}.data", root=root)
            config.user_tasks[task] = {"data": str(data_path), "metric": metric,
                                       "max_gen_toks": validate.integer(spec.get("max_gen_toks", 64), f"{at}.max_gen_toks",
                                                                        minimum=1, maximum=MAX_GEN_TOKS)}
        elif "max_gen_toks" in spec:
            validate.integer(spec["max_gen_toks"], f"{at}.max_gen_toks", minimum=1, maximum=MAX_GEN_TOKS)
        try:
            allowed = task_metrics(task, config.user_tasks)
        except AdapterMergeError as exc:
            raise AdapterMergeError(f"{where}: {exc}") from None
        metric = spec.get("metric", DEFAULT_METRIC.get(task) or config.user_tasks.get(task, {}).get("metric"))
        if metric not in allowed:
            raise AdapterMergeError(f"{at}.metric: {validate.quote(metric)} is not a metric of {task}: expected one of {', '.join(allowed)}")
        extra = {k for k in spec if k.endswith("_min") and k[: -len("_min")] in allowed}
        unknown = set(spec) - _TASK_KEYS - extra
        if unknown:
            raise AdapterMergeError(f"{at}: unknown key(s) {validate.listing(sorted(unknown))}: expected metric, min, max_drop, reference, "
                                    "data, max_gen_toks or <metric>_min")
        if "min" in spec:
            config.gates.append(Gate(task, metric, "min", validate.number(spec["min"], f"{at}.min")))
        if "max_drop" in spec:
            ref = validate.string(spec.get("reference"), f"{at}.reference", nonempty=True, optional=True)
            config.gates.append(Gate(task, metric, "max_drop", validate.number(spec["max_drop"], f"{at}.max_drop"), reference=ref))
        elif "reference" in spec:
            validate.string(spec["reference"], f"{at}.reference", nonempty=True)
        for key in sorted(extra):
            config.gates.append(Gate(task, key[: -len("_min")], "min", validate.number(spec[key], f"{at}.{key}")))
        config.tasks.append(task)
    retention = data.get("retention")
    if retention is not None:
        if not isinstance(retention, dict) or "min" not in retention:
            raise AdapterMergeError(f"{where}: retention: expected {{min: 0.95}} and optionally adapters: {{task: folder}}, "
                                    f"got {validate.quote(retention)}")
        validate.mapping(retention, f"{where}: retention", keys=("min", "adapters"))
        config.retention_min = validate.number(retention["min"], f"{where}: retention.min")
        adapters = validate.mapping(retention.get("adapters"), f"{where}: retention.adapters", optional=True)
        config.retention_adapters = {k: str(validate.path(v, f"{where}: retention.adapters.{validate.listing([k])}"))
                                     for k, v in adapters.items()}
    return config


def load_gates(path: str | Path) -> GateConfig:
    path = Path(path)
    data = read_yaml(path, "gates file")
    return parse_gates(data, str(path), root=path.parent)


# ---------------------------------------------------------------- checking


def _metric(results: dict, candidate: str, task: str, metric: str):
    """(value, items, error) of one score; error says why there is no usable value."""
    scores = results.get(candidate, {}).get(task)
    if scores is None:
        return None, None, f"{task} was not evaluated for {candidate}"
    if scores.error:
        return None, None, f"evaluation error: {scores.error}"
    entry = scores.metrics.get(metric)
    if entry is None or entry["value"] is None or math.isnan(entry["value"]):
        return None, None, f"{task}.{metric} has no value for {candidate}"
    return entry["value"], scores.items.get(metric, {}), None


def check_gate(gate: Gate, candidate: str, results: dict, reference: str = "base") -> GateResult:
    """One gate for one candidate. `results`: {candidate: {task: TaskScores}}."""
    value, items, error = _metric(results, candidate, gate.task, gate.metric)
    if error:
        return GateResult(gate, candidate, False, None, error)
    if gate.kind == "min":
        passed = value >= gate.threshold
        detail = f"{value:.3f} {'>=' if passed else '<'} {gate.threshold:g}"
        return GateResult(gate, candidate, passed, value, detail + ("" if passed else _short(items, gate.threshold)))
    if gate.kind == "max_drop":
        ref_name = gate.reference or reference
        ref_value, ref_items, error = _metric(results, ref_name, gate.task, gate.metric)
        if error:
            return GateResult(gate, candidate, False, None, f"reference {ref_name}: {error}")
        drop = ref_value - value
        pair = stats.paired(items, ref_items)
        passed = drop <= gate.threshold + 1e-12
        noise = "within noise" if pair.within_noise else "beyond noise"
        # 0.0 - diff, not -diff: a zero difference must print +0.000, not -0.000
        detail = f"drop {drop:+.3f} vs {ref_name} (paired {0.0 - pair.diff:+.3f} +/- {pair.stderr:.3f}, n={pair.n}: {noise})"
        return GateResult(gate, candidate, passed, drop, detail, pair.to_dict())
    raise AdapterMergeError(f"gate kind {gate.kind!r} is checked by check_retention")


def check_retention(gate: Gate, candidate: str, single: str, results: dict, reference: str = "base") -> GateResult:
    """(candidate - reference) / (single - reference) on gate.task; fails when undefined."""
    values, items = {}, {}
    for name in (candidate, single, reference):
        values[name], items[name], error = _metric(results, name, gate.task, gate.metric)
        if error:
            return GateResult(gate, candidate, False, None, f"{name}: {error}")
    gain_single = values[single] - values[reference]
    if gain_single <= 0:
        return GateResult(gate, candidate, False, None,
                          f"undefined: the single adapter {single} does not beat {reference} ({gain_single:+.3f})")
    ratio = (values[candidate] - values[reference]) / gain_single
    passed = ratio >= gate.threshold
    detail = f"{ratio:.3f} = ({values[candidate]:.3f} - {values[reference]:.3f}) / ({values[single]:.3f} - {values[reference]:.3f})"
    # Against the single adapter on the same items: is the lost gain more than the items' noise?
    pair = stats.paired(items[candidate], items[single])
    detail += f"; vs {single} paired {pair.diff:+.3f} +/- {pair.stderr:.3f}, n={pair.n}: {'within' if pair.within_noise else 'beyond'} noise"
    if not passed:
        detail += _short(items[candidate], values[reference] + gate.threshold * gain_single)
    return GateResult(gate, candidate, passed, ratio, detail, pair.to_dict())


def _short(items: dict, target: float) -> str:
    """'; k more of n items needed' for a failed gate on 0/1 items (a reviewer reads a miss in
    items, not in a third decimal); '' where the items are fractional."""
    k = stats.items_short(list(items.values()), target)
    return f"; {k} more of {len(items)} items needed" if k else ""


def check_all(config: GateConfig, results: dict, gated: list[str], singles: dict[str, str], reference: str = "base") -> list[GateResult]:
    """Every gate for every gated candidate; retention for each task with a single-task adapter."""
    out = []
    for candidate in gated:
        for gate in config.gates:
            out.append(check_gate(gate, candidate, results, reference))
        if config.retention_min is not None:
            for task, single in singles.items():
                if single == candidate or task not in config.tasks:
                    continue
                gate = Gate(task, config.metric_for(task), "retention", config.retention_min)
                out.append(check_retention(gate, candidate, single, results, reference))
    return out
