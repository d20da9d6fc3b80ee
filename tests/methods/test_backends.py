"""Every backend of the merge math gives bit for bit what the reference function gives.

Bit for bit means the float32 bit patterns, so a -0.0 where the reference has +0.0 fails too.
The inputs are adversarial: exact zeros and -0.0, equal magnitudes of both signs (ties in the cut
and cancellation in the sum), duplicated rows, subnormals, negative and zero weights."""

import pytest
import torch

from adaptermerge.methods import _native, backends, math
from adaptermerge.methods.backends import Backend

lib = _native.library()
# Every variant of the C loops this CPU runs (baseline, AVX2, AVX-512), each its own NATIVE case.
FAST = [pytest.param((Backend.EAGER, None), id="eager")] + [
    pytest.param((Backend.NATIVE, isa), id=f"native-{isa}") for isa in (lib.isas if lib is not None else ())
]


@pytest.fixture
def backend(request, monkeypatch):
    chosen, isa = request.param
    if isa is not None:
        monkeypatch.setenv("ADAPTERMERGE_NATIVE", isa)
        assert _native.library().isa_name == isa
    return chosen


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def assert_bitwise(got: torch.Tensor, want: torch.Tensor):
    assert got.shape == want.shape and got.dtype == want.dtype
    differ = bits(got) != bits(want)
    assert not bool(differ.any()), f"{int(differ.sum())} entries differ, first at {differ.flatten().nonzero()[0].item()}"


