"""Grouped bar charts for the reports (eval and demo): one group per task, one bar per candidate."""

from __future__ import annotations

from pathlib import Path


def grouped_bars(
    path: Path,
    groups: list[str],
    series: dict[str, list[float]],
    *,
    title: str,
    figsize: tuple[float, float],
    errors: dict[str, list[float]] | None = None,
    levels: list[tuple[int, float]] = (),
    legend_size: int = 8,
    dpi: int = 110,
) -> None:
    """Bars of `series` ({candidate: one value per group}), with optional whiskers (`errors`) and
    dashed horizontal lines `levels` ((group index, y)), e.g. gate thresholds. Scores lie in [0, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=figsize)
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        extra = {"yerr": errors[name], "capsize": 2} if errors else {}
        ax.bar(xs, values, width, label=name, **extra)
    for g, level in levels:
        ax.hlines(level, g - 0.45, g + 0.45, colors="black", linestyles="dashed", linewidth=1)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    ax.set_title(title)
    ax.legend(fontsize=legend_size, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
