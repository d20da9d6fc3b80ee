"""The core space of a module's LoRA inputs: the shared bases in which every delta is a small matrix.

With the (weighted, scaled) factors stacked, `Bs [out, R]` and `As [R, in]` (R = sum of ranks),
every delta `d_i = B_i @ A_i` lies in `span(Bs) x span(As^T)`. With orthonormal reference bases
U [out, p] of the B's and V [in, q] of the A's (p, q <= R), `d_i = U @ M_i @ V^T` exactly, with
the core `M_i = (U^T B_i)(A_i V)` [p, q]. Everything a rotation-invariant method needs (sums,
SVDs, projections, polar factors) is then computed on p x q matrices and mapped back through U and
V: never a dense out x in matrix, and the result is exact low-rank factors.

Reference bases are those of Core Space merging (Panariello et al. 2025): the left singular
vectors of the stacked B's and the right singular vectors of the stacked A's, found from a QR of
each stack and an SVD of its R x R triangular factor. They matter only to elementwise operations
(TIES trims, DARE drops) run on the cores, and there only up to signs and order, which those
operations are equivariant to.

All of it in float64: the cores are small, and the tests compare against dense float64 SVDs.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..lazy import torch
from ..lowrank import RANK_TOL


@dataclass(frozen=True)
class CoreSpace:
    """Shared bases and per-input factors in their coordinates (float64).

    U: [out, p] orthonormal columns; V: [in, q] orthonormal columns.
    b[i]: U^T B_i [p, r_i]; a[i]: A_i V [r_i, q]; so `B_i A_i = U (b_i a_i) V^T`.
    """

    U: torch.Tensor
    V: torch.Tensor
    b: list[torch.Tensor]
    a: list[torch.Tensor]

    def core(self, i: int) -> torch.Tensor:
        """M_i = b_i @ a_i [p, q]: input i's delta in core coordinates."""
        return self.b[i] @ self.a[i]

    def cores(self) -> list[torch.Tensor]:
        return [self.core(i) for i in range(len(self.b))]

    def terms(self, left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-space float32 factors of `U @ left @ right @ V^T`. left: [p, k]; right: [k, q].
        k = 0 (a merge that cancels out) gives one zero pair: the module keeps a rank-1 zero LoRA."""
        if left.shape[1] == 0:
            return torch.zeros(self.U.shape[0], 1), torch.zeros(1, self.V.shape[0])
        return (self.U @ left).float(), (right @ self.V.T).float()


def core_space(Bs: list[torch.Tensor], As: list[torch.Tensor]) -> CoreSpace:
    """The core space of deltas `Bs[i] @ As[i]` (scales and weights folded into Bs).

    Bs[i]: [out, r_i]; As[i]: [r_i, in]. Costs O((out + in) R^2), no out x in matrix.
    """
    B = torch.cat([x.double() for x in Bs], 1)  # [out, R]
    A = torch.cat([x.double() for x in As], 0)  # [R, in]
    Qb, Rb = torch.linalg.qr(B)  # [out, p], [p, R]
    Qa, Ra = torch.linalg.qr(A.T)  # [in, q], [q, R]
    Ub = torch.linalg.svd(Rb)[0]  # B = Qb Rb = (Qb Ub) S W^T: Qb Ub are B's left singular vectors
    Ua = torch.linalg.svd(Ra)[0]  # A^T = Qa Ra likewise: Qa Ua are A's right singular vectors
    b_all, a_all = Ub.T @ Rb, (Ua.T @ Ra).T  # [p, R], [R, q]
    cuts = torch.tensor([0] + [x.shape[1] for x in Bs]).cumsum(0).tolist()
    b = [b_all[:, s:e] for s, e in zip(cuts, cuts[1:])]
    a = [a_all[s:e] for s, e in zip(cuts, cuts[1:])]
    return CoreSpace(Qb @ Ub, Qa @ Ua, b, a)


def numerical_rank(S: torch.Tensor, top: float | None = None) -> int:
    """How many singular values (descending) exceed RANK_TOL of `top` (default: the largest)."""
    if S.numel() == 0:
        return 0
    top = float(S[0]) if top is None else top
    return int((S > top * RANK_TOL).sum()) if top > 0 else 0


def polar(X: torch.Tensor) -> torch.Tensor:
    """The orthonormal polar factor of a tall X [m, n] (n <= m): `P @ Q^T` from `X = P S Q^T`,
    the orthonormal matrix nearest X in Frobenius norm (orthogonal Procrustes)."""
    P, _, Qh = torch.linalg.svd(X, full_matrices=False)
    return P @ Qh


def weighted_factors(inputs, weights) -> tuple[list[int], list[torch.Tensor], list[torch.Tensor]]:
    """The inputs that have this module: their indices, `w_i * scale_i * B_i` and `A_i` (float64)."""
    picked = [(i, f, w) for i, (f, w) in enumerate(zip(inputs, weights)) if f is not None]
    return [i for i, _, _ in picked], [f.B.double() * (f.scale * w) for _, f, w in picked], [f.A.double() for _, f, _ in picked]
