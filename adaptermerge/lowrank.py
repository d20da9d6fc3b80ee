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

from .base import resolve_dtype
from .lazy import torch

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
    delta: torch.Tensor,
    rank: int,
    *,
    sketch: torch.Tensor | None = None,
    power_iters: int | None = None,
    oversample: int = 8,
    seed: int = 0,
    range_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, LowRankStats]:
    """Rank-`rank` factors of a dense delta [out, in], with the error and retained energy.

    Thin matrices get an exact SVD (optimal). Others a randomized range finder (Halko et al.
    2011) whose test matrix starts from `sketch` (the stacked input A factors [R, in], padded with
    Gaussian columns to rank + oversample): a TIES or DARE merge of LoRA deltas keeps most of its
    energy near their row spaces, so few power iterations are needed (see power_iters). The
    approximation is the orthogonal projection of delta onto the span of its left factor, so its
    error follows exactly from the spectrum: `||delta - BA||^2 = ||delta||^2 - sum(S_k^2)`.

    power_iters: default 2, and 0 for deltas of 16M entries or more. Two iterations put a TIES merge
    within float noise of the optimal truncation (the full SVD's, as PEFT's `ties_svd` computes
    it): over 40 modules of SmolLM2-135M shapes the error was 0.571737 against the optimum 0.571736,
    where one iteration gave 0.571757 and more oversampling barely helped (0.571754 at 24 extra
    columns). On a 14336 x 4096 TIES merge the iteration costs 40 % of the truncation and lowers its
    error by 0.04 % (0.60958 -> 0.60935), so the largest modules skip it.

    range_dtype: the dtype of the range finder's products (default: bfloat16 for deltas of 512K
    entries or more where the hardware has native bf16, else float32: 3.7x faster for 14336 x 4096
    here, 6.9 ms against 9.6 ms for a 1536 x 576 TIES merge at one thread on an AMX Xeon). The
    range finder only chooses the subspace: bf16's 2^-8 rounding tilts it by about that much and
    loses O(2^-16) of the captured energy (over the 210 modules of benchmark case (a): error
    0.5666013 against 0.5665997 in float32 and the optimum 0.5665990), while the factors and the
    reported error come from the float32 core `Q^T delta`, so the error recorded is that of the
    factors written.
    """
    out, inp = delta.shape
    delta = delta.float()
    norm2 = float(torch.linalg.vector_norm(delta).double() ** 2)  # float32 sums are pairwise: ~1e-7 relative
    if norm2 == 0.0:
        return _zero(out, inp, delta.device)
    width = rank + oversample
    if min(out, inp) <= 4 * width:  # an exact decomposition is cheap and optimal
        U, S, Vh = _thin_svd(delta.double(), rank)
    else:
        gen = torch.Generator(device=delta.device).manual_seed(seed)
        columns = [] if sketch is None else [sketch.float().T]
        extra = width - (0 if sketch is None else sketch.shape[0])
        if extra > 0:
            columns.append(torch.randn(inp, extra, generator=gen, device=delta.device))
        omega = torch.cat(columns, 1)  # [in, w]; only its span matters (QR of the product)
        fast = range_dtype or _range_dtype(delta)
        if power_iters is None:
            power_iters = 0 if delta.numel() >= NO_POWER_ITER_MIN else 2
        U, S, Vh = _range_svd(delta, omega, rank, power_iters, fast)
        if fast != torch.float32 and norm2 - float((S[:rank] ** 2).sum()) < 0.01 * norm2:
            # A near-exact truncation (error under 10 %): bf16's O(2^-16) energy loss would
            # no longer be negligible next to the error, so the range is found in float32.
            U, S, Vh = _range_svd(delta, omega, rank, power_iters, torch.float32)
    k = min(rank, S.numel())
    B, A = _balanced(U[:, :k], S[:k], Vh[:k])
    # B A is delta projected onto the span of U_k, so ||delta - B A||^2 = ||delta||^2 - sum S_k^2,
    # with both terms in float64 from float32 data. That difference is reliable to a few parts
    # in a million of ||delta||^2; below 1e-3 of it (a near-exact truncation) it is measured.
    resid2 = max(0.0, norm2 - float((S[:k].double() ** 2).sum()))
    if resid2 < 1e-3 * norm2:
        resid2 = sum(float(torch.linalg.vector_norm(delta[rs] - B[rs] @ A, dtype=torch.float64) ** 2) for rs in _row_blocks(out, inp))
    rel = (resid2 / norm2) ** 0.5
    return B, A, LowRankStats(k, rel, max(0.0, 1.0 - resid2 / norm2), rel < 1e-5)


