"""Core Space merging against an independent dense computation (reference bases from dense SVDs of
the stacked factors, the cores formed from the dense deltas, a sort-based TIES), plus the
invariants: rotation-invariant inner methods give the same merge as in the full space."""

import pytest
import torch

from adaptermerge import AdapterMergeError
from adaptermerge.methods import METHODS, MergeContext
from support import random_lora, sorted_ties

method = METHODS.get("core")
CTX = MergeContext("m", 0, torch.device("cpu"))


def dense_core_ties(inputs, weights, density, lam):
    B = torch.cat([f.B.double() * f.scale for f in inputs], 1)
    A = torch.cat([f.A.double() for f in inputs], 0)
    U = torch.linalg.svd(B, full_matrices=False)[0]  # [out, p]: left singular vectors of the stacked B's
    V = torch.linalg.svd(A, full_matrices=False)[2].T  # [in, q]: right singular vectors of the stacked A's
    cores = [U.T @ f.delta().double() @ V for f in inputs]
    values = torch.stack([m.reshape(-1) * w for m, w in zip(cores, weights)])
    return lam * U @ sorted_ties(values, weights, density).view(cores[0].shape) @ V.T


def run(inputs, weights, ctx=CTX, **params):
    return method.merge_module(inputs, weights, None, method.Params(**params), ctx)


CASES = [((24, 20), (2, 3, 4)), ((12, 10), (4, 4, 4)), ((20, 24), (3, 1))]


@pytest.mark.parametrize("shape, ranks", CASES)
@pytest.mark.parametrize("density", [1.0, 0.3, 0.1])
def test_ties_in_core_space_matches_dense_bases(shape, ranks, density):
    inputs = [random_lora(*shape, r, seed) for seed, r in enumerate(ranks)]
    weights = [1.0, -0.5, 2.0][: len(inputs)]
    expect = dense_core_ties(inputs, weights, density, 0.8)
    got = run(inputs, weights, inner="ties", density=density, lambda_=0.8)
    torch.testing.assert_close(got.delta().double(), expect, rtol=1e-5, atol=1e-5 * float(expect.abs().max()))


@pytest.mark.parametrize("inner", ["task_arithmetic", "iso_c", "iso_cts", "tsv"])
@pytest.mark.parametrize("shape, ranks", [((24, 20), (3, 3, 3)), ((20, 24), (2, 2))])
def test_rotation_invariant_methods_give_the_full_space_merge(inner, shape, ranks):
    inputs = [random_lora(*shape, r, seed) for seed, r in enumerate(ranks)]
    weights = [1.0, 0.5, -1.5][: len(inputs)]
    full = METHODS.get(inner)
    expect = full.merge_module(inputs, weights, None, full.Params(lambda_=1.3), CTX).delta()
    got = run(inputs, weights, inner=inner, lambda_=1.3).delta()
    torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-4 * float(expect.abs().max()))


def test_one_input_comes_back():
    f = random_lora(24, 20, 4, 7)
    torch.testing.assert_close(run([f], [1.0], inner="ties", density=1.0).delta(), f.delta(), rtol=1e-5, atol=1e-5)


def test_input_order_does_not_matter():
    inputs = [random_lora(24, 20, r, seed) for seed, r in enumerate((2, 3, 4))]
    a = run(inputs, [1.0, 0.5, 1.5], density=0.3).delta()
    b = run([inputs[2], None, inputs[0], inputs[1]], [1.5, 9.0, 1.0, 0.5], density=0.3).delta()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_output_is_low_rank_and_dare_is_seeded():
    inputs = [random_lora(24, 20, r, seed) for seed, r in enumerate((2, 3))]
    a = run(inputs, [1.0, 1.0], inner="dare_ties", density=0.5)
    assert sum(B.shape[1] for B, _ in a.terms) <= 5  # at most the core's width
    torch.testing.assert_close(a.delta(), run(inputs, [1.0, 1.0], inner="dare_ties", density=0.5).delta())
    other = run(inputs, [1.0, 1.0], MergeContext("m", 1, torch.device("cpu")), inner="dare_ties", density=0.5)
    assert not torch.allclose(a.delta(), other.delta())


def test_density_zero_takes_the_inner_default():
    assert method.inner_params(method.Params(inner="ties")).density == METHODS.get("ties").Params().density
    assert method.inner_params(method.Params(inner="dare_ties")).density == METHODS.get("dare_ties").Params().density
    assert method.inner_params(method.Params(inner="dare_ties", density=0.3, lambda_=2.0)) == METHODS.get("dare_ties").Params(density=0.3, lambda_=2.0)


@pytest.mark.parametrize("params, message", [({"inner": "regmean"}, "inner must be one of"), ({"density": 1.5}, "density must be in"),
                                             ({"density": -0.1}, "density must be in")])
def test_parameters_are_checked(params, message):
    with pytest.raises(AdapterMergeError, match=message):
        method.Params(**params)


def test_an_adapter_merged_with_itself_is_itself():
    # rank-deficient stacks: the reference bases carry directions where every core is zero
    f = random_lora(24, 20, 4, 7)
    torch.testing.assert_close(run([f, f], [1.0, 1.0], inner="ties", density=1.0).delta(), f.delta(), rtol=1e-5, atol=1e-5)
