"""The fused C loops give bit for bit what the eager PyTorch code gives, and their absence is harmless."""

import logging

import pytest
import torch

from adaptermerge.methods import _chunked, _kernels, _native, _select

lib = _native.library()
needs_native = pytest.mark.skipif(lib is None, reason="no working C compiler here: the eager kernels run instead")


def eager(monkeypatch):
    monkeypatch.setenv("ADAPTERMERGE_NATIVE", "0")


def weighted_rows(k, n, weights, seed):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(k, n, generator=g) * torch.rand(k, 1, generator=g)
    v[:, :50] = 0.0  # exact zeros are never kept
    v[0, 50:100] = -v[-1, 50:100]  # equal magnitudes of opposite signs: ties in the cut and in the sum
    if k > 1:
        v[1, 100:150] = v[0, 100:150]
    v[-1, 150:200] *= 1e-40  # subnormals order by their bits too
    return v * torch.tensor(weights, dtype=torch.float32).view(-1, 1)


CASES = [(3, 884736, [1.0, 1.0, 1.0]), (2, 10001, [0.3, -1.7]), (5, 5000, [1, 2, 3, 0.5, 0.25]), (1, 777, [2.0])]


@needs_native
@pytest.mark.parametrize("k,n,weights", CASES)
def test_kth_largest_equals_eager_and_topk(monkeypatch, k, n, weights):
    v = weighted_rows(k, n, weights, seed=n)
    for keep in (1, 7, n // 5, n // 2, n - 1, n):
        native = _native.kth_largest(lib, v, keep)
        assert torch.equal(native, v.abs().topk(keep, dim=1).values[:, -1])
        with monkeypatch.context() as m:
            eager(m)
            assert torch.equal(_select.kth_largest(v, keep), native)
    with pytest.raises(ValueError, match="k must be"):  # refused before the C code could read past the row
        _native.kth_largest(lib, v, n + 1)


@needs_native
@pytest.mark.parametrize("k,n,weights", CASES)
def test_ties_combine_equals_eager_trim_and_combine(k, n, weights):
    v = weighted_rows(k, n, weights, seed=n + 1)
    before = v.clone()
    for density in (0.05, 0.2, 1.0):
        cuts = _native.kth_largest(lib, v, max(1, round(density * n)))
        merged, kept = _native.ties_combine(lib, v, cuts, weights)
        trimmed = _kernels.trim_(v.clone(), cuts)
        expected_kept = torch.count_nonzero(trimmed, dim=1)
        assert torch.equal(merged, _kernels.ties_combine(trimmed, weights))
        assert torch.equal(kept, expected_kept)
    assert torch.equal(v, before)  # the input is read, never written


@needs_native
@pytest.mark.parametrize("method", ["ties", "dare_ties"])
@pytest.mark.parametrize("dense_max", [_chunked.DENSE_MAX, 0])  # the formed-at-once path and the row-block path
def test_sparse_merge_is_identical_with_and_without_native(monkeypatch, method, dense_max):
    monkeypatch.setattr(_chunked, "DENSE_MAX", dense_max)
    torch.manual_seed(3)
    weights = [1.0, -0.6, 1.4]
    Bs = [torch.randn(700, r) for r in (4, 8, 2)]
    As = [torch.randn(r, 900) for r in (4, 8, 2)]
    sparsify = "trim" if method == "ties" else "dare"
    args = dict(density=0.3, sparsify=sparsify, combine="ties", threshold="exact")

    def run():
        gens = [torch.Generator().manual_seed(i) for i in range(3)]
        return _chunked.sparse_merge(Bs, As, weights, generators=gens, **args)

    fused = run()
    with monkeypatch.context() as m:
        eager(m)
        plain = run()
    assert torch.equal(fused[0], plain[0])
    assert fused[1] == plain[1]


def test_no_compiler_falls_back_to_eager_with_a_warning(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(_native, "_state", {})
    monkeypatch.setenv("ADAPTERMERGE_CACHE", str(tmp_path))  # nothing built there yet
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with caplog.at_level(logging.WARNING, logger=_native.__name__):
        assert _native.library() is None
    assert "using eager PyTorch" in caplog.text
    x = torch.randn(2, 1000)
    assert torch.equal(_select.kth_largest(x, 100), x.abs().topk(100, dim=1).values[:, -1])


@needs_native
def test_built_once_into_the_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setattr(_native, "_state", {})
    monkeypatch.setenv("ADAPTERMERGE_CACHE", str(tmp_path))
    assert _native.library() is not None
    built = list((tmp_path / "native").iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"  # the temp file was renamed, not left behind
    monkeypatch.setattr(_native, "_state", {})
    stamp = built[0].stat().st_mtime_ns
    assert _native.library() is not None
    assert built[0].stat().st_mtime_ns == stamp  # reused, not rebuilt
