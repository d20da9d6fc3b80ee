"""Isotropic merging (Marczak et al. 2025, "No Task Left Behind: Isotropic Model Merging with
Common and Task-Specific Subspaces"): iso_c and iso_cts, per module, exactly in the core space of
the LoRA factors (see subspace.py).

Both start from the task-arithmetic sum `D = sum_i d_i`, `d_i = w_i * scale_i * B_i A_i` (weights
are multipliers, not normalized), and replace a singular spectrum by a flat one: every kept
singular value becomes their mean, times lambda (the paper's alpha).

- iso_c: `delta = lambda * mean(S) * U V^T` from the SVD `D = U S V^T`.
- iso_cts: the common subspace is the top-k left and right singular vectors of D; each task adds
  the top-n left and right singular vectors of its own residual `(I - U_k U_k^T) d_i` (left
  projection only, as in the paper); all are concatenated, `U = [U_k | U_1n | ... | U_Tn]`, and
  U and V are replaced by their orthonormal polar factors; then `delta = lambda * mean(S) * U V^T`,
  the mean over all the kept singular values (common and task-specific).
  Sizes, with a budget of W directions: `k = int(common * W)`, then the task-specific share
  `n = round((W - k) / T)` per task, and the common space takes what is left, `k = W - T n` (the
  paper's rounding; a share that would overflow W is floored).

How they map to LoRA:
- The paper's spectra are of full-rank updates: its mean runs over all min(out, in) singular
  values and its budget W is min(out, in). A sum of LoRA deltas has rank at most R = sum r_i; its
  other singular values are 0 and have no defined directions. Here the mean runs over the
  numerical rank (singular values above 1e-6 of the largest), so the output has the rank of D,
  and W = min(out, in, R), the most directions the merged update can have. Components with zero
  singular value (a task with fewer than n directions outside the common subspace) are dropped.
- With common = 1, iso_cts is iso_c. One input returns the flattened spectrum of its delta.
- Exact: the SVDs, projections and polar factors run on the cores; the output is the rank-n
  factors of `U V^T` scaled.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import AdapterMergeError
from ..lazy import torch
from .base import ExactLowRank, ModuleResult, param
from .subspace import core_space, numerical_rank, polar, weighted_factors


def iso_c(total: torch.Tensor) -> tuple[torch.Tensor, float, torch.Tensor]:
    """Iso-C of a (core) matrix: (X [p, k], sigma, Y [q, k]) with the result `sigma * X Y^T`,
    sigma the mean of the k nonzero singular values."""
    u, s, vh = torch.linalg.svd(total, full_matrices=False)
    k = numerical_rank(s)
    return u[:, :k], float(s[:k].mean()) if k else 0.0, vh[:k].T


def cts_sizes(width: int, tasks: int, common: float) -> tuple[int, int]:
    """(common k, task-specific n per task) for a budget of `width` directions and T tasks."""
    k = int(common * width)
    n = round((width - k) / tasks)
    if n * tasks > width:
        n = width // tasks
    return width - n * tasks, n


def iso_cts(cores: list[torch.Tensor], width: int, common: float) -> tuple[torch.Tensor, float, torch.Tensor]:
    """Iso-CTS of core matrices: (X [p, m], sigma, Y [q, m]) with the result `sigma * X Y^T`."""
    total = sum(cores[1:], cores[0])
    u, s, vh = torch.linalg.svd(total, full_matrices=False)
    top = float(s[0]) if s.numel() else 0.0
    k, n = cts_sizes(width, len(cores), common)
    k = min(k, numerical_rank(s, top))
    Xs, Ss, Ys = [u[:, :k]], [s[:k]], [vh[:k].T]
    if n > 0:
        Uk = u[:, :k]
        for m in cores:
            ut, st, vt = torch.linalg.svd(m - Uk @ (Uk.T @ m), full_matrices=False)
            j = min(n, numerical_rank(st, top))
            Xs.append(ut[:, :j]), Ss.append(st[:j]), Ys.append(vt[:j].T)
    S = torch.cat(Ss)
    if S.numel() == 0:
        return u[:, :0], 0.0, vh[:0].T
    return polar(torch.cat(Xs, 1)), float(S.mean()), polar(torch.cat(Ys, 1))


class IsoC(ExactLowRank):
    """Iso-C (Marczak et al. 2025): the task-arithmetic sum with its singular values all replaced
    by their mean, times lambda. Exact, low rank (the rank of the sum)."""

    name = "iso_c"
    summary = "isotropic merge: the summed deltas with a flat singular spectrum (exact, low rank)"

    @dataclass(frozen=True)
    class Params:
        lambda_: float = param(1.0, "scaling of the merged delta (the paper's alpha)")

    def merge_module(self, inputs, weights, base_weight, params, ctx) -> ModuleResult:
        _, Bs, As = weighted_factors(inputs, weights)
        cs = core_space(Bs, As)
        X, sigma, Y = iso_c(sum(cs.cores()[1:], cs.core(0)))
        return ModuleResult(terms=[cs.terms(X * (params.lambda_ * sigma), Y.T)])


class IsoCts(ExactLowRank):
    """Iso-CTS (Marczak et al. 2025): the sum's top singular directions (common subspace) plus each
    task's top directions outside it, orthogonalized, with a flat spectrum. Exact, low rank."""

    name = "iso_cts"
    summary = "isotropic merge of common and task-specific subspaces (exact, low rank)"

    @dataclass(frozen=True)
    class Params:
        common: float = param(0.8, "fraction of the budget min(out, in, sum of ranks) given to the common subspace, in [0, 1]")
        lambda_: float = param(1.0, "scaling of the merged delta (the paper's alpha)")

        def __post_init__(self):
            if not (isinstance(self.common, (int, float)) and 0.0 <= self.common <= 1.0):
                raise AdapterMergeError(f"common must be in [0, 1], got {self.common}")

    def merge_module(self, inputs, weights, base_weight, params, ctx) -> ModuleResult:
        _, Bs, As = weighted_factors(inputs, weights)
        cs = core_space(Bs, As)
        width = min(Bs[0].shape[0], As[0].shape[1], sum(b.shape[1] for b in Bs))
        X, sigma, Y = iso_cts(cs.cores(), width, params.common)
        return ModuleResult(terms=[cs.terms(X * (params.lambda_ * sigma), Y.T)])
