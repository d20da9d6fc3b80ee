"""KnOTS against an independent dense computation (an SVD of the dense concatenated deltas and a
sort-based TIES), plus its invariants and parameter checks."""

import pytest
import torch

from adaptermerge import AdapterMergeError
from adaptermerge.methods import METHODS, MergeContext
from support import random_lora, sorted_ties

method = METHODS.get("knots")
CTX = MergeContext("m", 0, torch.device("cpu"))


def dense_knots(deltas, weights, density, lam):
    out, inp = deltas[0].shape
    U, S, Vh = torch.linalg.svd(torch.cat(deltas, 1), full_matrices=False)  # [out, T * in]
    rho = int((S > S[0] * 1e-6).sum())
    coeffs = [S[:rho, None] * Vh[:rho, t * inp:(t + 1) * inp] for t in range(len(deltas))]  # S V_t^T
    values = torch.stack([c.reshape(-1) * w for c, w in zip(coeffs, weights)])
    return lam * U[:, :rho] @ sorted_ties(values, weights, density).view(rho, inp)


def run(inputs, weights, **params):
    return method.merge_module(inputs, weights, None, method.Params(**params), CTX)


@pytest.mark.parametrize("shape, ranks", [((24, 20), (2, 3, 4)), ((12, 10), (4, 4, 4)), ((20, 24), (3, 1))])
@pytest.mark.parametrize("density", [1.0, 0.3, 0.05])
def test_ties_matches_a_dense_joint_svd(shape, ranks, density):
    inputs = [random_lora(*shape, r, seed) for seed, r in enumerate(ranks)]
    weights = [1.0, 0.5, 2.0][: len(inputs)]
    expect = dense_knots([f.delta().double() for f in inputs], weights, density, 0.7)
    got = run(inputs, weights, density=density, lambda_=0.7)
    torch.testing.assert_close(got.delta().double(), expect, rtol=1e-5, atol=1e-5 * float(expect.abs().max()))
    assert got.terms[0][0].shape[1] <= sum(ranks)  # exact, low rank


def test_one_input_comes_back():
    f = random_lora(24, 20, 4, 7)
    torch.testing.assert_close(run([f], [1.0]).delta(), f.delta(), rtol=1e-5, atol=1e-5)


def test_aligned_coefficients_differ_from_ties_on_the_deltas():
    # the point of the alignment: the same trim on the raw deltas gives another merge
    inputs = [random_lora(24, 20, r, seed) for seed, r in enumerate((2, 3, 4))]
    got = run(inputs, [1.0] * 3, density=0.3).delta()
    ties = METHODS.get("ties")
    plain = ties.merge_module(inputs, [1.0] * 3, None, ties.Params(density=0.3), CTX).delta()
    assert float((got - plain).norm()) > 0.05 * float(plain.norm())


def test_input_order_does_not_matter():
    inputs = [random_lora(24, 20, r, seed) for seed, r in enumerate((2, 3, 4))]
    a = run(inputs, [1.0, 0.5, 1.5], density=0.4).delta()
    b = run([inputs[2], None, inputs[0], inputs[1]], [1.5, 9.0, 1.0, 0.5], density=0.4).delta()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_dare_ties_is_seeded_and_at_density_one_is_ties():
    inputs = [random_lora(24, 20, r, seed) for seed, r in enumerate((2, 3))]
    full = run(inputs, [1.0, 1.0], inner="dare_ties", density=1.0).delta()
    torch.testing.assert_close(full, run(inputs, [1.0, 1.0]).delta())
    a = run(inputs, [1.0, 1.0], inner="dare_ties", density=0.3).delta()
    torch.testing.assert_close(a, run(inputs, [1.0, 1.0], inner="dare_ties", density=0.3).delta())
    other = MergeContext("m", 1, torch.device("cpu"))
    b = method.merge_module(inputs, [1.0, 1.0], None, method.Params(inner="dare_ties", density=0.3), other).delta()
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("params, message", [({"density": 0.0}, "density must be in"), ({"density": 1.5}, "density must be in"),
                                             ({"inner": "linear"}, "inner must be one of ties, dare_ties")])
def test_parameters_are_checked(params, message):
    with pytest.raises(AdapterMergeError, match=message):
        method.Params(**params)


def test_an_adapter_merged_with_itself_is_itself():
    # the stacked factors are rank deficient: the joint SVD keeps the numerical rank only
    f = random_lora(24, 20, 4, 7)
    torch.testing.assert_close(run([f, f], [1.0, 1.0]).delta(), f.delta(), rtol=1e-5, atol=1e-5)
