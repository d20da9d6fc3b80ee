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
