"""charts.py: both charts are written as valid PNGs of bounded size, on hand-made data, without
touching matplotlib's global settings or pyplot's figure list."""

from __future__ import annotations

import struct
import sys

import pytest

from adaptermerge import charts

pytest.importorskip("matplotlib")

MAX_WIDTH_PX = 1600


def png_size(path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; asserts the signature."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def _matrix(n: int) -> charts.RetentionMatrix:
    names = [f"candidate_{i}_with_a_long_name" for i in range(n)]
    tasks = ["domain", "structured", "safety"]
    values = [[(i + j) / n if (i + j) % 5 else None for j in range(3)] for i in range(n)]
    failed = [[(i * j) % 2 == 1 for j in range(3)] for i in range(n)]
    return charts.RetentionMatrix(names, tasks, values, failed)


def _panels(n_tasks: int, n: int) -> list[charts.Panel]:
    names = [f"merge_{i}" for i in range(n)]
    return [charts.Panel(f"task{t}", "exact_match", names, [i / n for i in range(n)], [0.05] * n, [i % 3 == 0 for i in range(n)],
                         [charts.Reference("base", 0.1, 0.02), charts.Reference("single adapter", 0.8, 0.04)], threshold=0.75)
            for t in range(n_tasks)]


@pytest.mark.parametrize("n", [1, 18])
def test_heatmap_is_a_png_of_bounded_size(tmp_path, n):
    path = charts.retention_heatmap(tmp_path / "retention.png", _matrix(n), title="t", threshold=0.95, highlight="candidate_0_with_a_long_name")
    width, height = png_size(path)
    assert 300 <= width <= MAX_WIDTH_PX and 150 <= height <= 1200, (width, height)


@pytest.mark.parametrize("n_tasks, n", [(1, 2), (4, 18), (7, 18)])
def test_score_panels_are_a_png_of_bounded_size(tmp_path, n_tasks, n):
    path = charts.score_panels(tmp_path / "chart.png", _panels(n_tasks, n), title="t")
    width, height = png_size(path)
    assert 300 <= width <= MAX_WIDTH_PX and 150 <= height <= 1600, (width, height)


def test_missing_values_and_no_panels_still_draw(tmp_path):
    panel = charts.Panel("mmlu", "acc", ["a", "b"], [None, 0.3], [None, None], [True, False])
    png_size(charts.score_panels(tmp_path / "a.png", [panel], title="t"))
    png_size(charts.score_panels(tmp_path / "b.png", [], title="t"))
    matrix = charts.RetentionMatrix(["a"], ["x"], [[None]], [[True]])
    png_size(charts.retention_heatmap(tmp_path / "c.png", matrix, title="t"))


def test_no_global_matplotlib_state_changes(tmp_path):
    import matplotlib

    before = dict(matplotlib.rcParams)
    backend = matplotlib.get_backend()
    charts.retention_heatmap(tmp_path / "r.png", _matrix(3), title="t")
    charts.score_panels(tmp_path / "s.png", _panels(2, 3), title="t")
    assert matplotlib.get_backend() == backend
    assert dict(matplotlib.rcParams) == before
    if "matplotlib.pyplot" in sys.modules:  # no figure left open in pyplot's list
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []


def test_finite():
    assert charts.finite(None) is None and charts.finite(float("nan")) is None and charts.finite(float("inf")) is None
    assert charts.finite(1) == 1.0
