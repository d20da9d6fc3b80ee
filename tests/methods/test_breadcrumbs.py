"""Model Breadcrumbs against an independent dense computation (a sort of each delta's magnitudes,
in float64), plus its invariants and parameter checks."""

import pytest
import torch

from adaptermerge import AdapterMergeError, load_adapter, merge
from adaptermerge.adapter import LoraFactors
from adaptermerge.methods import METHODS, MergeContext
from adaptermerge.methods.breadcrumbs import band_counts, band_mask

method = METHODS.get("breadcrumbs")


def lora(out, inp, r, seed, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return LoraFactors(torch.randn(r, inp, generator=g), torch.randn(out, r, generator=g) * torch.rand(out, 1, generator=g), r * scale, scale)


def sorted_band(delta: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Written apart from the method: rank the entries by |value| (a full sort), drop the first
    round(gamma * N) ranks and keep the next round(density * N)."""
    flat = delta.flatten().double()
    n = flat.numel()
    keep = max(1, min(n, round(density * n)))
    top = min(round(gamma * n), n - keep)
    order = sorted(range(n), key=lambda j: -abs(flat[j].item()))
    size = [abs(flat[j].item()) for j in order]
    # no tie across either edge of the band: the sort and the method's cuts then pick the same entries
    assert (top == 0 or size[top - 1] != size[top]) and (top + keep == n or size[top + keep - 1] != size[top + keep])
    out = torch.zeros(n, dtype=torch.float64)
    for j in order[top: top + keep]:
        out[j] = flat[j]
    return out.view_as(delta)


def run(inputs, weights, **params):
    ctx = MergeContext("m", 0, torch.device("cpu"))
    return method.merge_module(inputs, weights, None, method.Params(**params), ctx).dense


@pytest.mark.parametrize("shape", [(12, 10), (40, 33), (64, 128)])
@pytest.mark.parametrize("density,gamma", [(0.9, 0.01), (0.5, 0.1), (0.3, 0.3), (0.05, 0.0), (0.2, 0.8)])
def test_matches_an_independent_sort_of_each_delta(shape, density, gamma):
    inputs = [lora(*shape, r, seed) for r, seed in ((4, 1), (2, 2), (8, 3))]
    weights = [1.0, -0.5, 2.0]
    expect = sum(w * sorted_band(f.delta(), density, gamma) for f, w in zip(inputs, weights)) * 1.5
    got = run(inputs, weights, density=density, gamma=gamma, lambda_=1.5)
    torch.testing.assert_close(got.double(), expect, rtol=1e-6, atol=1e-6)
    for f in inputs:
        assert int(band_mask(f.delta(), density, gamma).sum()) == band_counts(f.delta().numel(), density, gamma)[1]


def test_density_one_and_gamma_zero_is_task_arithmetic():
    inputs = [lora(30, 20, 4, 1), None, lora(30, 20, 2, 3)]  # an adapter without the module adds nothing
    weights = [0.7, 5.0, -1.2]
    got = run(inputs, weights, density=1.0, gamma=0.0, lambda_=0.5)
    ctx = MergeContext("m", 0, torch.device("cpu"))
    ta = METHODS.get("task_arithmetic")
    expect = ta.merge_module(inputs, weights, None, ta.Params(lambda_=0.5), ctx).delta()
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-6)


def test_finite_and_deterministic():
    inputs = [lora(50, 70, 4, 1), lora(50, 70, 4, 2)]
    first = run(inputs, [1.0, 1.0], density=0.4, gamma=0.05)
    assert bool(torch.isfinite(first).all())
    assert torch.equal(first.view(torch.int32), run(inputs, [1.0, 1.0], density=0.4, gamma=0.05).view(torch.int32))


def test_ties_at_a_cut_are_treated_alike():
    d = torch.tensor([[5.0, -5.0, 3.0, 3.0, -3.0, 1.0, 1.0, 0.5, 0.25, 0.0]])
    # The top 1 of 10 is dropped: the cut at 5 drops both 5s. Keeping 4 more puts the lower cut
    # at the 5th largest, 3: the three 3s survive (one fewer than the density asks).
    assert band_mask(d, 0.4, 0.1).tolist() == [[False, False, True, True, True, False, False, False, False, False]]
    # Keeping 5 or 6 puts it at a 1: both 1s survive.
    middle = [[False, False, True, True, True, True, True, False, False, False]]
    assert band_mask(d, 0.5, 0.1).tolist() == middle
    assert band_mask(d, 0.6, 0.1).tolist() == middle


def test_counts_round_and_the_top_gives_way_to_the_density():
    assert band_counts(1000, 0.9, 0.01) == (10, 900)
    assert band_counts(3, 0.5, 0.5) == (1, 2)  # round(1.5) + round(1.5) > 3: the top shrinks
    assert band_counts(10, 1.0, 0.0) == (0, 10)


@pytest.mark.parametrize("params,name", [
    (dict(density=0.0), "density"),
    (dict(density=1.5), "density"),
    (dict(gamma=-0.1), "gamma"),
    (dict(density=0.9, gamma=0.2), "density \\+ gamma"),
])
def test_bad_parameters_name_the_parameter(params, name):
    with pytest.raises(AdapterMergeError, match=name):
        method.Params(**params)


def test_merge_end_to_end_writes_a_truncated_adapter(adapters):
    """Through the registry and the engine: the method is found by name, its parameters parsed,
    and the dense merge truncated to low rank with its error recorded."""
    a, b = load_adapter(adapters["a"]), load_adapter(adapters["b"])
    merged = merge([a, b], "breadcrumbs", [1.0, 0.5], density=0.5, gamma=0.1)
    assert set(merged.modules) == set(a.modules) | set(b.modules)
    assert merged.metadata["method"] == "breadcrumbs"
    assert merged.metadata["params"] == {"density": 0.5, "gamma": 0.1, "lambda": 1.0}
    assert all(0.0 <= m["rel_error"] < 1.0 for m in merged.metadata["modules"].values())
    with pytest.raises(AdapterMergeError, match="gamma"):
        merge([a, b], "breadcrumbs", gamma=0.6, density=0.5)
