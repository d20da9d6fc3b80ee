"""TSV-M (Gargiulo et al., CVPR 2025, "Task Singular Vectors: Reducing Task Interference in Model
Merging"), per module, exactly in the core space of the LoRA factors (see subspace.py).

For T inputs with weighted deltas `d_i = w_i * scale_i * B_i A_i` (weights are multipliers, not
normalized, as in task arithmetic):
1. compress: the SVD of each d_i, `d_i = U_i S_i V_i^T`, keeps its top k_i components;
2. decorrelate: the kept singular vectors of all tasks are concatenated, `U = [U_1k | ... | U_Tk]`
   [out, n] and likewise V [in, n], and each is replaced by its orthonormal polar factor
   (orthogonal Procrustes: `U = P Q^T` from `U = P S Q^T`), which removes the overlap between the
   tasks' singular vectors while staying as close as possible to them;
3. sum: `delta = lambda * U_orth diag(S_1k, ..., S_Tk) V_orth^T`.

Conventions and how they map to LoRA:
- The paper keeps a 1/T share of each task's components, measured on the full width:
  `floor(min(out, in) / T)` each, so the concatenation is at most square and its polar factor
  has orthonormal columns. A LoRA delta has only r_i components, and r_i is below that share
  whenever T * r_i <= min(out, in) (the usual case), so the paper keeps all of them; so does the
  Core Space authors' TSV on LoRA cores. Here `keep` is the fraction of each input's rank kept,
  `k_i = max(1, round(keep * r_i))`, capped at the paper's share and at the numerical rank of d_i
  (components with zero singular value have no defined direction). Default keep = 1.
- lambda is the paper's alpha (1.0 in the paper: no tuning).
- Weights scale each d_i before its SVD, so a weight scales that task's singular values.
- One input at weight 1 with keep = 1 returns its delta: its singular vectors are already
  orthonormal. The polar factors do not depend on SVD sign choices or input order.
- Exact: every U_i, V_i lies in the core space's bases, and the polar factor of `U_core @ X` is
  `U_core @ polar(X)`; the output is the rank-n factors, with n = sum k_i <= sum r_i.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import AdapterMergeError
from ..lazy import torch
from .base import ExactLowRank, ModuleResult, param
from .subspace import core_space, numerical_rank, polar, weighted_factors


def tsv_merge(cs, ranks: list[int], keep: float, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TSV-M in core coordinates: (X_orth [p, n], S [n], Y_orth [q, n]) with the merged core
    `X_orth diag(S) Y_orth^T`. ranks: each input's LoRA rank; width: min(out, in)."""
    share = max(1, width // len(ranks))
    cores = cs.cores()
    top = max(float(torch.linalg.matrix_norm(m, 2)) for m in cores)
    Xs, Ss, Ys = [], [], []
    for m, r in zip(cores, ranks):
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
        k = min(max(1, round(keep * r)), share, numerical_rank(s, top))
        Xs.append(u[:, :k]), Ss.append(s[:k]), Ys.append(vh[:k].T)
    X, S, Y = torch.cat(Xs, 1), torch.cat(Ss), torch.cat(Ys, 1)
    if S.numel() == 0:  # every weighted delta is zero here
        return X, S, Y
    return polar(X), S, polar(Y)


class Tsv(ExactLowRank):
    """TSV-M (Gargiulo et al. 2025): keep each task's top singular components, orthogonalize the
    concatenated left and right singular vectors (polar factor), then sum: exact, low rank."""

    name = "tsv"
    summary = "task singular vectors: compress each delta, decorrelate the tasks' singular vectors, sum"

    @dataclass(frozen=True)
    class Params:
        keep: float = param(1.0, "fraction of each input's rank kept as its top singular components, in (0, 1]")
        lambda_: float = param(1.0, "scaling of the merged delta (the paper's alpha)")

        def __post_init__(self):
            if not (isinstance(self.keep, (int, float)) and 0.0 < self.keep <= 1.0):
                raise AdapterMergeError(f"keep must be in (0, 1], got {self.keep}")

    def merge_module(self, inputs, weights, base_weight, params, ctx) -> ModuleResult:
        _, Bs, As = weighted_factors(inputs, weights)
        cs = core_space(Bs, As)
        X, S, Y = tsv_merge(cs, [b.shape[1] for b in Bs], params.keep, min(Bs[0].shape[0], As[0].shape[1]))
        return ModuleResult(terms=[cs.terms(X * (params.lambda_ * S), Y.T)])
