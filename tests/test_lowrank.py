import pytest
import torch

from adaptermerge.lowrank import factor_sum, truncate


def test_factor_sum_is_exact_and_finds_numerical_rank():
    torch.manual_seed(0)
    B1, A1 = torch.randn(50, 4), torch.randn(4, 30)
    B2, A2 = torch.randn(50, 6), torch.randn(6, 30)
    B, A, stats = factor_sum([B1, B2], [A1, A2])
    torch.testing.assert_close(B @ A, B1 @ A1 + B2 @ A2, atol=1e-4, rtol=1e-4)
    assert stats.rank == 10 and stats.exact and stats.rel_error < 1e-6
    # the same adapter twice is still rank 4, not 8
    B, A, stats = factor_sum([B1, B1], [A1, A1])
    assert stats.rank == 4
    torch.testing.assert_close(B @ A, 2 * B1 @ A1, atol=1e-4, rtol=1e-4)


def test_factor_sum_truncation_is_optimal_and_error_is_exact():
    torch.manual_seed(1)
    B1, A1 = torch.randn(40, 8), torch.randn(8, 20)
    full = B1 @ A1
    B, A, stats = factor_sum([B1], [A1], rank=3)
    U, S, Vh = torch.linalg.svd(full)
    best = (U[:, :3] * S[:3]) @ Vh[:3]
    torch.testing.assert_close(B @ A, best, atol=1e-4, rtol=1e-4)
    measured = ((full - B @ A).norm() / full.norm()).item()
    assert abs(measured - stats.rel_error) < 1e-4 and not stats.exact


def test_truncate_reports_measured_error():
    torch.manual_seed(2)
    d = torch.randn(300, 200)
    B, A, stats = truncate(d, 10)
    measured = ((d - B @ A).norm() / d.norm()).item()
    assert abs(measured - stats.rel_error) < 1e-4
    assert 0 < stats.energy < 1 and stats.rank == 10
    # the randomized path (large matrix), started from a sketch of the row space
    big = torch.randn(3000, 8) @ torch.randn(8, 1500) + 0.01 * torch.randn(3000, 1500)
    B, A, stats = truncate(big, 8, sketch=torch.randn(8, 1500))
    measured = ((big - B @ A).norm() / big.norm()).item()
    assert abs(measured - stats.rel_error) < 1e-3
    U, S, Vh = torch.linalg.svd(big, full_matrices=False)
    optimal = ((S[8:] ** 2).sum() / (S**2).sum()).sqrt().item()
    assert measured <= optimal * 1.01
    low = torch.randn(300, 5) @ torch.randn(5, 200)
    _, _, stats = truncate(low, 5)
    assert stats.rel_error < 1e-4


@pytest.mark.parametrize("shape", [(40, 120), (120, 40)], ids=["wide", "tall"])
def test_truncate_thin_matrices_is_optimal_and_survives_rank_deficiency(shape):
    torch.manual_seed(3)
    d = torch.randn(shape)  # short side 40 <= 4 * (10 + 8): the Gram eigendecomposition path
    B, A, stats = truncate(d, 10)
    S = torch.linalg.svdvals(d.double())
    optimal = ((S[10:] ** 2).sum() / (S**2).sum()).sqrt().item()
    assert B.shape == (shape[0], 10) and A.shape == (10, shape[1])
    assert stats.rel_error == pytest.approx(optimal, rel=1e-5)
    low = torch.randn(shape[0], 3) @ torch.randn(3, shape[1])  # rank 3, asked for 10
    B, A, stats = truncate(low, 10)
    assert torch.isfinite(B).all() and torch.isfinite(A).all() and stats.rel_error < 1e-5


