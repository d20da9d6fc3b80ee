"""The reference merge math (adaptermerge.methods.math): each convention pinned, against
independent computations written differently (sorting, topk, explicit loops)."""

import pytest
import torch

from adaptermerge.methods import math


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


def weighted(deltas, weights):
    return torch.stack([d.flatten() * w for d, w in zip(deltas, weights)])


def test_keep_count_rounds_and_keeps_at_least_one():
    assert math.keep_count(10, 0.25) == 2  # round half to even, as Python rounds
    assert math.keep_count(10, 0.26) == 3
    assert math.keep_count(1000, 1e-9) == 1
    assert math.keep_count(7, 1.0) == 7


@pytest.mark.parametrize("shape", [(64, 48), (3000, 1000)])
def test_magnitude_cut_keeps_exactly_k(shape):
    torch.manual_seed(0)
    x = torch.randn(shape)
    for density in (0.01, 0.2, 0.5, 0.9):
        k = math.keep_count(x.numel(), density)
        cut = math.magnitude_cut(x.reshape(1, -1), k)[0]
        assert int((x.abs() >= cut).sum()) == k
        assert cut == x.abs().flatten().sort(descending=True).values[k - 1]


def test_magnitude_cut_ignores_signs_and_counts_ties():
    x = torch.tensor([[-3.0, 3.0, -0.0, 1.0, -2.0]])
    assert [math.magnitude_cut(x, k).item() for k in (1, 2, 3, 4, 5)] == [3.0, 3.0, 2.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="k must be"):
        math.magnitude_cut(x, 0)
    with pytest.raises(ValueError, match="k must be"):
        math.magnitude_cut(x, 6)


def test_trim_keeps_ties_at_the_cut_and_a_zero_cut_keeps_all():
    v = torch.tensor([[0.5, -1.0, 1.0, 0.2], [0.0, -0.0, 4.0, -4.0]])
    got = math.trim(v, torch.tensor([1.0, 0.0]))
    assert got.tolist() == [[0.0, -1.0, 1.0, 0.0], [0.0, -0.0, 4.0, -4.0]]


def test_ties_matches_independent_dense_implementation():
    torch.manual_seed(1)
    deltas = [torch.randn(40, 30) for _ in range(3)]
    for weights in ([1.0, 1.0, 1.0], [0.5, 1.0, 2.0], [1.0, -0.5, 1.0]):
        values = weighted(deltas, weights)
        cuts = math.magnitude_cut(values, math.keep_count(1200, 0.3))
        got = math.ties(values, cuts, torch.tensor(weights)).view(40, 30)
        torch.testing.assert_close(got, dense_ties_reference(deltas, weights, 0.3))


def test_ties_divisor_is_the_weight_sum_not_the_count():
    # Two agreeing entries 1.0 and 3.0 with weights 1 and 3: weighted mean (1*1 + 3*3) / 4 = 2.5;
    # PEFT's count divisor would give (1 + 9) / 2 = 5.
    values = torch.tensor([[1.0 * 1.0], [3.0 * 3.0]])
    assert math.ties(values, torch.zeros(2), torch.tensor([1.0, 3.0])).item() == pytest.approx(2.5)


def test_ties_elects_sign_by_weighted_mass():
    values = torch.tensor([[1.0], [1.0], [-5.0]])
    assert math.ties(values, torch.zeros(3), torch.ones(3)).item() == pytest.approx(-5.0)


def test_ties_is_zero_where_nothing_agrees():
    values = torch.tensor([[2.0, 0.0], [-2.0, 0.0]])  # exact cancellation, and no mass at all
    assert math.ties(values, torch.zeros(2), torch.ones(2)).tolist() == [0.0, 0.0]


def test_kept_counts_count_the_nonzero_survivors():
    v = torch.tensor([[0.0, 1.0, -2.0, 0.5], [3.0, 3.0, 0.0, 0.0]])
    assert math.kept_counts(v, torch.tensor([1.0, 0.0])).tolist() == [2, 2]


def test_dare_rescales_and_is_seeded():
    x = torch.ones(200, 200)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    d1, d2 = math.dare(x, 0.25, g1), math.dare(x, 0.25, g2)
    assert torch.equal(d1, d2)
    assert set(d1.unique().tolist()) <= {0.0, 4.0}
    assert d1.mean().item() == pytest.approx(1.0, abs=0.05)  # expectation preserved
    assert torch.equal(math.dare(x, 1.0, g1), x)


def test_dare_density_zero_is_refused_not_nan():
    # PEFT once divided by a zero density and produced NaN; we refuse it.
    with pytest.raises(ValueError, match="density"):
        math.dare(torch.ones(2, 2), 0.0, torch.Generator())


def test_dora_norm_axis_is_the_output_row_and_a_split_recombines_to_w():
    torch.manual_seed(2)
    w = torch.randn(16, 24)
    m = math.row_norm(w)
    assert m.shape == (16,)
    torch.testing.assert_close(m, torch.stack([row.pow(2).sum().sqrt() for row in w]))
    direction = w / m[:, None]
    torch.testing.assert_close(m[:, None] * direction, w)
    # the DoRA layer formula with a zero delta and m = ||W0|| is the identity
    torch.testing.assert_close(math.dora_weight(w, torch.zeros_like(w), m), w)
