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
    oversample: int | None = None,
    seed: int = 0,
    range_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, LowRankStats]:
    """Rank-`rank` factors of a dense delta [out, in], with the error and retained energy.

    Thin matrices (short side up to 4 * (rank + 8)) get an exact decomposition (optimal; see
    _thin_factors). Others a randomized range finder (Halko et al. 2011) whose test matrix starts
    from `sketch` (the stacked input A factors [R, in], padded with Gaussian columns to rank +
    oversample): a TIES or DARE merge of LoRA deltas keeps most of its energy near their row
    spaces, so few power iterations are needed (see power_iters). The approximation is the
    orthogonal projection of delta onto the span of its left factor, so its error follows exactly
    from the spectrum: `||delta - BA||^2 = ||delta||^2 - sum(S_k^2)`.

    Figures below: `benchmarks/profile_ties_stages.py --isa avx2 --optimum` (the 210 modules of
    benchmark case (a), one thread, AVX2): error over all modules 0.56644884, the optimum (a full
    SVD, as PEFT's `ties_svd` computes it) 0.56644819.

    power_iters: default 2, and 0 for deltas of 16M entries or more. Two iterations put a TIES
    merge within float noise of the optimal truncation; one gave 0.56646831 (--power-iters 1). On
    a 14336 x 4096 TIES merge the iteration costs 40 % of the truncation and lowers its error by
    0.04 % (0.60958 -> 0.60935), so the largest modules skip it.

    oversample: Gaussian columns beyond rank; default 4 with a sketch, whose rows already point
    where the energy is, and 8 without. With the sketch, 8 cost 7-9 % more truncation time for an
    error 5e-8 lower (0.56644879, --oversample 8).

    range_dtype: the dtype of the range finder's products (default: bfloat16 for deltas of 512K
    entries or more where the hardware has native bf16, else float32: 3.7x faster for 14336 x 4096
    here, 6.9 ms against 9.6 ms for a 1536 x 576 TIES merge at one thread on an AMX Xeon). The
    range finder only chooses the subspace: bf16's 2^-8 rounding tilts it by about that much and
    loses O(2^-16) of the captured energy (over the 210 modules of benchmark case (a): error
    0.56645026 against 0.56644884 in float32, `profile_ties_stages.py` on an AVX512-BF16 CPU),
    while the factors and the reported error come from the float32 core `Q^T delta`, so the
    error recorded is that of the factors written.
    """
    out, inp = delta.shape
    delta = delta.float()
    norm2 = float(torch.linalg.vector_norm(delta).double() ** 2)  # float32 sums are pairwise: ~1e-7 relative
    if norm2 == 0.0:
        return _zero(out, inp, delta.device)
    if oversample is None:
        oversample = 8 if sketch is None else 4
    width = rank + oversample
    if min(out, inp) <= 4 * (rank + 8):  # an exact decomposition is cheap and optimal
        B, A, S = _thin_factors(delta, rank)
    else:
        gen = torch.Generator(device=delta.device).manual_seed(seed)
        rows = [] if sketch is None else [sketch.float()]
        extra = width - (0 if sketch is None else sketch.shape[0])
        if extra > 0:
            rows.append(torch.randn(inp, extra, generator=gen, device=delta.device).T)
        omega = torch.cat(rows, 0)  # [w, in]; only its span matters (QR of the product)
        fast = range_dtype or _range_dtype(delta)
        if power_iters is None:
            power_iters = 0 if delta.numel() >= NO_POWER_ITER_MIN else 2
        B, A, S = _range_factors(delta, omega, rank, power_iters, fast)
        if fast != torch.float32 and norm2 - float((S[:rank] ** 2).sum()) < 0.01 * norm2:
            # A near-exact truncation (error under 10 %): bf16's O(2^-16) energy loss would
            # no longer be negligible next to the error, so the range is found in float32.
            B, A, S = _range_factors(delta, omega, rank, power_iters, torch.float32)
    k = B.shape[1]
    # B A is delta projected onto the span of B, so ||delta - B A||^2 = ||delta||^2 - sum S_k^2,
    # with both terms in float64 from float32 data. That difference is reliable to a few parts
    # in a million of ||delta||^2; below 1e-3 of it (a near-exact truncation) it is measured.
    resid2 = max(0.0, norm2 - float((S[:k] ** 2).sum()))
    if resid2 < 1e-3 * norm2:
        resid2 = sum(float(torch.linalg.vector_norm(delta[rs] - B[rs] @ A, dtype=torch.float64) ** 2) for rs in _row_blocks(out, inp))
    rel = (resid2 / norm2) ** 0.5
    return B, A, LowRankStats(k, rel, max(0.0, 1.0 - resid2 / norm2), rel < 1e-5)