def test_bf16_range_finder_keeps_the_error_of_float32():
    torch.manual_seed(4)
    flat = torch.randn(600, 500)  # a flat spectrum, as a TIES merge has: the error is large
    _, _, s32 = truncate(flat, 16, range_dtype=torch.float32)
    _, _, s16 = truncate(flat, 16, range_dtype=torch.bfloat16)
    assert s16.rel_error <= s32.rel_error * 1.001
    # near-exact (error under 10 %): the range is found again in float32, so no bf16 loss shows
    low = torch.randn(600, 8) @ torch.randn(8, 500) + 0.001 * torch.randn(600, 500)
    B, A, stats = truncate(low, 8, range_dtype=torch.bfloat16)
    S = torch.linalg.svdvals(low)
    optimal = ((S[8:] ** 2).sum() / (S**2).sum()).sqrt().item()
    assert stats.rel_error <= optimal * 1.01
    assert abs(stats.rel_error - ((low - B @ A).norm() / low.norm()).item()) < 1e-4


def test_orthonormal_spans_the_columns_and_falls_back_when_rank_deficient():
    from adaptermerge.lowrank import orthonormal

    torch.manual_seed(3)
    Y = torch.randn(500, 40)
    Q = orthonormal(Y)
    torch.testing.assert_close(Q.T @ Q, torch.eye(40), atol=1e-5, rtol=0)
    torch.testing.assert_close(Q @ (Q.T @ Y), Y, atol=1e-4, rtol=1e-4)  # same span
    # Repeated columns (an adapter merged with itself repeats its sketch): Cholesky QR would
    # divide by ~0; the Householder fallback still returns orthonormal columns spanning Y.
    twice = torch.cat([Y[:, :20], Y[:, :20]], 1)
    Q = orthonormal(twice)
    assert torch.isfinite(Q).all()
    torch.testing.assert_close(Q.T @ Q, torch.eye(40), atol=1e-5, rtol=0)
    torch.testing.assert_close(Q @ (Q.T @ twice), twice, atol=1e-4, rtol=1e-4)


def test_power_iteration_basis_spans_the_columns_and_falls_back_when_ill_conditioned():
    from adaptermerge.lowrank import basis

    torch.manual_seed(5)
    Y = torch.randn(500, 40) @ torch.diag(torch.logspace(0, 1.5, 40))  # cond ~ 30
    Q = basis(Y)
    torch.testing.assert_close(Q.T @ Q, torch.eye(40), atol=1e-3, rtol=0)  # roughly orthonormal
    P = torch.linalg.qr(Q.double())[0]
    torch.testing.assert_close(P @ (P.T @ Y.double()), Y.double(), atol=1e-4, rtol=1e-4)  # same span
    # cond ~ 1e6 defeats one float32 Cholesky pass: the result is orthonormal's, not a skewed basis
    bad = torch.randn(500, 40) @ torch.diag(torch.logspace(0, 6, 40))
    torch.testing.assert_close(basis(bad).T @ basis(bad), torch.eye(40), atol=1e-5, rtol=0)


def test_default_truncation_of_a_ties_like_delta_is_within_float_noise_of_optimal():
    """The default power iterations keep a sparse merge's truncation at the full SVD's error
    (PEFT's ties_svd computes that one); one iteration was measurably worse."""
    torch.manual_seed(4)
    deltas = [torch.randn(600, 8) @ torch.randn(8, 400) for _ in range(3)]
    trimmed = [d * (d.abs() >= d.abs().flatten().kthvalue(int(0.8 * d.numel())).values) for d in deltas]
    merged = sum(trimmed) / 3
    sketch = torch.cat([torch.linalg.svd(d)[2][:8] for d in deltas])  # the row spaces, as A factors
    S = torch.linalg.svdvals(merged.double())
    optimal = float((S[24:] ** 2).sum().sqrt() / S.norm())
    _, _, default = truncate(merged, 24, sketch=sketch)
    _, _, one = truncate(merged, 24, sketch=sketch, power_iters=1)
    assert default.rel_error - optimal < 2e-6
    assert one.rel_error - optimal > default.rel_error - optimal


