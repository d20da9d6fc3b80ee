"""Finding identical merges: merges with the same weights are recognized from their probes; different ones never are."""

import pytest

from adaptermerge import load_adapter, merge
from adaptermerge.recipe import dedupe
from support import make_adapter


@pytest.fixture(scope="module")
def merged(tiny_base, tmp_path_factory):
    root = tmp_path_factory.mktemp("identical")
    a = load_adapter(make_adapter(tiny_base, root / "a", seed=1, r=4, alpha=8))
    b = load_adapter(make_adapter(tiny_base, root / "b", seed=2, r=2, alpha=4))
    out = {}
    for name, method, kw in [("task_arithmetic", "task_arithmetic", {}), ("sequential", "sequential", {}),
                             ("linear", "linear", {}), ("cat", "cat", {}), ("ta_0.9", "task_arithmetic", {"lambda_": 0.9})]:
        out[name] = merge([a, b], method, [1.0, 1.0], base=str(tiny_base), **kw).save(root / name)
    return out


def test_copies_found_in_different_factors_and_nothing_else(merged):
    copies = dedupe.find_copies(list(merged.items()))
    # sequential = the plain sum (task arithmetic); cat = the normalized weights of linear.
    assert set(copies) == {"sequential", "cat"}
    assert copies["sequential"][0] == "task_arithmetic" and copies["cat"][0] == "linear"
    assert all(diff < dedupe.TOLERANCE for _, diff in copies.values())
    # A 10 % scaling is a different function, far above the tolerance.
    gap = dedupe.difference(dedupe.probe(merged["ta_0.9"]), dedupe.probe(merged["task_arithmetic"]))
    assert gap == pytest.approx(0.1, rel=1e-3)