def _range_factors(delta, omega, rank, power_iters, dtype):
    """Balanced rank-`rank` factors B [out, k], A [k, in] (float32) and the spectrum S (float64)
    of delta restricted to the range found from `delta @ omega.T` (omega [w, in]; products in
    `dtype`; the power iteration's intermediate bases by `basis`, the final one by `orthonormal`),
    from the float32 core `Q^T delta`."""
    M = delta.to(dtype)
    # The products are taken with the thin operand first, so that every result is a contiguous
    # [w, n] block (Y and Z as transposed views): 91-93 GFLOP/s at one AVX2 thread for w = 56
    # and these module shapes, against 64-85 for the [n, w] results of M @ W and M^T @ W.
    Y = (omega.to(dtype) @ M.T).T  # [out, w]
    # Between products only the span matters: a cheap, roughly orthonormal basis keeps the columns
    # from collapsing onto the top direction. A round trip through M and M^T raises cond(Y) by
    # about (s_1 / s_w)^2: 15-20 for a TIES merge. bfloat16 (2^-8) needs a basis every round trip.
    # float32 keeps 2^-24 of each column, so one basis, before the first round trip, is enough
    # while the last Y stays conditioned below SKIP_BASIS_COND (a tilt of its span by at most
    # 6e-5, a relative loss of 4e-9 of the energy kept); past that the iteration is run again
    # with a basis each round trip. Case (a) of the benchmark: 4-6 % of the truncation saved, the
    # error over the 210 modules unchanged at 8 digits (the last Y's Cholesky diagonal spreads
    # by 180-390).
    lazy = dtype == torch.float32 and power_iters > 1
    Q = _power_range(M, Y, power_iters, dtype, every=not lazy)
    if Q is None:
        Q = _power_range(M, Y, power_iters, dtype, every=True)
    del M
    return _core_factors(Q, Q.T @ delta, rank)


def _power_range(M, Y, power_iters, dtype, every):
    """An orthonormal basis (float32) of the range of (M M^T)^power_iters Y, with `basis` before
    the first round trip or (`every`) before each one; None where it skipped some and the last Y
    came out conditioned beyond SKIP_BASIS_COND. The last basis must be orthonormal to float32
    round-off (the reported error follows from it), so it gets `orthonormal`'s treatment."""
    for it in range(power_iters):
        if every or it == 0:
            Y = basis(Y)
        Y = ((Y.T.to(dtype) @ M) @ M.T).T
    return orthonormal(Y) if every else _cholesky_qr(Y, SKIP_BASIS_COND)


SKIP_BASIS_COND = 1e3


def _core_factors(Q, C, rank):
    """Balanced factors of `Q @ C` (Q [m, w] orthonormal columns, C [w, n], both float32) truncated
    to rank: the top eigenpairs of the float64 w x w Gram matrix `C C^T` give the spectrum S and
    the rotation Uc; then B = Q Uc sqrt(S) and A = (Uc / sqrt(S))^T C = sqrt(S) Vh. The Gram route
    is several times faster than an SVD of C and as accurate for the components kept (float64
    keeps the squared spectrum accurate far below them); components that vanish (rank deficiency)
    come back as zero rather than as 0/0. Returns B [m, k], A [k, n] (float32) and S (float64)."""
    S, Uc, live = _gram_eigen(C.double(), rank)  # Uc [w, k]
    k = Uc.shape[1]
    root = S[:k].sqrt()
    inv_root = torch.where(live, 1 / torch.where(live, root, torch.ones_like(root)), torch.zeros_like(root))
    # float32 products: the factors are float32 anyway, and each entry is a dot product of w
    # terms, rounded to about 2^-24 of the largest.
    B = Q @ (Uc * root).float()
    A = (Uc * inv_root).T.float() @ C.float()
    return B, A, S


