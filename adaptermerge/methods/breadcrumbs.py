"""Model Breadcrumbs (Davari & Belilovsky 2023, "Model Breadcrumbs: Scaling Multi-Task Model
Merging with Sparse Masks"): drop each delta's largest entries (outliers) and its smallest
(noise), then add what is left as task arithmetic does.

Per module and adapter, with N entries in the delta d_i:
- the `gamma` fraction of entries largest in |value| is dropped: the top `round(gamma * N)`;
- of the rest, the largest `round(density * N)` are kept (at least 1), so a `density` fraction
  survives and the bottom `1 - density - gamma` fraction is dropped;
- merged delta = `lambda * sum_i w_i * mask_i(d_i)`, weights not normalized.

The parameters mean what they mean in mergekit's `breadcrumbs` method (mergekit/sparsify.py,
`magnitude_outliers`): `density` is the fraction kept and `gamma` the fraction of largest entries
removed first, the smallest removed to reach the density; weights are not normalized there
either. mergekit counts with int() where this rounds as TIES's trim does, skips the masking
altogether at density 1 (gamma then has no effect), and defaults to density 1, gamma 0.01; the
defaults of the commands and the Python API, 0.9 and 0.01, are values breadcrumbs configurations
commonly use; a merge YAML file takes mergekit's (mergeconfig: density 1, which keeps everything,
as gamma 0 does here). Conventions:
- The mask is by cuts (`math.magnitude_cut`): an entry is kept when `lo <= |d| < hi`, with hi the
  `round(gamma * N)`-th largest |d| (no upper cut when that is 0) and lo the
  `(round(gamma * N) + round(density * N))`-th largest. Entries tied in magnitude at a cut are
  treated alike, so on exact ties slightly more or fewer than `density * N` survive.
- When rounding makes the two counts exceed N, the top count shrinks (as mergekit's does).
- density = 1 and gamma = 0 keep everything: the merged delta is task arithmetic's.
- Masks are on each adapter's own delta, before its weight: the ranks do not depend on w_i.
The result is dense; adapter output truncates it to --rank (default: the sum of input ranks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from ..errors import AdapterMergeError
from ..lazy import torch
from . import backends, math
from .base import ModuleResult, check_density, param, present


def band_counts(numel: int, density: float, gamma: float) -> tuple[int, int]:
    """(entries dropped from the top, entries kept) of a delta of `numel` entries."""
    keep = math.keep_count(numel, density)
    return min(round(gamma * numel), numel - keep), keep


def band_mask(delta: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """The Breadcrumbs mask of one delta: True where `lo <= |d| < hi` (see the module docstring).

    Args:
        delta: [out, in] (any shape), finite.
        density: fraction kept, in (0, 1]; gamma: fraction of largest entries dropped, >= 0.
    Returns:
        bool, the shape of delta.
    """
    flat = delta.float().reshape(1, -1).contiguous()
    top, keep = band_counts(flat.shape[1], density, gamma)
    magnitude = delta.abs()
    mask = magnitude >= backends.magnitude_cut(flat, top + keep)[0]
    if top > 0:
        mask &= magnitude < backends.magnitude_cut(flat, top)[0]
    return mask


def breadcrumbs(deltas: Iterable[torch.Tensor], weights: list[float], density: float, gamma: float) -> torch.Tensor:
    """The Breadcrumbs merge of dense deltas, before lambda.

    Args:
        deltas: the adapters' deltas [out, in], read one at a time (a generator keeps one in memory).
        weights: one per delta, not normalized.
        density, gamma: as in `band_mask`.
    Returns:
        `sum_i w_i * where(band_mask(d_i), d_i, 0)` [out, in] float32, summed in adapter order.
    """
    merged = None
    for d, w in zip(deltas, weights):
        d = d.float()
        if merged is None:
            merged = torch.zeros_like(d)
        merged.add_(torch.where(band_mask(d, density, gamma), d, 0.0), alpha=w)
    return merged


class Breadcrumbs:
    """Model Breadcrumbs: per delta, drop the top-`gamma` and the smallest entries by magnitude
    (a `density` fraction survives), then `lambda * sum_i w_i * masked_i`."""

    name = "breadcrumbs"
    summary = "drop each delta's largest (gamma) and smallest entries, then weighted sum"
    accepts_dora = False
    output_exact = False

    @dataclass(frozen=True)
    class Params:
        density: float = param(0.9, "fraction of each delta's entries kept, in (0, 1]", mergekit=1.0)
        gamma: float = param(0.01, "fraction of each delta's largest entries dropped; density + gamma <= 1")
        lambda_: float = param(1.0, "scaling of the merged delta")

        def __post_init__(self):
            check_density(self.density)
            if not (isinstance(self.gamma, (int, float)) and self.gamma >= 0.0):
                raise AdapterMergeError(f"gamma must be >= 0, got {self.gamma}")
            if self.density + self.gamma > 1.0 + 1e-9:  # the tolerance admits e.g. 0.9 + 0.1
                raise AdapterMergeError(f"density + gamma must be at most 1, got density={self.density} and gamma={self.gamma}")

    def needs_base(self, adapters) -> bool:
        return False

    def merge_module(self, inputs, weights, base_weight, params, ctx) -> ModuleResult:
        pairs = present(inputs, weights)
        deltas = (f.delta() for f, _ in pairs)  # formed one at a time
        merged = breadcrumbs(deltas, [w for _, w in pairs], params.density, params.gamma)
        if params.lambda_ != 1.0:
            merged.mul_(params.lambda_)
        return ModuleResult(dense=merged, sketch=torch.cat([f.A.float() for f, _ in pairs], 0))
