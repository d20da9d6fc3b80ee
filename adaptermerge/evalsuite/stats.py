"""Per-item values, standard errors and paired differences.

Every metric here is a mean of per-item values over the items it applies to (safety's
refusal_rate: harmful items; benign_answer_rate: benign items), so its standard error is
std(values, ddof=1) / sqrt(n). A paired difference between two models on the same items is the
mean of the per-item differences, with the standard error of that mean: items that are hard for
both cancel, so it is much tighter than the two unpaired errors combined.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# A difference within NOISE_Z standard errors of zero is reported as "within noise" (about 95%).
NOISE_Z = 1.96


def item_value(metric: str, scores: dict) -> float | None:
    """The value one item contributes to `metric` (None when the metric does not cover the item)."""
    if metric == "refusal_rate":
        return scores["refused"] if scores.get("harmful") else None
    if metric == "benign_answer_rate":
        return None if scores.get("harmful") else scores["answered"]
    value = scores.get(metric)
    return None if value is None else float(value)


def mean_stderr(values: list[float]) -> tuple[float, float]:
    """(mean, standard error of the mean); NaN for no values, stderr 0 for one."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def items_short(values: list[float], target: float) -> int | None:
    """How many more of 0/1-valued `values` must score 1 for their mean to reach `target` (0 when
    it does); None when the values are not all 0 or 1 (a mean of fractions has no item count)."""
    if not values or any(v not in (0.0, 1.0) for v in values):
        return None
    # 1e-9: 0.95 * 60 is 57.00000000000001 in floats, and 57 of 60 items do reach 0.95
    return max(0, math.ceil(target * len(values) - 1e-9) - int(sum(values)))


@dataclass(frozen=True)
class Paired:
    """candidate - reference on the items both cover."""

    diff: float
    stderr: float
    n: int

    @property
    def within_noise(self) -> bool:
        if math.isnan(self.diff):
            return True
        return abs(self.diff) <= NOISE_Z * self.stderr

    def to_dict(self) -> dict:
        return {"diff": self.diff, "stderr": self.stderr, "n": self.n, "within_noise": self.within_noise}


def paired(candidate: dict, reference: dict) -> Paired:
    """Paired difference of two {item id: value} maps over their common ids."""
    common = sorted(set(candidate) & set(reference), key=str)
    diff, stderr = mean_stderr([candidate[k] - reference[k] for k in common])
    return Paired(diff, stderr, len(common))
