"""RegMean's closed form against its documented conventions and an independent least squares."""

import pytest
import torch

from adaptermerge.errors import AdapterMergeError
from adaptermerge.methods.regmean import regmean_terms, shrink_offdiag

OUT, IN = 6, 10


def _adapter(seed, r=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(OUT, r, generator=g, dtype=torch.float64), torch.randn(r, IN, generator=g, dtype=torch.float64)


def _inputs(seed, n=40, basis=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN if basis is None else basis.shape[0], generator=g, dtype=torch.float64)
    return x if basis is None else x @ basis


def _gram(x):
    return x.T @ x / x.shape[0]


def _delta(terms):
    return sum(B.double() @ A.double() for B, A in terms)


def test_equal_grams_give_the_weighted_average():
    facs = [_adapter(1), _adapter(2, r=3)]
    g = _gram(_inputs(0))
    merged = _delta(regmean_terms(facs, [g, g], [1.0, 3.0], ridge=0.0))
    expected = 0.25 * facs[0][0] @ facs[0][1] + 0.75 * facs[1][0] @ facs[1][1]
    torch.testing.assert_close(merged, expected, atol=1e-5, rtol=1e-5)


def test_disjoint_inputs_keep_each_delta_at_full_strength_on_its_own_inputs():
    eye = torch.eye(IN, dtype=torch.float64)
    x1, x2 = _inputs(1, basis=eye[:5]), _inputs(2, basis=eye[5:])  # inputs on disjoint coordinates
    facs = [_adapter(3), _adapter(4)]
    merged = _delta(regmean_terms(facs, [_gram(x1), _gram(x2)], [1.0, 1.0], ridge=0.0))
    for x, (B, A) in ((x1, facs[0]), (x2, facs[1])):
        torch.testing.assert_close(x @ merged.T, x @ (B @ A).T, atol=1e-5, rtol=1e-5)


def test_matches_an_independent_weighted_least_squares():
    facs = [_adapter(5), _adapter(6), _adapter(7, r=1)]
    xs = [_inputs(10 + i, n=8 + 6 * i) for i in range(3)]  # few tokens each: the sum is still full rank
    weights = [0.5, 2.0, 1.0]
    merged = _delta(regmean_terms(facs, [_gram(x) for x in xs], weights, ridge=0.0))
    # minimize sum_i w_i/n_i ||X_i D^T - X_i D_i^T||^2: stack sqrt(w_i/n_i) X_i and solve
    rows = torch.cat([(w / x.shape[0]) ** 0.5 * x for x, w in zip(xs, weights)])
    targets = torch.cat([(w / x.shape[0]) ** 0.5 * x @ (B @ A).T for x, w, (B, A) in zip(xs, weights, facs)])
    reference = torch.linalg.lstsq(rows, targets).solution.T
    torch.testing.assert_close(merged, reference, atol=1e-5, rtol=1e-5)


def test_weights_are_relative():
    facs = [_adapter(1), _adapter(2)]
    grams = [_gram(_inputs(3)), _gram(_inputs(4))]
    a = _delta(regmean_terms(facs, grams, [1.0, 2.0]))
    b = _delta(regmean_terms(facs, grams, [10.0, 20.0]))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_offdiag_zero_is_a_per_input_feature_weighted_average():
    facs = [_adapter(1), _adapter(2)]
    grams = [_gram(_inputs(3) * torch.linspace(0.2, 2, IN, dtype=torch.float64)), _gram(_inputs(4))]
    merged = _delta(regmean_terms(facs, grams, [1.0, 1.0], offdiag=0.0, ridge=0.0))
    d = [g.diagonal() for g in grams]
    expected = ((facs[0][0] @ facs[0][1]) * d[0] + (facs[1][0] @ facs[1][1]) * d[1]) / (d[0] + d[1])
    torch.testing.assert_close(merged, expected, atol=1e-5, rtol=1e-5)
    shrunk = shrink_offdiag(grams[0], 0.3)
    torch.testing.assert_close(shrunk.diagonal(), grams[0].diagonal())
    torch.testing.assert_close(shrunk[0, 1], 0.3 * grams[0][0, 1])


def test_a_missing_adapter_counts_its_inputs_with_a_zero_delta_and_lambda_scales():
    facs = [_adapter(1), None]
    g = _gram(_inputs(2))
    merged = _delta(regmean_terms(facs, [g, g], [1.0, 1.0], ridge=0.0, strength=3.0))
    torch.testing.assert_close(merged, 1.5 * facs[0][0] @ facs[0][1], atol=1e-5, rtol=1e-5)


def test_result_has_at_most_the_summed_rank():
    facs = [_adapter(1, r=2), _adapter(2, r=3)]
    merged = _delta(regmean_terms(facs, [_gram(_inputs(3)), _gram(_inputs(4))], [1.0, 1.0]))
    assert int(torch.linalg.matrix_rank(merged)) == 5


def test_singular_grams_are_solved_on_the_inputs_seen_and_zero_grams_are_a_clear_error():
    x = _inputs(1, n=3)  # rank 3 < IN: Cholesky fails without a ridge, the eigenvalue floor takes over
    B, A = _adapter(1)
    g = _gram(x)
    g.diagonal().sub_(1e-12)  # float32 round-off can leave eigenvalues just below zero
    for ridge in (0.0, 1e-6):
        merged = _delta(regmean_terms([(B, A)], [g], [1.0], ridge=ridge))
        torch.testing.assert_close(x @ merged.T, x @ (B @ A).T, atol=1e-4, rtol=1e-4)
    with pytest.raises(AdapterMergeError, match="never reached"):
        regmean_terms([(B, A)], [torch.zeros(IN, IN, dtype=torch.float64)], [1.0])
