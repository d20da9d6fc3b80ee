"""adaptermerge.diagnostics: each statistic from the factors against an independent dense
computation on tiny random factors (dense deltas, scipy's principal angles, explicit inputs X)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from adaptermerge import diagnostics as d
from adaptermerge.adapter import Adapter, LoraFactors


def _factors(seed: int, out: int = 12, inp: int = 10, r: int = 3, scale: float = 1.0) -> LoraFactors:
    g = torch.Generator().manual_seed(seed)
    return LoraFactors(torch.randn(r, inp, generator=g), torch.randn(out, r, generator=g), alpha=scale * r, scale=scale)


def test_sign_conflicts_count_entries_significant_in_both_with_opposite_signs():
    a = torch.tensor([[5.0, -4.0, -0.1], [3.0, 0.0, -2.0]])
    b = torch.tensor([[-6.0, -5.0, 4.0], [0.2, 1.0, -3.0]])
    # density 1: every nonzero entry counts; both nonzero at 5 entries, signs differ at (0,0) and (0,2)
    assert d.sign_conflicts(a, b, 1.0) == (2, 5)
    # density 0.5 keeps each delta's top 3 by magnitude: a {5, -4, 3}, b {-6, -5, 4}; both at (0,0), (0,1)
    assert d.sign_conflicts(a, b, 0.5) == (1, 2)


def test_sign_conflicts_match_a_dense_count_on_random_deltas():
    a, b = _factors(1).delta(), _factors(2).delta()
    density = 0.3
    keep = math.ceil(density * a.numel())
    top = lambda x: x.abs() >= x.abs().flatten().sort(descending=True).values[keep - 1]  # noqa: E731
    both = top(a) & top(b)
    expected = sum(1 for x, y, m in zip(a.flatten().tolist(), b.flatten().tolist(), both.flatten().tolist()) if m and (x > 0) != (y > 0))
    assert d.sign_conflicts(a, b, density) == (expected, int(both.sum()))
    conflicts, both_count = d.sign_conflicts(a, -a, 1.0)  # a delta against its negation: every entry conflicts
    assert conflicts == both_count == a.numel()


def test_principal_cosines_match_scipy_subspace_angles():
    for seed in range(3):
        x, y = _factors(seed, r=3), _factors(seed + 10, r=5)
        got = d.principal_cosines(x.A.T, y.A.T).numpy()
        ref = np.sort(np.cos(scipy.linalg.subspace_angles(x.A.T.double().numpy(), y.A.T.double().numpy())))[::-1]
        np.testing.assert_allclose(got, ref, atol=1e-10)
        got_b = d.principal_cosines(x.B, y.B).numpy()
        ref_b = np.sort(np.cos(scipy.linalg.subspace_angles(x.B.double().numpy(), y.B.double().numpy())))[::-1]
        np.testing.assert_allclose(got_b, ref_b, atol=1e-10)


def test_overlap_is_one_for_the_same_subspace_and_zero_for_orthogonal_ones():
    A = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    mix = torch.randn(3, 3, generator=torch.Generator().manual_seed(1))
    assert d.overlap(d.principal_cosines(A, A @ mix)) == pytest.approx(1.0)
    eye = torch.eye(6)
    assert d.overlap(d.principal_cosines(eye[:, :2], eye[:, 2:5])) == pytest.approx(0.0)


def test_a_rank_deficient_factor_has_a_smaller_basis():
    A = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    deficient = torch.cat([A, A.sum(1, keepdim=True)], 1)  # rank 2 in 3 columns
    assert d.column_basis(deficient).shape == (8, 2)
    assert d.principal_cosines(deficient, A).tolist() == pytest.approx([1.0, 1.0])


def test_inner_products_are_the_dense_traces_with_and_without_a_gram():
    fs = [_factors(1, r=2, scale=0.5), _factors(2, r=4, scale=2.0), _factors(3, r=3)]
    deltas = [f.delta().double() for f in fs]
    X = torch.randn(40, 10, generator=torch.Generator().manual_seed(9), dtype=torch.float64)  # [tokens, in]
    G = X.T @ X
    K = d.inner_products([(f.scaled_B(), f.A) for f in fs], G)
    K_free = d.inner_products([(f.scaled_B(), f.A) for f in fs])
    for i in range(3):
        for k in range(3):
            assert K[i, k].item() == pytest.approx(torch.trace(deltas[i] @ G @ deltas[k].T).item(), rel=1e-6)
            assert K_free[i, k].item() == pytest.approx((deltas[i] * deltas[k]).sum().item(), rel=1e-6)
        # the norm identity ||B A||_F^2 = trace((B^T B)(A A^T)), and ||delta X^T||^2 = trace(delta G delta^T)
        assert math.sqrt(K_free[i, i]) == pytest.approx(torch.linalg.matrix_norm(deltas[i]).item(), rel=1e-6)
        assert math.sqrt(K[i, i]) == pytest.approx(torch.linalg.matrix_norm(deltas[i] @ X.T).item(), rel=1e-6)


def test_relative_error_is_the_merged_output_error_on_explicit_inputs():
    fs = [_factors(s) for s in (1, 2, 3)]
    deltas = [f.delta().double() for f in fs]
    X = torch.randn(30, 10, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    K = d.inner_products([(f.scaled_B(), f.A) for f in fs], X.T @ X)
    c = [0.7, 1.2, -0.3]
    merged = sum(ci * di for ci, di in zip(c, deltas))
    for j in range(3):
        expected = torch.linalg.matrix_norm((merged - deltas[j]) @ X.T) / torch.linalg.matrix_norm(deltas[j] @ X.T)
        assert d.relative_error(K, c, j) == pytest.approx(expected.item(), rel=1e-6)
    assert d.relative_error(K, [0, 1, 0], 1) == pytest.approx(0.0, abs=1e-9)  # the adapter alone loses nothing
    assert d.relative_error(K, [0, 0, 0], 1) == pytest.approx(1.0)  # no adapter: all of it


def test_decompose_splits_the_error_into_kept_and_interference():
    fs = [_factors(s) for s in (1, 2, 3)]
    deltas = [f.delta().double() for f in fs]
    X = torch.randn(30, 10, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    K = d.inner_products([(f.scaled_B(), f.A) for f in fs], X.T @ X)
    c = [1 / 3, 1 / 3, 1 / 3]
    merged, own = sum(ci * di for ci, di in zip(c, deltas)) @ X.T, deltas[0] @ X.T
    kept = float((merged * own).sum() / (own * own).sum())
    rest = torch.linalg.matrix_norm(merged - kept * own) / torch.linalg.matrix_norm(own)
    assert d.decompose(K, c, 0) == pytest.approx((kept, rest.item()), rel=1e-6)
    assert d.decompose(K, [1.0, 0.0, 0.0], 0) == pytest.approx((1.0, 0.0), abs=1e-6)
    k, i = d.decompose(K, c, 0)
    assert d.relative_error(K, c, 0) ** 2 == pytest.approx((1 - k) ** 2 + i**2, rel=1e-6)


def _adapter(name: str, factors: dict[str, LoraFactors]) -> Adapter:
    return Adapter.from_factors(name, factors, base_model=None)


def test_the_report_matches_dense_computations_and_cross_activation_on_explicit_inputs():
    modules = ["model.layers.0.mlp.up_proj", "model.layers.1.mlp.up_proj"]
    fs = {name: {m: _factors(10 * k + i) for i, m in enumerate(modules)} for k, name in enumerate(("a", "b", "c"))}
    del fs["c"][modules[1]]  # an adapter that lacks a module
    adapters = [_adapter(n, f) for n, f in fs.items()]
    merged = _adapter("half", {m: LoraFactors(fs["a"][m].A, fs["a"][m].B * 0.5, 1.0, fs["a"][m].scale) for m in modules})
    X = {(j, m): torch.randn(20, 10, generator=torch.Generator().manual_seed(100 + 7 * j + len(m)), dtype=torch.float64)
         for j in range(3) for m in modules}
    grams = lambda m: [(X[(j, m)].T @ X[(j, m)]).float() for j in range(3)]  # noqa: E731
    W0 = {m: torch.randn(12, 10, generator=torch.Generator().manual_seed(50 + i)) for i, m in enumerate(modules)}
    report = d.diagnose_adapters(adapters, modules, [1.0, 1.0, 1.0], merged=[merged], grams=grams, base_weight=W0.__getitem__)

    dense = {n: {m: f.delta().double() for m, f in fac.items()} for n, fac in fs.items()}
    zero = torch.zeros(12, 10, dtype=torch.float64)
    at = lambda n, m: dense[n].get(m, zero)  # noqa: E731
    out = lambda delta, j, m: torch.linalg.matrix_norm(delta @ X[(j, m)].T).item() ** 2  # noqa: E731
    names = ["a", "b", "c"]
    # cross-activation: ||delta_i X_j|| / ||delta_j X_j|| over the model (energies summed)
    pair = next(p for p in report["pairs"] if (p["a"], p["b"]) == ("a", "c"))
    num = sum(out(at("a", m), 2, m) for m in modules)
    den = sum(out(at("c", m), 2, m) for m in modules)
    assert pair["cross_activation"]["a on c"] == pytest.approx(math.sqrt(num / den), rel=1e-6)
    assert pair["modules"] == 1  # c lacks the second module
    norm = lambda n: math.sqrt(sum(torch.linalg.matrix_norm(at(n, m)).item() ** 2 for m in modules))  # noqa: E731
    assert pair["norm_ratio"] == pytest.approx(norm("a") / norm("c"), rel=1e-6)
    # predicted interference of the sum, the average and the merged adapter, per task
    for j, task in enumerate(names):
        own = sum(out(at(task, m), j, m) for m in modules)
        total = sum(out(sum(at(n, m) for n in names) - at(task, m), j, m) for m in modules)
        average = sum(out(sum(at(n, m) for n in names) / 3 - at(task, m), j, m) for m in modules)
        half = sum(out(0.5 * at("a", m) - at(task, m), j, m) for m in modules)
        p = report["predicted_interference"][task]
        assert p["sum"] == pytest.approx(math.sqrt(total / own), rel=1e-5)
        assert p["average"] == pytest.approx(math.sqrt(average / own), rel=1e-5)
        assert p["merged"]["half"] == pytest.approx(math.sqrt(half / own), rel=1e-5)
    assert report["predicted_interference"]["a"]["merged"]["half"] == pytest.approx(0.5, rel=1e-5)
    assert report["predicted_interference"]["a"]["kept"]["half"] == pytest.approx(0.5, rel=1e-5)
    assert report["predicted_interference"]["a"]["interference"]["half"] == pytest.approx(0.0, abs=1e-5)
    inner = lambda x, y, j, m: float(((x @ X[(j, m)].T) * (y @ X[(j, m)].T)).sum())  # noqa: E731
    kept = sum(inner(sum(at(n, m) for n in names) / 3, at("b", m), 1, m) for m in modules) / sum(out(at("b", m), 1, m) for m in modules)
    assert report["predicted_interference"]["b"]["kept"]["average"] == pytest.approx(kept, rel=1e-5)
    # the task's own delta against the base's outputs on its inputs: ||delta_j X_j|| / ||W0 X_j||
    for j, task in enumerate(names):
        base = sum(out(W0[m].double(), j, m) for m in modules)
        assert report["own_strength"][task] == pytest.approx(math.sqrt(sum(out(at(task, m), j, m) for m in modules) / base), rel=1e-5)
    # model-wide sign conflicts: the summed counts' ratio
    conflicts = sum(d.sign_conflicts(at("a", m).float(), at("b", m).float(), 0.2)[0] for m in modules)
    both = sum(d.sign_conflicts(at("a", m).float(), at("b", m).float(), 0.2)[1] for m in modules)
    ab = next(p for p in report["pairs"] if (p["a"], p["b"]) == ("a", "b"))
    assert ab["sign_conflict"] == pytest.approx(conflicts / both)
    assert [row["layer"] for row in report["per_module"]] == [0, 1]


def test_without_calibration_the_prediction_uses_the_frobenius_geometry():
    m = "model.layers.0.self_attn.q_proj"
    fa, fb = _factors(1), _factors(2)
    report = d.diagnose_adapters([_adapter("a", {m: fa}), _adapter("b", {m: fb})], [m], [1.0, 1.0])
    assert not report["calibrated"] and "cross_activation" not in report["pairs"][0]
    ratio = torch.linalg.matrix_norm(fb.delta()).item() / torch.linalg.matrix_norm(fa.delta()).item()
    assert report["predicted_interference"]["a"]["sum"] == pytest.approx(ratio, rel=1e-5)
    assert report["predicted_interference"]["a"]["strongest_other"] == {"adapter": "b", "ratio": pytest.approx(ratio, rel=1e-5)}


def test_layer_matrix_pools_modules_of_a_layer():
    modules = ["model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj", "model.layers.1.mlp.up_proj"]
    adapters = [_adapter(n, {m: _factors(7 * k + i, out=10) for i, m in enumerate(modules)}) for k, n in enumerate("ab")]
    report = d.diagnose_adapters(adapters, modules, [1.0, 1.0], density=0.5)
    labels, layers, values, what = d.layer_matrix(report)
    assert labels == ["a / b"] and layers == [0, 1] and "sign" in what
    rows = [r for r in report["per_module"] if r["layer"] == 0]
    expected = sum(r["pairs"][0]["conflicts"] for r in rows) / sum(r["pairs"][0]["significant_both"] for r in rows)
    assert values[0][0] == pytest.approx(expected)
