"""KnOTS (Stoica et al., ICLR 2025, "Model Merging with SVD to Tie the KnOTS"), per module, with the
joint SVD computed exactly in the core space of the LoRA factors (see subspace.py).

1. Align: the deltas `d_i = scale_i * B_i A_i` are concatenated along the input dimension,
   `[d_1 | ... | d_T] = U S [V_1^T | ... | V_T^T]` (SVD, rank rho <= sum r_i). U S is a basis
   shared by every task; task i is `d_i = U (S V_i^T)`.
2. Merge: the aligned per-task coefficients `C_i = S V_i^T` [rho, in] are merged entrywise with
   TIES (`inner=ties`: trim to the top `density` of each C_i's entries by magnitude, elect the sign,
   disjoint mean) or DARE-TIES (`inner=dare_ties`: drop each entry with probability 1 - density,
   rescale by 1 / density, elect the sign, disjoint mean), with this package's TIES conventions
   (math.py): values `w_i * C_i`, divisor the sum of the agreeing |w_i|, trim per module and input.
3. Reconstruct: `delta = lambda * U C_merged`, exact rank-rho factors (B = U, A = C_merged).

Where each step runs: the joint SVD on the R x T*R matrix of the cores; the entrywise TIES/DARE on
the [rho, in] coefficient matrices in input coordinates, as the paper does (those operations are
not rotation invariant, so the core space's coordinates would give a different merge); they are
the size of an A factor. The weights are not part of the alignment: the SVD is of the unweighted
deltas, and w_i enters the merge as in `ties`.

Conventions from the authors' release: the coefficients merged are S V_i^T (singular values on V,
their `s_on_V`); their language-model configurations keep every entry (top-K 100 %) for TIES and
drop 80 % for DARE (density 0.2 here), with a final scaling of 0.4-0.5 tuned on validation data;
here density defaults to 1 and lambda to 1. The elected sign where the sum is exactly 0 is 0 here
(the authors' code takes the majority sign); such entries are measure-zero in trained adapters.
One input at weight 1 with density 1 returns its delta exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..lazy import torch
from . import math
from .base import ExactLowRank, ModuleResult, check_choice, check_density, param
from .subspace import core_space, numerical_rank, weighted_factors

INNER = ("ties", "dare_ties")


def knots_align(cores: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The joint SVD of the concatenated cores [M_1 | ... | M_T] ([p, q] each): (u [p, rho], the
    aligned coefficients `u^T M_i` [rho, q], i.e. S V_i^T in core coordinates)."""
    u, s, _ = torch.linalg.svd(torch.cat(cores, 1), full_matrices=False)
    u = u[:, : numerical_rank(s)]
    return u, [u.T @ m for m in cores]


def merge_coefficients(coeffs: list[torch.Tensor], weights: list[float], inner: str, density: float, generators) -> torch.Tensor:
    """TIES or DARE-TIES of the aligned coefficients [rho, in] (each input's own trim or drop)."""
    shape = coeffs[0].shape
    values = torch.stack([c.reshape(-1) * w for c, w in zip(coeffs, weights)])  # [T, N]
    if inner == "dare_ties":
        values = torch.stack([math.dare(v, density, g) for v, g in zip(values, generators)])
        cuts = torch.zeros(len(coeffs), dtype=values.dtype)
    elif density < 1.0:
        cuts = math.magnitude_cut(values, math.keep_count(values.shape[1], density))
    else:
        cuts = torch.zeros(len(coeffs), dtype=values.dtype)
    merged = math.ties(values, cuts, torch.tensor(weights, dtype=values.dtype))
    return merged.view(shape)


class Knots(ExactLowRank):
    """KnOTS (Stoica et al. 2025): align the deltas by a joint SVD of their concatenation, merge the
    aligned per-task coefficients with TIES or DARE-TIES, reconstruct. Exact, low rank."""

    name = "knots"
    summary = "align by a joint SVD, then TIES or DARE-TIES on the aligned coefficients (exact, low rank)"

    @dataclass(frozen=True)
    class Params:
        inner: str = param("ties", "how the aligned coefficients are merged", choices=INNER)
        density: float = param(1.0, "ties: fraction of each input's coefficients kept by magnitude; dare_ties: keep probability; in (0, 1]")
        lambda_: float = param(1.0, "scaling of the merged delta")

        def __post_init__(self):
            check_choice(self.inner, INNER, "inner")
            check_density(self.density)

    def merge_module(self, inputs, weights, base_weight, params, ctx) -> ModuleResult:
        index, Bs, As = weighted_factors(inputs, [1.0] * len(inputs))
        cs = core_space(Bs, As)
        u, coeffs = knots_align(cs.cores())
        if u.shape[1] == 0:  # every delta is zero here
            return ModuleResult(terms=[cs.terms(u, coeffs[0])])
        full = [c @ cs.V.T for c in coeffs]  # [rho, in]: the paper's S V_i^T
        gens = [ctx.generator(i) for i in index] if params.inner == "dare_ties" else None
        merged = merge_coefficients(full, [weights[i] for i in index], params.inner, params.density, gens)
        return ModuleResult(terms=[((cs.U @ u).float() * params.lambda_, merged.float())])
