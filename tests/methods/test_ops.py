import pytest
import torch

from adaptermerge.methods import _ops


def dense_ties_reference(deltas, weights, density):
    """Independent TIES: topk by magnitude, sign of the weighted sum, weighted mean of agreeing."""
    trimmed = []
    for d in deltas:
        k = max(1, round(density * d.numel()))
        idx = d.abs().flatten().topk(k).indices
        t = torch.zeros(d.numel())
        t[idx] = d.flatten()[idx]
        trimmed.append(t.view_as(d))
    w = torch.tensor(weights, dtype=torch.float32).view(-1, 1, 1)
    values = torch.stack(trimmed) * w
    sign = torch.sign(values.sum(0))
    agree = (torch.sign(values) == sign) & (values != 0)
    den = (agree * w.abs()).sum(0)
    num = (values * agree).sum(0)
    return torch.where(den > 0, num / den.clamp_min(1e-30), torch.zeros(()))


@pytest.mark.parametrize("shape", [(64, 48), (3000, 1000)])  # the second crosses the sampled-bracket path
def test_magnitude_threshold_is_exact(shape):
    torch.manual_seed(0)
    x = torch.randn(shape)
    for density in (0.01, 0.2, 0.5, 0.9):
        k = _ops.keep_count(x.numel(), density)
        t = _ops.magnitude_threshold(x, k)
        assert int((x.abs() >= t).sum()) == k
        assert t == x.abs().flatten().topk(k).values.min()


def test_ties_matches_independent_dense_implementation():
    torch.manual_seed(1)
    deltas = [torch.randn(40, 30) for _ in range(3)]
    for weights in ([1.0, 1.0, 1.0], [0.5, 1.0, 2.0], [1.0, -0.5, 1.0]):
        torch.testing.assert_close(_ops.ties(deltas, weights, 0.3), dense_ties_reference(deltas, weights, 0.3))


def test_ties_divisor_is_the_weight_sum_not_the_count():
    # Two agreeing entries 1.0 and 3.0 with weights 1 and 3: weighted mean (1*1 + 3*3) / 4 = 2.5;
    # PEFT's count divisor would give (1 + 9) / 2 = 5.
    a, b = torch.tensor([[1.0]]), torch.tensor([[3.0]])
    assert _ops.ties([a, b], [1.0, 3.0], 1.0).item() == pytest.approx(2.5)


def test_ties_elects_sign_by_weighted_mass():
    a, b, c = torch.tensor([[1.0]]), torch.tensor([[1.0]]), torch.tensor([[-5.0]])
    assert _ops.ties([a, b, c], [1, 1, 1], 1.0).item() == pytest.approx(-5.0)


@pytest.mark.parametrize("path", ["formed-at-once", "blocked-exact"])
def test_chunked_ties_from_factors_matches_dense_ties(monkeypatch, path):
    from adaptermerge.methods import _chunked

    if path == "blocked-exact":
        monkeypatch.setattr(_chunked, "DENSE_MAX", 0)
    torch.manual_seed(3)
    # 2100 x 1000 crosses the block boundary on the blocked path
    Bs = [torch.randn(2100, 4) for _ in range(3)]
    As = [torch.randn(4, 1000) for _ in range(3)]
    weights = [1.0, 0.5, 2.0]
    got, info = _chunked.sparse_merge(Bs, As, weights, density=0.2, sparsify="trim", combine="ties", threshold="exact")
    ref = dense_ties_reference([B @ A for B, A in zip(Bs, As)], weights, 0.2)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert info == {}  # an exact cut has nothing to report


def test_sampled_cut_reports_the_density_it_kept():
    from adaptermerge.methods import _chunked

    torch.manual_seed(6)
    Bs = [torch.randn(3000, 8) * torch.rand(3000, 1) for _ in range(2)]  # uneven row scales, as trained B
    As = [torch.randn(8, 700) for _ in range(2)]
    got, info = _chunked.sparse_merge(Bs, As, [1.0, 1.0], density=0.2, sparsify="trim", combine="ties", threshold="sampled")
    deltas = [B @ A for B, A in zip(Bs, As)]
    for d, kept in zip(deltas, info["density_kept"]):
        assert abs(kept - 0.2) < 0.002  # a 192k-entry stratified sample: standard error ~0.0009
    cuts = [_ops.magnitude_threshold(d, _ops.keep_count(d.numel(), kept)) for d, kept in zip(deltas, info["density_kept"])]
    # The sampled merge is the exact TIES at the density it reports keeping.
    ref = dense_ties_reference(deltas, [1.0, 1.0], 0.2)
    differ = (got - ref).abs() > 1e-5
    assert differ.float().mean() < 0.01  # only entries at the edge of the cut differ
    assert info["threshold"] == "sampled" and len(cuts) == 2


