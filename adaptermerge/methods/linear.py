"""Linear combinations of deltas: linear, task_arithmetic, cat. All exact and low rank.

`sum_i c_i * delta_i = sum_i (c_i * scale_i * B_i) @ A_i`, so the result is a list of factor
pairs; it is never formed densely for adapter output (see lowrank.factor_sum).
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import ExactLowRank, ModuleResult, normalized, param, present


def _terms(inputs, coeffs):
    return [(f.scaled_B() * c, f.A.float()) for f, c in present(inputs, coeffs)]


class Linear(ExactLowRank):
    """Weighted average of the deltas: `sum_i w_i * delta_i` with weights normalized to sum 1
    (unless normalize=false). Exact; the adapter output is the exact SVD of the sum, truncated
    only to its numerical rank (or to --rank, with the error recorded)."""

    name = "linear"
    summary = "weighted average of the deltas (exact, low rank)"

    @dataclass(frozen=True)
    class Params:
        normalize: bool = param(True, "divide the weights by their sum")

    def merge_module(self, inputs, weights, base_weight, params, ctx) -> ModuleResult:
        return ModuleResult(terms=_terms(inputs, normalized(weights, params.normalize)))


class TaskArithmetic(ExactLowRank):
    """Task arithmetic (Ilharco et al. 2023): `lambda * sum_i w_i * delta_i`, weights not normalized."""

    name = "task_arithmetic"
    summary = "lambda * sum of weighted deltas (exact, low rank)"

    @dataclass(frozen=True)
    class Params:
        lambda_: float = param(1.0, "overall scaling of the summed task vectors")

    def merge_module(self, inputs, weights, base_weight, params, ctx) -> ModuleResult:
        return ModuleResult(terms=_terms(inputs, [params.lambda_ * w for w in weights]))


class Cat(Linear):
    """Exact concatenation: `B = [c_1 s_1 B_1 | ... ]`, `A = [A_1; ...]`, rank = sum of ranks.
    Same weights as linear (normalized unless normalize=false); no SVD, the factors are kept."""

    name = "cat"
    summary = "concatenate the factors (exact, rank = sum of ranks)"

    def merge_module(self, inputs, weights, base_weight, params, ctx) -> ModuleResult:
        result = super().merge_module(inputs, weights, base_weight, params, ctx)
        result.concat = True
        return result
