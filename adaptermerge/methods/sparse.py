"""Sparsifying merges on dense deltas: ties, dare_linear, dare_ties. One driver
(`_chunked.sparse_merge`), two choices: how each delta is sparsified (`Sparsify`: magnitude trim
or DARE random drop) and how they are combined (`Combine`: weighted sum, or TIES sign election +
disjoint mean). The math and its conventions are those of `math.trim`, `math.dare`, `math.ties`:

- trim keeps round(density * numel) entries of largest |value| per delta (per module, per adapter),
  exactly with threshold=exact (and auto, up to 16M stacked entries per module). With a sampled
  cut (threshold=sampled, or auto above that size) the share actually kept is counted and recorded
  per module in adaptermerge.json as `density_kept`.
- TIES works on the weighted values `v_i = w_i * t_i`: the elected sign is that of `sum_i v_i`,
  an adapter agrees when its v_i has that sign, and the divisor is the sum of |w_i| over the
  agreeing adapters (a weighted mean, as mergekit; PEFT divides by their count, which differs
  when weights are unequal). normalize=false (mergekit's option, its dare_ties default) sums the
  agreeing weighted values instead.
- DARE: drop with probability 1 - density, rescale survivors by 1/density; random bits from a
  torch.Generator seeded by (seed, module name, adapter index), so a merge is reproducible and
  independent of module order.
- lambda scales the merged delta at the end.
Fields with a `mergekit` entry in their metadata have another default there: a merge YAML file
follows mergekit (density 1: no sparsifying; dare_linear and dare_ties not normalized); the
commands and the Python API keep these defaults (see docs/mergekit.md).
The result is dense; adapter output truncates it to --rank (default: the sum of input ranks).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..lazy import torch
from ._chunked import THRESHOLDS, Combine, Sparsify, sparse_merge
from .base import ModuleResult, check_choice, check_density, normalized, param


class _Sparse:
    accepts_dora = False
    output_exact = False
    sparsify = Sparsify.TRIM
    combine = Combine.TIES

    def needs_base(self, adapters) -> bool:
        return False

    def merge_module(self, inputs, weights, base_weight, params, ctx) -> ModuleResult:
        if self.combine is Combine.SUM and params.normalize:
            weights = normalized(weights, True)  # TIES divides per entry, by the agreeing weights
        picked = [(i, f, w) for i, (f, w) in enumerate(zip(inputs, weights)) if f is not None]
        Bs = [f.scaled_B() for _, f, _ in picked]
        As = [f.A.float() for _, f, _ in picked]
        merged, info = sparse_merge(
            Bs,
            As,
            [w for _, _, w in picked],
            density=params.density,
            sparsify=self.sparsify,
            combine=self.combine,
            generators=[ctx.generator(i) for i, _, _ in picked] if self.sparsify is Sparsify.DARE else None,
            threshold=getattr(params, "threshold", "auto"),
            seed=ctx.seed_for(-1),  # the cut's sample: per module, reproducible
            normalize=params.normalize,
        )
        if params.lambda_ != 1.0:
            merged.mul_(params.lambda_)
        return ModuleResult(dense=merged, sketch=torch.cat(As, 0), info=info)


@dataclass(frozen=True)
class TrimParams:
    density: float = param(0.2, "fraction of each delta's entries kept, by magnitude, in (0, 1]", mergekit=1.0)
    lambda_: float = param(1.0, "scaling of the merged delta")
    normalize: bool = param(True, "divide each entry by the sum of the agreeing weights (false: their sum)")
    threshold: str = param(
        "auto",
        "how the magnitude cut is found: exact; sampled (estimated from a stratified sample, the density "
        "actually kept recorded per module); auto: exact up to 16M stacked entries per module, sampled above",
        choices=THRESHOLDS,
    )

    def __post_init__(self):
        check_density(self.density)
        check_choice(self.threshold, THRESHOLDS, "threshold")


@dataclass(frozen=True)
class DropParams:
    density: float = param(0.5, "probability of keeping each entry, in (0, 1]", mergekit=1.0)
    lambda_: float = param(1.0, "scaling of the merged delta")
    normalize: bool = param(True, "divide each entry by the sum of the agreeing weights (false: their sum)", mergekit=False)

    def __post_init__(self):
        check_density(self.density)


@dataclass(frozen=True)
class DropSumParams(DropParams):
    normalize: bool = param(True, "divide the weights by their sum", mergekit=False)


class Ties(_Sparse):
    """TIES-merging (Yadav et al. 2023): trim each delta to its top-`density` entries by magnitude,
    elect the sign per entry, average the agreeing entries weighted by the adapters' weights
    (divisor: sum of agreeing |weights|), scale by lambda."""

    name = "ties"
    summary = "trim, elect sign, disjoint weighted mean"
    Params = TrimParams


class DareLinear(_Sparse):
    """DARE (Yu et al. 2023) then the weighted sum `lambda * sum_i w_i * dare(delta_i)`, with the
    weights normalized to sum 1 (a weighted mean) unless normalize=false."""

    name = "dare_linear"
    summary = "random drop + rescale, then weighted mean (sum with normalize=false)"
    sparsify, combine = Sparsify.DARE, Combine.SUM
    Params = DropSumParams


class DareTies(_Sparse):
    """DARE drop + rescale on each delta, then TIES sign election and disjoint weighted mean
    (the disjoint sum with normalize=false)."""

    name = "dare_ties"
    summary = "random drop + rescale, elect sign, disjoint weighted mean"
    sparsify = Sparsify.DARE
    Params = DropParams
