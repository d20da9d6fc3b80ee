"""The reports' two charts, as pure functions of plain data (no report types): a retention heatmap
and per-task score panels. Both eval's and the recipe's reports build the data and call these.

- `retention_heatmap`: candidates (rows) by tasks (columns); each cell holds the retention value,
  a cell whose task has a failed gate gets a red border and a cross, an undefined one reads "n/a".
- `score_panels`: one panel per task (small multiples), the candidates on the vertical axis, each
  score with its standard error as a horizontal bar, the base and the single-task adapter (and a
  gate threshold) as vertical reference lines.

matplotlib is imported lazily (heavy, and only needed when a report is written); figures are drawn
on the Agg canvas without pyplot, and every style setting is local (`matplotlib.rc_context`):
nothing global changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

DPI = 100
MAX_WIDTH_IN = 16.0  # 1600 px at DPI
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "xtick.labelsize": 8, "ytick.labelsize": 8,
         "legend.fontsize": 8, "figure.dpi": DPI, "savefig.dpi": DPI}
FAIL_COLOR = "#d62728"
PASS_COLOR = "#1f77b4"
BASE_COLOR = "#7f7f7f"
SINGLE_COLOR = "#2ca02c"


@dataclass(frozen=True)
class RetentionMatrix:
    """values[i][j]: candidate i's retention on task j (None: undefined); failed[i][j]: a gate of
    candidate i on task j failed."""

    candidates: list[str]
    tasks: list[str]
    values: list[list[float | None]]
    failed: list[list[bool]]


@dataclass(frozen=True)
class Reference:
    """A vertical line in a score panel: the base's or the single adapter's score (± stderr)."""

    label: str
    value: float
    stderr: float | None = None


@dataclass(frozen=True)
class Panel:
    """One task's scores: candidates[i] scored values[i] ± stderrs[i] (None: no score / no stderr);
    failed[i]: one of its gates on this task failed."""

    task: str
    metric: str
    candidates: list[str]
    values: list[float | None]
    stderrs: list[float | None]
    failed: list[bool]
    references: list[Reference] = field(default_factory=list)
    threshold: float | None = None  # the gate's minimum score on this task, when it has one


def finite(x) -> float | None:
    """x as a float, or None when missing or not finite."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _matplotlib():
    """matplotlib's pieces, imported only when a chart is written (heavy). Figures are made without
    pyplot, so no global backend or figure list is touched; PNGs are drawn by the Agg canvas."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    return matplotlib, Figure, Line2D, Rectangle


def retention_heatmap(path: Path, matrix: RetentionMatrix, *, title: str, threshold: float | None = None,
                      highlight: str | None = None) -> Path:
    """Write the heatmap PNG to `path`. Colour: 0 (the base's level) to 1 (the single adapter's), clipped;
    `threshold`: the retention gate's minimum, named in the colour bar; `highlight`: a candidate in bold (the winner)."""
    mpl, Figure, _, Rectangle = _matplotlib()
    n_rows, n_cols = len(matrix.candidates), len(matrix.tasks)
    longest = max((len(n) for n in matrix.candidates), default=4)
    width = min(MAX_WIDTH_IN, max(4.8, 1.6 + 0.065 * longest + 1.3 * n_cols))
    height = 1.9 + 0.32 * max(n_rows, 1)
    foot = 0.5  # inches for the three lines under the chart
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=(width, height))
        ax = fig.subplots()
        grid = [[math.nan if v is None else v for v in row] for row in matrix.values] or [[math.nan]]
        cmap = mpl.colormaps["Blues"].with_extremes(bad="#eeeeee")
        image = ax.imshow(grid, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
        for i in range(n_rows):
            for j in range(n_cols):
                value, failed = matrix.values[i][j], matrix.failed[i][j]
                text = "n/a" if value is None else f"{value:.2f}"
                dark = value is not None and value > 0.6
                ax.text(j, i, text + (" ✗" if failed else ""), ha="center", va="center",
                        color="white" if dark else "black", fontweight="bold" if failed else "normal")
                if failed:
                    ax.add_patch(Rectangle((j - 0.46, i - 0.44), 0.92, 0.88, fill=False, edgecolor=FAIL_COLOR, linewidth=2.2))
        ax.set_xticks(range(n_cols), matrix.tasks)
        ax.set_yticks(range(n_rows), matrix.candidates)
        ax.xaxis.tick_top()
        ax.tick_params(length=0)
        for label in ax.get_yticklabels():
            if label.get_text() == highlight:
                label.set_fontweight("bold")
        bar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.03)
        bar.set_label("retention" + (f" (gate ≥ {threshold:g}: red line)" if threshold is not None else ""))
        if threshold is not None and 0 <= threshold <= 1:
            bar.ax.axhline(threshold, color=FAIL_COLOR, linewidth=1.5)
        ax.set_title(title, pad=22)
        fig.text(0.01, 0.01, "0 = the base's score, 1 = the single-task adapter's\n"
                 "n/a: the single adapter does not beat the base\n✗ and red border: a gate on that task failed",
                 fontsize=7, color="#444444", va="bottom")
        fig.tight_layout(rect=(0, foot / height, 1, 1))
        fig.savefig(path)
    return path


