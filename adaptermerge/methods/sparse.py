"""Sparsifying merges on dense deltas: ties, dare_linear, dare_ties. One kernel, two choices:
how each delta is sparsified (magnitude trim or DARE random drop) and how they are combined
(weighted sum, or TIES sign election + disjoint weighted mean).

Conventions (pinned by tests):
- trim keeps round(density * numel) entries of largest |value| per delta (per module, per adapter).
- sign election: sign of `sum_i w_i * delta_i` after sparsification.
- TIES divisor: the sum of the weights of the agreeing adapters (a weighted mean, as mergekit);
  PEFT divides by their count, which differs when weights are unequal.
- DARE: drop with probability 1 - density, rescale survivors by 1/density; random bits from a
  torch.Generator seeded by (seed, module name, adapter index), so a merge is reproducible and
  independent of module order.
- lambda scales the merged delta at the end.
The result is dense; adapter output truncates it to --rank (default: the sum of input ranks).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import _ops
from .base import ModuleResult, check_density, normalized, param, present


def _dense(inputs, weights):
    pairs = present(inputs, weights)
    return [f.delta() for f, _ in pairs], [w for _, w in pairs]


class _Sparse:
    accepts_dora = False
    output_exact = False

    def needs_base(self, adapters) -> bool:
        return False


class Ties(_Sparse):
    """TIES-merging (Yadav et al. 2023): trim each delta to its top-`density` entries by magnitude,
    elect the sign per entry, average the agreeing entries weighted by the adapters' weights
    (divisor: sum of agreeing weights), scale by lambda."""

    name = "ties"
    summary = "trim, elect sign, disjoint weighted mean"

    @dataclass(frozen=True)
    class Params:
        density: float = param(0.2, "fraction of each delta's entries kept, by magnitude, in (0, 1]")
        lambda_: float = param(1.0, "scaling of the merged delta")

        def __post_init__(self):
            check_density(self.density)

    def merge_module(self, inputs, weights, base_weight, params, ctx) -> ModuleResult:
        deltas, ws = _dense(inputs, weights)
        merged = _ops.ties(deltas, ws, params.density)
        return ModuleResult(dense=merged * params.lambda_ if params.lambda_ != 1.0 else merged)


class DareLinear(_Sparse):
    """DARE (Yu et al. 2023) then a weighted sum: `lambda * sum_i w_i * dare(delta_i)`, weights
    normalized to sum 1 unless normalize=false."""

    name = "dare_linear"
    summary = "random drop + rescale, then weighted sum"

    @dataclass(frozen=True)
    class Params:
        density: float = param(0.5, "probability of keeping each entry, in (0, 1]")
        lambda_: float = param(1.0, "scaling of the merged delta")
        normalize: bool = param(True, "divide the weights by their sum")

        def __post_init__(self):
            check_density(self.density)

    def merge_module(self, inputs, weights, base_weight, params, ctx) -> ModuleResult:
        merged = None
        for i, (f, w) in enumerate(zip(inputs, normalized(weights, params.normalize))):
            if f is None:
                continue
            d = _ops.dare(f.delta(), params.density, ctx.generator(i)) * (w * params.lambda_)
            merged = d if merged is None else merged.add_(d)
        return ModuleResult(dense=merged)


class DareTies(_Sparse):
    """DARE drop + rescale on each delta, then TIES sign election and disjoint weighted mean."""

    name = "dare_ties"
    summary = "random drop + rescale, elect sign, disjoint weighted mean"

    @dataclass(frozen=True)
    class Params:
        density: float = param(0.5, "probability of keeping each entry, in (0, 1]")
        lambda_: float = param(1.0, "scaling of the merged delta")

        def __post_init__(self):
            check_density(self.density)

    def merge_module(self, inputs, weights, base_weight, params, ctx) -> ModuleResult:
        deltas, ws = [], []
        for i, (f, w) in enumerate(zip(inputs, weights)):
            if f is not None:
                deltas.append(_ops.dare(f.delta(), params.density, ctx.generator(i)))
                ws.append(w)
        merged = _ops.disjoint_mean(deltas, ws, _ops.elect_sign(deltas, ws))
        return ModuleResult(dense=merged * params.lambda_ if params.lambda_ != 1.0 else merged)
