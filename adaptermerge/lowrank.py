"""Back to low rank.

- Exact route, for linear combinations of LoRA deltas: `sum_j B_j @ A_j = Bs @ As` with the factors
  stacked (`Bs [out, R]`, `As [R, in]`). QR of both, an R x R SVD of the core, and the result is
  the exact SVD of the sum in O((out + in) * R^2), never forming the dense out x in matrix. Its
  numerical rank may be below R (merging an adapter with itself gives back rank r, not 2r).
- Truncated route, for dense deltas (TIES, DARE): a randomized truncated SVD (Halko et al.),
  with the relative error and retained energy measured exactly.

Factors come back balanced, `B = U sqrt(S)`, `A = sqrt(S) V^T`, with scale 1 (alpha = r).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Singular values below this fraction of the largest are float32 round-off, not rank.
RANK_TOL = 1e-6


@dataclass(frozen=True)
class LowRankStats:
    rank: int
    rel_error: float  # ||delta - B A||_F / ||delta||_F
    energy: float  # retained fraction of ||delta||_F^2
    exact: bool  # True when no information was dropped beyond float round-off

    def as_dict(self) -> dict:
        return {"rank": self.rank, "rel_error": self.rel_error, "energy": self.energy, "exact": self.exact}


def _balanced(U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    root = S.clamp_min(0).sqrt()
    return (U * root).float(), (root[:, None] * Vh).float()


def _zero(out: int, inp: int, device) -> tuple[torch.Tensor, torch.Tensor, LowRankStats]:
    # A module whose merged delta is exactly zero still gets a rank-1 zero LoRA so PEFT loads it.
    return torch.zeros(out, 1, device=device), torch.zeros(1, inp, device=device), LowRankStats(1, 0.0, 1.0, True)


def _stats_from_spectrum(S: torch.Tensor, k: int) -> LowRankStats:
    total = float((S.double() ** 2).sum())
    kept = float((S[:k].double() ** 2).sum())
    energy = kept / total if total > 0 else 1.0
    rel_error = max(0.0, 1.0 - energy) ** 0.5
    exact = k == int((S > S[0] * RANK_TOL).sum()) if S.numel() else True
    return LowRankStats(k, rel_error, energy, exact)


def factor_sum(
    Bs: list[torch.Tensor], As: list[torch.Tensor], rank: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, LowRankStats]:
    """Exact low-rank factors of `sum_j Bs[j] @ As[j]` (scales already folded into Bs).

    Bs[j]: [out, r_j]; As[j]: [r_j, in]. Returns B [out, k], A [k, in] with k the numerical rank,
    or `rank` if smaller (then the optimal rank-`rank` approximation, error reported exactly).
    """
    B = torch.cat([b.double() for b in Bs], dim=1)  # [out, R]
    A = torch.cat([a.double() for a in As], dim=0)  # [R, in]
    out, inp = B.shape[0], A.shape[1]
    Qb, Rb = torch.linalg.qr(B)  # [out, R], [R, R]
    Qa, Ra = torch.linalg.qr(A.T)  # [in, R], [R, R]
    U, S, Vh = torch.linalg.svd(Rb @ Ra.T)  # the R x R core
    if S.numel() == 0 or S[0] == 0:
        return _zero(out, inp, B.device)
    k = int((S > S[0] * RANK_TOL).sum())
    if rank is not None:
        k = min(k, rank)
    stats = _stats_from_spectrum(S, k)
    Bk, Ak = _balanced(Qb @ U[:, :k], S[:k], Vh[:k] @ Qa.T)
    return Bk, Ak, stats


def truncate(
    delta: torch.Tensor, rank: int, *, oversample: int = 8, niter: int = 2, generator_seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, LowRankStats]:
    """Rank-`rank` factors of a dense delta [out, in] by randomized SVD, with exact error stats.

    `niter` power iterations sharpen the subspace when the spectrum decays slowly (it does for
    TIES/DARE outputs: trimming spreads energy over many directions).
    """
    out, inp = delta.shape
    norm2 = float((delta.double() ** 2).sum()) if delta.numel() < 50_000_000 else float(delta.norm().double() ** 2)
    if norm2 == 0.0:
        return _zero(out, inp, delta.device)
    q = min(rank + oversample, out, inp)
    if q >= min(out, inp) * 0.5:  # small matrix: the exact SVD is cheaper and optimal
        U, S, Vh = torch.linalg.svd(delta.double(), full_matrices=False)
    else:
        with torch.random.fork_rng(devices=[] if delta.device.type == "cpu" else [delta.device]):
            torch.manual_seed(generator_seed)
            U, S, V = torch.svd_lowrank(delta, q=q, niter=niter)
        Vh = V.T
    k = min(rank, S.numel())
    B, A = _balanced(U[:, :k], S[:k], Vh[:k])
    # Exact: U_k S_k V_k^T is the projection of delta onto span(U_k) within span(V_k) only for an
    # exact SVD, so measure the residual directly rather than trusting the spectrum.
    resid2 = float(((delta - B @ A).double() ** 2).sum()) if delta.numel() < 50_000_000 else float((delta - B @ A).norm().double() ** 2)
    energy = max(0.0, 1.0 - resid2 / norm2)
    rel = (resid2 / norm2) ** 0.5
    return B, A, LowRankStats(k, rel, energy, rel < 1e-5)