def _range_svd(delta, omega, rank, power_iters, dtype):
    """Top-`rank` SVD of delta restricted to the range found from `delta @ omega` (products in
    `dtype`; the power iteration's intermediate bases by `basis`, the final one orthonormalized in
    float64), from the float32 core `Q^T delta`."""
    M = delta.to(dtype)
    Y = M @ omega.to(dtype)  # [out, w]
    for _ in range(power_iters):
        # Between products only the span matters: a cheap, roughly orthonormal basis keeps the
        # columns from collapsing onto the top direction. One per iteration is enough: a round
        # trip through M and M^T raises cond(Y) by at most (s_1 / s_w)^2, which basis() takes
        # (or hands to `orthonormal`). Case (a) of the benchmark, 35 modules at one thread:
        # truncation 0.151 s against 0.171 s with a basis after each product, error 0.5662606
        # against 0.5662605 (optimum 0.5662585). The last basis must be orthonormal to float64
        # round-off (the error below follows from it), so it gets the full treatment.
        Y = M @ (M.T @ basis(Y).to(dtype))
    Q = orthonormal(Y)
    del M
    # The [w, in] core's SVD from its w x w Gram matrix in float64: several times faster than an
    # SVD of the core, and as accurate for the components kept.
    Uc, S, Vh = _thin_svd((Q.T @ delta).double(), rank)
    return Q.double() @ Uc, S, Vh


def basis(Y: torch.Tensor) -> torch.Tensor:
    """A basis [m, w] (float32) of the columns of a tall Y whose columns are orthonormal to about
    cond(Y)^2 * 2^-24: one Cholesky QR pass in float32, through the inverse of the w x w factor
    (a matrix product; 4-5x cheaper here than `orthonormal`'s two float64 passes with triangular
    solves). For the intermediate steps of a power iteration, where only the span is used. A
    failed factorization (cond(Y) near 2^12 or above) takes `orthonormal`."""
    Y = Y.float()
    L, info = torch.linalg.cholesky_ex(Y.T @ Y)
    d = L.diagonal()
    if int(info) != 0 or not bool(d.min() > d.max() * 1e-3):
        return orthonormal(Y)
    return Y @ torch.linalg.inv(L).T


def orthonormal(Y: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis [m, w] (float32) of the columns of a tall Y [m, w].

    Cholesky QR twice in float64 (Yamamoto et al. 2015): two w x w Gram matrices and triangular
    solves, 8x faster here than Householder QR of a 1536 x 56 matrix and orthogonal to float64
    round-off while cond(Y) stays below ~1e6. Worse conditioned (or rank-deficient: an adapter
    merged with itself repeats its sketch rows) falls back to Householder QR."""
    Q = Y.double()
    for step in range(2):
        L, info = torch.linalg.cholesky_ex(Q.T @ Q)
        d = L.diagonal()
        if int(info) != 0 or not bool(d.min() > d.max() * 1e-6):
            return torch.linalg.qr(Y.float())[0]
        Q = torch.linalg.solve_triangular(L, Q.T, upper=False).T
        if step == 0 and bool(d.min() > d.max() * 1e-3):
            # cond(Y) below ~1e3: one pass is orthonormal to ~cond^2 * 2^-53 < 1e-9, under the
            # float32 rounding of the result (the power iteration's last Y usually is: it is
            # M M^T applied to a basis).
            break
    return Q.float()


NO_POWER_ITER_MIN = 1 << 24  # entries from which the range finder skips the power iteration
BF16_RANGE_MIN = 1 << 19  # entries from which the range finder runs in bfloat16 (where native)


def _range_dtype(delta: torch.Tensor) -> torch.dtype:
    if delta.numel() < BF16_RANGE_MIN:
        return torch.float32
    return torch.bfloat16 if resolve_dtype("auto", delta.device.type) == "bfloat16" else torch.float32


def _thin_svd(d: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top-`rank` singular triplets of a float64 matrix with a short side m, from the eigen-
    decomposition of its m x m Gram matrix (3-4x faster than a full SVD of 192 x 576). Float64
    keeps the squared spectrum accurate far below the kept components; components that vanish
    (rank deficiency) come back as zero rather than as 0/0."""
    wide = d.shape[0] <= d.shape[1]
    m = d if wide else d.T  # [short, long]
    evals, evecs = torch.linalg.eigh(m @ m.T)  # ascending
    S = evals.flip(0).clamp_min(0).sqrt()
    k = min(rank, S.numel())
    U = evecs.flip(1)[:, :k]
    live = S[:k] > S[0] * 1e-7 if S[0] > 0 else torch.zeros(k, dtype=torch.bool, device=d.device)
    Vh = (U.T @ m) / torch.where(live, S[:k], torch.ones_like(S[:k]))[:, None]
    Vh = Vh * live[:, None]
    if wide:
        return U, S, Vh
    return Vh.T, S, U.T


def _row_blocks(out: int, inp: int, entries: int = 1 << 22) -> list[slice]:
    rows = max(1, entries // max(1, inp))
    return [slice(r, min(out, r + rows)) for r in range(0, out, rows)]
