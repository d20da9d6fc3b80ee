"""Recipes: train or take adapters -> merge every candidate -> evaluate with gates -> choose -> report.

    from adaptermerge.recipe import load_recipe, run_recipe
    result = run_recipe(load_recipe("examples/manga-assist.yaml"), output="demo", quick=True)

Modules: schema (the Recipe and its strict YAML loading), adapters (training from presets with a
cache, or taking given files), baselines (PEFT, mergekit), tasks (evaluation tasks and gates on a
split), rows (typed result rows and the ranking), dedupe (finding identical merges), weights (the
proxy weight search), select (the choice, with the sweep on the dev split), report, pipeline
(`run_recipe`). The example recipes ship with the package (`example_path`).
"""

from pathlib import Path

from ..errors import AdapterMergeError
from .pipeline import RecipeResult, run_recipe
from .rows import Candidate, GateOutcome, Row, Winner
from .schema import Recipe, load_recipe, parse_recipe

DEMO = "manga-assist"


def example_names() -> list[str]:
    return sorted(p.stem for p in _examples_dir().glob("*.yaml"))


def example_path(name: str = DEMO) -> Path:
    """The example recipe `name` (e.g. "manga-assist"): shipped in the wheel as adaptermerge/examples,
    or the repository's examples/ in a source checkout."""
    path = _examples_dir() / f"{name.removesuffix('.yaml')}.yaml"
    if not path.is_file():
        raise AdapterMergeError(f"no example recipe {name!r}: expected one of {', '.join(example_names()) or 'none'}")
    return path


def _examples_dir() -> Path:
    installed = Path(__file__).resolve().parents[1] / "examples"  # the wheel maps examples/ here
    return installed if installed.is_dir() else Path(__file__).resolve().parents[2] / "examples"


__all__ = ["Candidate", "GateOutcome", "Recipe", "RecipeResult", "Row", "Winner", "example_names", "example_path",
           "load_recipe", "parse_recipe", "run_recipe"]
