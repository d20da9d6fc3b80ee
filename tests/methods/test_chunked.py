"""The sparse merge from factors: the formed-at-once and the row-block paths, the exact and the
sampled cuts, each backend giving the same bits."""

import pytest
import torch

from adaptermerge.methods import _chunked, backends, math
from adaptermerge.methods._chunked import Combine, Sparsify, sparse_merge
from adaptermerge.methods.backends import Backend
from methods.test_backends import FAST, assert_bitwise
from methods.test_math import dense_ties_reference


def factors(out, inp, ranks, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(out, r, generator=g) for r in ranks], [torch.randn(r, inp, generator=g) for r in ranks]


@pytest.fixture(params=["formed-at-once", "row-blocks"])
def path(request, monkeypatch):
    if request.param == "row-blocks":
        monkeypatch.setattr(_chunked, "DENSE_MAX", 0)
    return request.param


def test_formed_at_once_is_the_reference_composition():
    """With the module formed at once, the merge is math.magnitude_cut then math.ties of the
    weighted deltas, bit for bit."""
    Bs, As = factors(300, 200, (4, 8, 2), seed=1)
    weights = [1.0, -0.6, 1.4]
    got, info = sparse_merge(Bs, As, weights, density=0.3, sparsify=Sparsify.TRIM, combine=Combine.TIES)
    B_stack, A_stack = _chunked._stack([B * w for B, w in zip(Bs, weights)], As)
    values = torch.bmm(B_stack, A_stack).view(3, -1)
    cuts = math.magnitude_cut(values, math.keep_count(300 * 200, 0.3))
    assert_bitwise(got.flatten(), math.ties(values, cuts, torch.tensor(weights)))
    assert info == {}


def test_ties_from_factors_matches_independent_dense_ties(path):
    # 2100 x 1000 crosses the block boundary on the row-block path
    Bs, As = factors(2100, 1000, (4, 4, 4), seed=3)
    weights = [1.0, 0.5, 2.0]
    got, info = sparse_merge(Bs, As, weights, density=0.2, sparsify=Sparsify.TRIM, combine=Combine.TIES, threshold="exact")
    ref = dense_ties_reference([B @ A for B, A in zip(Bs, As)], weights, 0.2)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert info == {}  # an exact cut has nothing to report


@pytest.mark.parametrize("sparsify,combine", [(Sparsify.TRIM, Combine.TIES), (Sparsify.DARE, Combine.TIES), (Sparsify.DARE, Combine.SUM)])
def test_every_backend_gives_the_same_merge(monkeypatch, path, sparsify, combine):
    Bs, As = factors(700, 900, (4, 8, 2), seed=3)
    weights = [1.0, -0.6, 1.4]

    def run(backend):
        monkeypatch.setattr(backends, "choose", lambda *a, **k: backend)
        gens = [torch.Generator().manual_seed(i) for i in range(3)]
        return sparse_merge(Bs, As, weights, density=0.3, sparsify=sparsify, combine=combine, generators=gens, threshold="exact")

    reference = run(Backend.REFERENCE)
    for backend in FAST:
        got = run(backend)
        assert_bitwise(got[0], reference[0])
        assert got[1] == reference[1]


def test_dare_sum_is_the_weighted_sum_of_the_dropped_deltas():
    Bs, As = factors(50, 40, (4, 2), seed=4)
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    got, _ = sparse_merge(Bs, As, [0.5, 2.0], density=0.4, sparsify=Sparsify.DARE, combine=Combine.SUM, generators=gens)
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    expect = sum(math.dare((B * w) @ A, 0.4, g) for B, A, w, g in zip(Bs, As, [0.5, 2.0], gens))
    torch.testing.assert_close(got, expect)


def test_sampled_cut_reports_the_density_it_kept():
    g = torch.Generator().manual_seed(6)
    Bs = [torch.randn(3000, 8, generator=g) * torch.rand(3000, 1, generator=g) for _ in range(2)]  # uneven row scales, as trained B
    As = [torch.randn(8, 700, generator=g) for _ in range(2)]
    got, info = sparse_merge(Bs, As, [1.0, 1.0], density=0.2, sparsify=Sparsify.TRIM, combine=Combine.TIES, threshold="sampled")
    deltas = [B @ A for B, A in zip(Bs, As)]
    for kept in info["density_kept"]:
        assert abs(kept - 0.2) < 0.002  # a 192k-entry stratified sample: standard error ~0.0009
    # The sampled merge is the exact TIES up to the entries at the edge of the cut.
    ref = dense_ties_reference(deltas, [1.0, 1.0], 0.2)
    assert ((got - ref).abs() > 1e-5).float().mean() < 0.01
    assert info["threshold"] == "sampled"


def test_exact_cuts_without_forming_the_deltas_are_exact():
    Bs, As = factors(1200, 500, (4, 8, 2), seed=5)  # mixed ranks: the stack zero-pads them
    k = math.keep_count(1200 * 500, 0.2)
    for B, A, t in zip(Bs, As, _chunked.exact_cuts(Bs, As, k)):
        assert t == (B @ A).abs().flatten().topk(k).values.min()