def test_dare_rescales_and_is_seeded():
    x = torch.ones(200, 200)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    d1, d2 = _ops.dare(x, 0.25, g1), _ops.dare(x, 0.25, g2)
    assert torch.equal(d1, d2)
    assert set(d1.unique().tolist()) <= {0.0, 4.0}
    assert d1.mean().item() == pytest.approx(1.0, abs=0.05)  # expectation preserved
    assert torch.equal(_ops.dare(x, 1.0, g1), x)


def test_dare_density_zero_is_refused_not_nan():
    # PEFT once divided by a zero density and produced NaN; we refuse it.
    with pytest.raises(ValueError, match="density"):
        _ops.dare(torch.ones(2, 2), 0.0, torch.Generator())


def test_dora_split_then_recombine_gives_w_back():
    torch.manual_seed(2)
    w = torch.randn(16, 24)
    m, direction = _ops.dora_split(w)
    torch.testing.assert_close(direction.norm(dim=1), torch.ones(16))
    torch.testing.assert_close(m[:, None] * direction, w)
    # and the DoRA layer formula with a zero delta and m = ||W0|| is the identity
    torch.testing.assert_close(_ops.dora_weight(w, torch.zeros_like(w), m), w)


@pytest.mark.parametrize("weights", [[1.0, 2.0, 0.5], [1.0, -0.7, 0.5, 1.5]])
def test_compiled_kernels_equal_eager(monkeypatch, weights):
    """The fused (torch.compile) block kernel, unrolled over the adapters, gives the same TIES as
    the eager one, for any number of adapters and with a negative weight."""
    from adaptermerge.methods import _chunked, _kernels

    monkeypatch.setattr(_chunked, "DENSE_MAX", 0)  # the blocked path, where the fused kernel runs
    monkeypatch.setenv("ADAPTERMERGE_NATIVE", "0")  # else the C loops run there instead (tests/methods/test_native.py)
    torch.manual_seed(4)
    Bs = [torch.randn(600, 4) for _ in weights]
    As = [torch.randn(4, 4000) for _ in weights]
    args = dict(density=0.3, sparsify="trim", combine="ties", threshold="sampled")
    eager, eager_info = _chunked.sparse_merge(Bs, As, weights, **args)
    monkeypatch.setattr(_kernels, "COMPILE_MIN_ENTRIES", 0)
    fused, fused_info = _chunked.sparse_merge(Bs, As, weights, **args)
    assert not _kernels._failed, "torch.compile failed here; the eager fallback ran instead"
    torch.testing.assert_close(fused, eager, atol=1e-6, rtol=1e-5)
    assert fused_info == eager_info  # the same entries kept


def test_exact_cuts_without_forming_the_deltas_are_exact():
    from adaptermerge.methods import _chunked

    torch.manual_seed(5)
    Bs = [torch.randn(1200, r) for r in (4, 8, 2)]  # mixed ranks: the stack zero-pads them
    As = [torch.randn(r, 500) for r in (4, 8, 2)]
    k = _ops.keep_count(1200 * 500, 0.2)
    for B, A, t in zip(Bs, As, _chunked.exact_cuts(Bs, As, k)):
        d = (B @ A).abs().flatten()
        assert t == d.topk(k).values.min()


def test_radix_select_is_exact_with_ties_and_at_the_ends():
    from adaptermerge.methods._select import kth_largest

    torch.manual_seed(7)
    x = torch.randn(3, 5000).abs()
    x[1, :2500] = 0.5  # half the row one value: the k-th falls inside a run of ties
    x[2] *= 1e-30  # subnormal and tiny values still order by their bits
    for k in (1, 17, 1000, 2500, 4999, 5000):
        expected = x.topk(k, dim=1).values[:, -1]
        assert torch.equal(kth_largest(x, k), expected)
    with pytest.raises(ValueError, match="k must be"):
        kth_largest(x, 0)


def test_radix_select_ignores_signs():
    """The cut is of |value|: signed input (and -0.0) gives what its magnitudes give."""
    from adaptermerge.methods._select import kth_largest

    torch.manual_seed(8)
    x = torch.randn(2, 4000)
    x[1, :1000] = -0.0
    x[1, 1000:1500] = -x[1, 1500:2000]  # equal magnitudes of both signs
    for k in (1, 250, 2000, 3999, 4000):
        expected = x.abs().topk(k, dim=1).values[:, -1]
        assert torch.equal(kth_largest(x, k), expected)
        assert torch.equal(kth_largest(x.abs(), k), expected)
