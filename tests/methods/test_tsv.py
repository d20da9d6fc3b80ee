"""TSV-M against an independent dense computation (full float64 SVDs of the dense deltas), plus
its invariants and parameter checks."""

import pytest
import torch

from adaptermerge import AdapterMergeError
from adaptermerge.methods import METHODS, MergeContext
from support import dense_polar, random_lora

method = METHODS.get("tsv")
CTX = MergeContext("m", 0, torch.device("cpu"))


def dense_tsv(deltas, ranks, keep, lam):
    """Written apart from the method: out x in SVDs of each delta, the paper's steps in full space."""
    share = max(1, min(deltas[0].shape) // len(deltas))
    top = max(float(torch.linalg.matrix_norm(d, 2)) for d in deltas)
    Us, Ss, Vs = [], [], []
    for d, r in zip(deltas, ranks):
        U, S, Vh = torch.linalg.svd(d)
        k = min(max(1, round(keep * r)), share, int((S > top * 1e-6).sum()))
        Us.append(U[:, :k]), Ss.append(S[:k]), Vs.append(Vh[:k].T)
    return lam * dense_polar(torch.cat(Us, 1)) @ torch.diag(torch.cat(Ss)) @ dense_polar(torch.cat(Vs, 1)).T


def run(inputs, weights, **params):
    return method.merge_module(inputs, weights, None, method.Params(**params), CTX)


@pytest.mark.parametrize("shape, ranks", [((24, 20), (2, 3, 4)), ((12, 10), (4, 4, 4)), ((20, 24), (3, 1))])
@pytest.mark.parametrize("keep, lam", [(1.0, 1.0), (0.5, 0.7)])
def test_matches_dense_svds(shape, ranks, keep, lam):
    inputs = [random_lora(*shape, r, seed) for seed, r in enumerate(ranks)]
    weights = [1.0, -0.5, 2.0][: len(inputs)]
    deltas = [f.delta().double() * w for f, w in zip(inputs, weights)]
    expect = dense_tsv(deltas, ranks, keep, lam)
    got = run(inputs, weights, keep=keep, lambda_=lam)
    torch.testing.assert_close(got.delta().double(), expect, rtol=1e-5, atol=1e-5 * float(expect.abs().max()))


def test_the_width_share_caps_each_task():
    # 12 x 10 with three rank-4 inputs: the paper's share is 10 // 3 = 3 components each
    inputs = [random_lora(12, 10, 4, seed) for seed in range(3)]
    B, A = run(inputs, [1.0] * 3).terms[0]
    assert B.shape[1] == A.shape[0] == 9


def test_one_input_comes_back():
    f = random_lora(24, 20, 4, 7)
    torch.testing.assert_close(run([f], [1.0]).delta(), f.delta(), rtol=1e-5, atol=1e-5)


def test_input_order_does_not_matter_and_missing_inputs_add_nothing():
    inputs = [random_lora(24, 20, r, seed) for seed, r in enumerate((2, 3, 4))]
    weights = [1.0, 0.5, 1.5]
    a = run(inputs, weights).delta()
    b = run([inputs[2], None, inputs[0], inputs[1]], [weights[2], 9.0, weights[0], weights[1]]).delta()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_decorrelates_the_tasks():
    # the merged update's left singular vectors are orthonormal: the task's overlap is gone
    inputs = [random_lora(24, 20, 3, seed) for seed in range(3)]
    B, _ = run(inputs, [1.0] * 3).terms[0]
    X = B / B.norm(dim=0)  # B = U_orth diag(S): columns are the orthonormal directions, scaled
    torch.testing.assert_close(X.T @ X, torch.eye(B.shape[1]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("keep", [0.0, 1.5, -1.0])
def test_keep_is_checked(keep):
    with pytest.raises(AdapterMergeError, match="keep must be in"):
        method.Params(keep=keep)