def test_power_iteration_skips_a_basis_only_while_the_range_stays_well_conditioned():
    """float32 power iterations take one basis, before the first round trip, when the last range
    comes out conditioned below SKIP_BASIS_COND (a flat, TIES-like spectrum); a steep spectrum
    (cond beyond it) is run again with a basis every round trip, and stays optimal."""
    from adaptermerge.lowrank import SKIP_BASIS_COND, _power_range, orthonormal

    torch.manual_seed(6)
    omega = torch.randn(20, 500)
    flat = torch.randn(600, 500)
    lazy = _power_range(flat, flat @ omega.T, 2, torch.float32, every=False)
    every = _power_range(flat, flat @ omega.T, 2, torch.float32, every=True)
    assert lazy is not None
    # the same subspace to float32 round-off: the energy each captures agrees to 1e-6
    captured = [float((Q.double().T @ flat.double()).pow(2).sum()) for Q in (lazy, every)]
    assert captured[0] == pytest.approx(captured[1], rel=1e-6)
    U, _, Vh = torch.linalg.svd(torch.randn(600, 500), full_matrices=False)
    steep = (U[:, :40] * torch.logspace(0, -2, 40)) @ Vh[:40]  # cond((M M^T)^2 M omega) ~ 1e8
    assert torch.linalg.cond(steep @ steep.T @ steep @ steep.T @ steep @ omega.T) > SKIP_BASIS_COND
    assert _power_range(steep, steep @ omega.T, 2, torch.float32, every=False) is None
    torch.testing.assert_close(orthonormal(steep @ omega.T).T @ orthonormal(steep @ omega.T), torch.eye(20), atol=1e-5, rtol=0)
    B, A, stats = truncate(steep, 12)
    S = torch.linalg.svdvals(steep.double())
    optimal = float((S[12:] ** 2).sum().sqrt() / S.norm())
    measured = float((steep.double() - B.double() @ A.double()).norm() / steep.double().norm())
    assert stats.rel_error == pytest.approx(optimal, rel=1e-4) and measured == pytest.approx(stats.rel_error, rel=1e-4)


@pytest.mark.parametrize("shape", [(48, 200), (200, 48), (400, 300)], ids=["wide", "tall", "randomized"])
def test_truncated_factors_are_balanced(shape):
    """B = U sqrt(S) and A = sqrt(S) V^T: B^T B = A A^T = diag(S), on both paths (S the exact
    spectrum on the thin path, the range finder's on the randomized one)."""
    torch.manual_seed(7)
    d = torch.randn(shape)
    B, A, stats = truncate(d, 6)
    gram = B.double().T @ B.double()
    S = gram.diagonal()
    torch.testing.assert_close(gram, torch.diag(S), atol=1e-5 * float(S[0]), rtol=0)
    torch.testing.assert_close(A.double() @ A.double().T, torch.diag(S), atol=1e-5 * float(S[0]), rtol=0)
    assert bool((S[:-1] >= S[1:]).all())
    if min(shape) < 100:  # the thin path: the exact top of the spectrum
        torch.testing.assert_close(S, torch.linalg.svdvals(d.double())[:6], atol=1e-5 * float(S[0]), rtol=0)


def test_truncation_is_deterministic_with_a_seed_and_oversamples_less_with_a_sketch():
    torch.manual_seed(8)
    d, sketch = torch.randn(400, 300), torch.randn(10, 300)
    B1, A1, s1 = truncate(d, 10, sketch=sketch, seed=3)
    B2, A2, s2 = truncate(d, 10, sketch=sketch, seed=3)
    assert torch.equal(B1, B2) and torch.equal(A1, A2) and s1 == s2
    # the default with a sketch is 4 extra columns, without one 8
    assert torch.equal(truncate(d, 10, sketch=sketch, oversample=4, seed=3)[0], B1)
    assert torch.equal(truncate(d, 10, oversample=8)[0], truncate(d, 10)[0])
