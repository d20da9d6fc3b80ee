"""iso_c and iso_cts against an independent dense computation (out x in float64 SVDs), plus their
invariants and parameter checks."""

import pytest
import torch

from adaptermerge import AdapterMergeError
from adaptermerge.methods import METHODS, MergeContext
from adaptermerge.methods.iso import cts_sizes
from support import dense_polar, random_lora

iso_c, iso_cts = METHODS.get("iso_c"), METHODS.get("iso_cts")
CTX = MergeContext("m", 0, torch.device("cpu"))


def dense_iso_c(total, lam):
    U, S, Vh = torch.linalg.svd(total)
    k = int((S > S[0] * 1e-6).sum())
    return lam * S[:k].mean() * U[:, :k] @ Vh[:k]


def dense_iso_cts(deltas, ranks, common, lam):
    """The paper's steps on the dense matrices, with the LoRA budget min(out, in, sum of ranks)."""
    total = sum(deltas)
    width = min(*total.shape, sum(ranks))
    T = len(deltas)
    k = int(common * width)
    n = round((width - k) / T)
    if n * T > width:
        n = width // T
    k = width - n * T
    U, S, Vh = torch.linalg.svd(total)
    k = min(k, int((S > S[0] * 1e-6).sum()))
    Us, Ss, Vs = [U[:, :k]], [S[:k]], [Vh[:k].T]
    for d in deltas:
        Ut, St, Vt = torch.linalg.svd(d - U[:, :k] @ U[:, :k].T @ d)
        j = min(n, int((St > S[0] * 1e-6).sum()))
        Us.append(Ut[:, :j]), Ss.append(St[:j]), Vs.append(Vt[:j].T)
    return lam * torch.cat(Ss).mean() * dense_polar(torch.cat(Us, 1)) @ dense_polar(torch.cat(Vs, 1)).T


def run(method, inputs, weights, **params):
    return method.merge_module(inputs, weights, None, method.Params(**params), CTX)


CASES = [((24, 20), (2, 3, 4)), ((12, 10), (4, 4, 4)), ((20, 24), (3, 1))]


@pytest.mark.parametrize("shape, ranks", CASES)
@pytest.mark.parametrize("lam", [1.0, 1.3])
def test_iso_c_matches_a_dense_svd(shape, ranks, lam):
    inputs = [random_lora(*shape, r, seed) for seed, r in enumerate(ranks)]
    weights = [1.0, -0.5, 2.0][: len(inputs)]
    expect = dense_iso_c(sum(f.delta().double() * w for f, w in zip(inputs, weights)), lam)
    got = run(iso_c, inputs, weights, lambda_=lam).delta().double()
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-5 * float(expect.abs().max()))


@pytest.mark.parametrize("shape, ranks", CASES)
@pytest.mark.parametrize("common", [0.8, 0.5, 0.0])
def test_iso_cts_matches_dense_svds(shape, ranks, common):
    inputs = [random_lora(*shape, r, seed) for seed, r in enumerate(ranks)]
    weights = [1.0, -0.5, 2.0][: len(inputs)]
    expect = dense_iso_cts([f.delta().double() * w for f, w in zip(inputs, weights)], ranks, common, 1.2)
    got = run(iso_cts, inputs, weights, common=common, lambda_=1.2).delta().double()
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-5 * float(expect.abs().max()))


def test_iso_c_flattens_the_spectrum_to_its_mean():
    inputs = [random_lora(24, 20, r, seed) for seed, r in enumerate((2, 3))]
    total = sum(f.delta().double() for f in inputs)
    S = torch.linalg.svdvals(total)[:5]
    got = torch.linalg.svdvals(run(iso_c, inputs, [1.0, 1.0]).delta().double())
    torch.testing.assert_close(got[:5], S.mean().expand(5), rtol=1e-5, atol=0)
    assert float(got[5]) < 1e-4 * float(S.mean())  # the rank of the sum, no more


def test_iso_cts_with_all_common_is_iso_c():
    inputs = [random_lora(24, 20, r, seed) for seed, r in enumerate((2, 3, 4))]
    a = run(iso_cts, inputs, [1.0, 2.0, 0.5], common=1.0).delta()
    b = run(iso_c, inputs, [1.0, 2.0, 0.5]).delta()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_sizes_follow_the_papers_rounding():
    assert cts_sizes(48, 3, 0.8) == (39, 3)  # int(38.4) = 38; round(10 / 3) = 3 each; the rest common
    assert cts_sizes(10, 3, 0.8) == (7, 1)  # round(2 / 3) = 1
    assert cts_sizes(7, 2, 0.0) == (1, 3)  # round(3.5) = 4 would overflow 7: floored
    assert cts_sizes(12, 3, 1.0) == (12, 0)


@pytest.mark.parametrize("method", [iso_c, iso_cts])
def test_input_order_does_not_matter(method):
    inputs = [random_lora(24, 20, r, seed) for seed, r in enumerate((2, 3, 4))]
    a = run(method, inputs, [1.0, 0.5, 1.5]).delta()
    b = run(method, [inputs[2], None, inputs[0], inputs[1]], [1.5, 9.0, 1.0, 0.5]).delta()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("common", [-0.1, 1.5])
def test_common_is_checked(common):
    with pytest.raises(AdapterMergeError, match="common must be in"):
        iso_cts.Params(common=common)