def score_panels(path: Path, panels: list[Panel], *, title: str, columns: int = 4) -> Path:
    """Write the small multiples PNG to `path`: one panel per task, the candidates shared down the rows."""
    mpl, Figure, Line2D, _ = _matplotlib()
    panels = panels or [Panel("no scores", "", [], [], [], [])]
    n_cols = min(columns, len(panels))
    n_rows = math.ceil(len(panels) / n_cols)
    names = panels[0].candidates
    longest = max((len(n) for n in names), default=4)
    label_in = min(3.0, 0.4 + 0.065 * longest)
    width = min(MAX_WIDTH_IN, label_in + 3.0 * n_cols)
    height = n_rows * (0.9 + 0.24 * max(len(names), 1)) + 1.2
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=(width, height))
        axes = fig.subplots(n_rows, n_cols, sharey=True, squeeze=False)
        for k, ax in enumerate(axes.flat):
            if k >= len(panels):
                ax.set_visible(False)
                continue
            _panel(ax, panels[k])
        handles = [
            Line2D([], [], color=PASS_COLOR, marker="o", linestyle="", label="candidate (± standard error)"),
            Line2D([], [], color=FAIL_COLOR, marker="X", linestyle="", label="a gate on this task failed"),
            Line2D([], [], color=BASE_COLOR, linestyle="--", label="base"),
            Line2D([], [], color=SINGLE_COLOR, linestyle="-", label="single-task adapter"),
            Line2D([], [], color=FAIL_COLOR, linestyle=":", label="gate minimum"),
        ]
        ncol = 5 if width >= 9.5 else 3 if width >= 6 else 2
        legend_in = 0.2 + 0.2 * math.ceil(len(handles) / ncol)
        fig.suptitle(title)
        fig.legend(handles=handles, loc="lower center", ncol=ncol, frameon=False)
        fig.tight_layout(rect=(0, legend_in / height, 1, 1))
        fig.savefig(path)
    return path


def _panel(ax, panel: Panel) -> None:
    ys = list(range(len(panel.candidates)))
    for ref in panel.references:
        color, style = (BASE_COLOR, "--") if ref.label == "base" else (SINGLE_COLOR, "-")
        ax.axvline(ref.value, color=color, linestyle=style, linewidth=1.2, zorder=1)
        if ref.stderr:
            ax.axvspan(ref.value - ref.stderr, ref.value + ref.stderr, color=color, alpha=0.12, linewidth=0, zorder=0)
    if panel.threshold is not None:
        ax.axvline(panel.threshold, color=FAIL_COLOR, linestyle=":", linewidth=1.2, zorder=1)
    for y, value, err, failed in zip(ys, panel.values, panel.stderrs, panel.failed):
        if value is None:
            ax.text(0.5, y, "no score", ha="center", va="center", fontsize=7, color="#666666", transform=ax.get_yaxis_transform(),
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
            continue
        color = FAIL_COLOR if failed else PASS_COLOR
        ax.errorbar(value, y, xerr=err if err else None, fmt="X" if failed else "o", color=color, ecolor=color,
                    elinewidth=1.2, capsize=2.5, markersize=5, zorder=3)
    everything = [v for v in panel.values if v is not None] + [r.value for r in panel.references]
    low = min([0.0, *everything])
    high = max([1.0, *everything])
    pad = 0.04 * (high - low)
    ax.set_xlim(low - pad, high + pad)
    ax.set_yticks(ys, panel.candidates)
    ax.set_ylim(max(len(ys), 1) - 0.5, -0.5)  # the first candidate on top
    ax.grid(axis="x", color="#dddddd", linewidth=0.6)
    ax.grid(axis="y", color="#f0f0f0", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.set_title(panel.task)
    ax.set_xlabel(panel.metric)