def weighted_rows(k: int, n: int, weights: list[float], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(k, n, generator=g) * torch.rand(k, 1, generator=g)
    v[:, :50] = 0.0  # exact zeros are never kept
    v[:, 50:60] = -0.0
    v[0, 60:110] = -v[-1, 60:110]  # equal magnitudes of opposite signs: ties in the cut and in the sum
    if k > 1:
        v[1, 110:160] = v[0, 110:160]  # duplicated entries
    v[-1, 160:210] *= 1e-40  # subnormals order by their bits too
    v[:, 210:260] = v[:, 210:260].round()  # many equal magnitudes (0, 1, 2...)
    return v * torch.tensor(weights, dtype=torch.float32).view(-1, 1)


CASES = [  # (k adapters, N entries, weights)
    (3, 884736, [1.0, 1.0, 1.0]),
    (2, 10001, [0.3, -1.7]),
    (5, 5000, [1, 2, 3, 0.5, 0.25]),
    (4, 3000, [1.0, 0.0, -1.0, 2.0]),  # a zero weight
    (1, 777, [2.0]),
]


@pytest.mark.parametrize("backend", FAST, indirect=True)
@pytest.mark.parametrize("k,n,weights", CASES)
def test_magnitude_cut_backends_equal_the_reference(backend, k, n, weights):
    v = weighted_rows(k, n, weights, seed=n)
    for keep in (1, 7, n // 5, n // 2, n - 1, n):
        assert_bitwise(backends.magnitude_cut(v, keep, backend), math.magnitude_cut(v, keep))
    with pytest.raises(ValueError, match="k must be"):  # refused before the C code could read past the row
        backends.magnitude_cut(v, n + 1, backend)


@pytest.mark.parametrize("backend", FAST, indirect=True)
@pytest.mark.parametrize("k,n,weights", CASES)
def test_ties_backends_equal_the_reference(backend, k, n, weights):
    v = weighted_rows(k, n, weights, seed=n + 1)
    before = v.clone()
    w = torch.tensor(weights, dtype=torch.float32)
    for density in (0.05, 0.2, 0.7, 1.0):
        cuts = math.magnitude_cut(v, math.keep_count(n, density)) if density < 1 else torch.zeros(k)
        merged, kept = backends.ties(v, cuts, weights, backend=backend)
        assert_bitwise(merged, math.ties(v, cuts, w))
        assert torch.equal(kept, math.kept_counts(v, cuts))
    assert torch.equal(v, before)  # the input is read, never written


@pytest.mark.parametrize("backend", FAST + [pytest.param((Backend.REFERENCE, None), id="reference")], indirect=True)
def test_ties_writes_into_out(backend):
    v = weighted_rows(3, 6000, [1.0, -0.5, 2.0], seed=9)
    cuts = math.magnitude_cut(v, 1200)
    merged = torch.full((2, 100, 60), 7.0)
    got, _ = backends.ties(v, cuts, [1.0, -0.5, 2.0], out=merged[1], backend=backend)
    assert got.data_ptr() == merged[1].data_ptr()
    assert_bitwise(merged[1].flatten(), math.ties(v, cuts, torch.tensor([1.0, -0.5, 2.0])))
    assert bool((merged[0] == 7.0).all())


def test_compiled_backend_equals_the_reference(monkeypatch):
    """torch.compile of the reference (the path of large modules where the C loops cannot run)."""
    for k, n, weights in [(3, 40000, [1.0, 2.0, 0.5]), (4, 30000, [1.0, -0.7, 0.5, 1.5])]:
        v = weighted_rows(k, n, weights, seed=k)
        cuts = math.magnitude_cut(v, n // 4)
        merged, kept = backends.ties(v, cuts, weights, backend=Backend.COMPILED)
        assert not backends._compile_failed, "torch.compile failed here; the eager fallback ran instead"
        assert_bitwise(merged, math.ties(v, cuts, torch.tensor(weights)))
        assert torch.equal(kept, math.kept_counts(v, cuts))


def test_a_failed_compilation_falls_back_to_eager_with_a_warning(monkeypatch, caplog):
    def broken(*args):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(backends, "_compiled", [broken])
    monkeypatch.setattr(backends, "_compile_failed", False)
    v = weighted_rows(2, 3000, [1.0, 0.5], seed=3)
    cuts = math.magnitude_cut(v, 600)
    merged, _ = backends.ties(v, cuts, [1.0, 0.5], backend=Backend.COMPILED)
    assert "torch.compile unavailable" in caplog.text
    assert backends._compile_failed
    assert_bitwise(merged, math.ties(v, cuts, torch.tensor([1.0, 0.5])))
    assert backends.choose(torch.zeros(2, 10), entries=10**9) is not Backend.COMPILED


def test_choose_prefers_native_then_compiled_for_large_modules_then_eager(monkeypatch):
    small, on_cpu = 10_000, torch.zeros(3, 100)
    monkeypatch.setattr(backends, "_compile_failed", False)
    if lib is not None:
        assert backends.choose(on_cpu) is Backend.NATIVE
        assert backends.choose(on_cpu.double()) is not Backend.NATIVE  # C loops read float32 only
    monkeypatch.setenv("ADAPTERMERGE_NATIVE", "0")
    assert backends.choose(on_cpu, entries=small) is Backend.EAGER
    assert backends.choose(on_cpu, entries=backends.COMPILE_MIN_ENTRIES) is Backend.COMPILED
    monkeypatch.setenv("ADAPTERMERGE_COMPILE", "0")
    assert backends.choose(on_cpu, entries=backends.COMPILE_MIN_ENTRIES) is Backend.EAGER


@pytest.mark.skipif(lib is None, reason="extension not built here")
def test_native_refuses_what_it_cannot_read_in_place():
    with pytest.raises(ValueError, match="float32 CPU"):
        backends.magnitude_cut(torch.randn(2, 100, dtype=torch.float64), 5, Backend.NATIVE)
    with pytest.raises(ValueError, match="float32 CPU"):
        backends.ties(torch.randn(2, 100), torch.zeros(2), [1.0, 1.0], out=torch.empty(100, dtype=torch.float64), backend=Backend.NATIVE)


def test_other_dtypes_take_the_reference_cut():
    x = torch.randn(2, 300, dtype=torch.float64)
    assert torch.equal(backends.magnitude_cut(x, 17), math.magnitude_cut(x, 17))