def basis(Y: torch.Tensor) -> torch.Tensor:
    """A basis [m, w] (float32) of the columns of a tall Y whose columns are orthonormal to about
    cond(Y)^2 * 2^-24: one Cholesky QR pass in float32, through the inverse of the w x w factor
    (a triangular solve against the identity, then a matrix product; 4-5x cheaper here than
    `orthonormal`'s float64 pass). For the intermediate steps of a power iteration, where only the
    span is used. A failed factorization (cond(Y) near 2^12 or above) takes `orthonormal`."""
    Y = Y.float()
    L, info = torch.linalg.cholesky_ex(Y.T @ Y)
    d = L.diagonal()
    if not bool((info == 0) & (d.min() > d.max() * 1e-3)):
        return orthonormal(Y)
    return (_lower_inverse(L) @ Y.T).T  # [m, w], a transposed view: see _range_factors


def _lower_inverse(L: torch.Tensor) -> torch.Tensor:
    # A triangular solve against the identity: 3-4x cheaper than torch.linalg.inv (an LU) for the
    # w x w factors here, and the product with it a matrix product rather than a triangular solve
    # with m right-hand sides (2x cheaper for 1536 x 56).
    return torch.linalg.solve_triangular(L, torch.eye(L.shape[0], dtype=L.dtype, device=L.device), upper=False)


def orthonormal(Y: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis [m, w] (float32) of the columns of a tall Y [m, w].

    Cholesky QR twice in float64 (Yamamoto et al. 2015): two w x w Gram matrices and products
    with the inverse factors, 8x faster here than Householder QR of a 1536 x 56 matrix and
    orthogonal to float64 round-off while cond(Y) stays below ~1e6. Worse conditioned (or
    rank-deficient: an adapter merged with itself repeats its sketch rows) falls back to
    Householder QR."""
    Q = _cholesky_qr(Y, 1e6)
    return torch.linalg.qr(Y.float())[0] if Q is None else Q


def _cholesky_qr(Y: torch.Tensor, max_cond: float) -> torch.Tensor | None:
    """`orthonormal`'s Cholesky QR, or None where the factorization fails or the diagonal of
    Y's Cholesky factor spreads by more than max_cond (cond(Y) about that or more)."""
    Q = Y.double()
    for step in range(2):
        L, info = torch.linalg.cholesky_ex(Q.T @ Q)
        d = L.diagonal()
        if not bool((info == 0) & (d.min() * max_cond > d.max())):
            return None
        Q = (_lower_inverse(L) @ Q.T).T
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


def _thin_factors(d: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Balanced factors of the optimal rank-`rank` truncation of a float32 matrix d whose short
    side m is small, and its spectrum (float64), from the eigendecomposition of its m x m Gram
    matrix in float64 (3-4x faster than a full SVD of 192 x 576). Float64 throughout, not a
    float32 eigendecomposition refined in float64 (0.20 s against 0.25 s for the 60 k/v modules of
    profile_ties_stages.py --isa avx2): LAPACK's float32 eigensolver gave results that depend on
    how many threads run it, and a merge must come out bit for bit the same on one worker or two."""
    m = d.double() if d.shape[0] <= d.shape[1] else d.double().T  # [short, long]
    S, U, live = _gram_eigen(m, rank)
    k = U.shape[1]
    Vh = (U.T @ m) / torch.where(live, S[:k], torch.ones_like(S[:k]))[:, None] * live[:, None]
    if d.shape[0] > d.shape[1]:
        U, Vh = Vh.T, U.T
    B, A = _balanced(U, S[:k], Vh)
    return B, A, S


def _gram_eigen(m: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The spectrum of a float64 matrix m [short, long] from its Gram matrix m m^T (all singular
    values, descending), its top-`rank` left singular vectors U [short, k], and which of those are
    live: a component below 1e-7 of the largest is rank deficiency, to come back as zero rather
    than as 0/0."""
    evals, evecs = torch.linalg.eigh(m @ m.T)  # ascending
    S = evals.flip(0).clamp_min(0).sqrt()
    k = min(rank, S.numel())
    U = evecs.flip(1)[:, :k]
    live = S[:k] > S[0] * 1e-7 if k and S[0] > 0 else torch.zeros(k, dtype=torch.bool, device=m.device)
    return S, U, live


def _row_blocks(out: int, inp: int, entries: int = 1 << 22) -> list[slice]:
    rows = max(1, entries // max(1, inp))
    return [slice(r, min(out, r + rows)) for r in range(0, out, rows)]
