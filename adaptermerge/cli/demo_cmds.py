"""`adaptermerge demo`: the example recipe examples/manga-assist.yaml (three task adapters trained
from the built-in presets, merged every way, evaluated, a winner chosen), with a few overrides.

Exit status: 0 the demo ran (whether or not a merge met every target: that is its result, shown in
the table, not an error), 2 bad input.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import AdapterMergeError
from ..validate import quote
from .options import COUNT, SEED, seeds as parse_seeds
from .run_cmds import SEEDS_HELP, execute, run_options
from .startup import load_api

if TYPE_CHECKING:
    from ..recipe.schema import Recipe


def register(group: click.Group) -> None:
    group.add_command(demo_cmd)


def _parse_steps(text: str | None, names: list[str]) -> dict[str, int] | None:
    if not text:
        return None
    out = {}
    for part in text.split(","):
        name, _, n = part.partition("=")
        # ASCII digits, at most 9 of them: str.isdigit takes "²" and 5000-digit numbers, which int() refuses
        if not re.fullmatch(r"[0-9]{1,9}", n.strip()) or int(n) < 1:
            raise AdapterMergeError(f"--train-steps {quote(text)}: expected adapter=steps,... e.g. domain=30,structured=12")
        if name.strip() not in names:
            raise AdapterMergeError(f"--train-steps: unknown adapter {quote(name.strip())}: expected {', '.join(names)}")
        out[name.strip()] = int(n)
    return out


def demo_recipe(recipe: Recipe, *, base=None, seed=None, seeds=None, mmlu_limit=None, train_steps=None, methods=None, baselines=True,
                sweep=True, weight_search=False, dtype="auto") -> Recipe:
    """The recipe with the demo's command-line overrides applied (`seeds`: a list, run as the recipe's `seeds:`)."""
    if seed is not None and seeds is not None:
        raise AdapterMergeError("--seed and --seeds: give one (--seeds 0,1,2 runs at each and chooses on the worst)")
    if mmlu_limit is not None and mmlu_limit <= 0:
        raise AdapterMergeError(f"--mmlu-limit must be positive, got {mmlu_limit}")
    steps = _parse_steps(train_steps, [a.name for a in recipe.adapters]) or {}
    changes = {"adapters": tuple(dataclasses.replace(a, steps=steps.get(a.name, a.steps)) for a in recipe.adapters),
               "select": {"sweep": sweep, "weight_search": weight_search}, "eval": {"dtype": dtype}}
    if base is not None:
        changes["base"] = base
    if seed is not None:
        changes["seed"] = seed
    if mmlu_limit is not None:
        changes["eval"]["mmlu_limit"] = mmlu_limit
        changes["quick"] = {"mmlu_limit": mmlu_limit}
    if methods:
        wanted = [m.strip() for m in methods.split(",")]
        known = [c.method for c in recipe.candidates]
        unknown = [m for m in wanted if m not in known]
        if unknown:
            raise AdapterMergeError(f"--methods {', '.join(unknown)}: expected names among {', '.join(known)}")
        changes["candidates"] = tuple(c for c in recipe.candidates if c.method in wanted)
    if not baselines:
        changes["baselines"] = ()
    recipe = recipe.with_overrides(**changes)
    return recipe if seeds is None else recipe.at_seeds(seeds, "--seeds")


@click.command("demo")
@run_options(output_default=Path("demo"))
@click.option("--base", default=None, help="Base model: HF id or folder (default: the embedded SmolLM2-135M-Instruct).")
@click.option("--mmlu-limit", type=COUNT, default=None, help="MMLU questions per subject (default 3; --quick 1).")
@click.option("--train-steps", default=None, help="Override training steps per adapter, e.g. domain=30,structured=12.")
@click.option("--methods", default=None, help="Comma-separated methods among the recipe's candidates (default: all of them).")
@click.option("--no-baselines", is_flag=True, help="Skip the PEFT, mergekit and sequential-training rows.")
@click.option("--no-sweep", is_flag=True, help="Do not run the sweep (a few more settings, chosen on the dev split) when the defaults miss the targets.")
@click.option("--weight-search/--no-weight-search", default=False,
              help="Run the proxy weight search of task-arithmetic weights before the sweep (default: off; regmean does better).")
@click.option("--seed", type=SEED, default=None,
              help="Seed of training (initialization, data order), random merges (DARE), calibration and MMLU samples (default: the recipe's, 0); the built-in task data is fixed.")
@click.option("--seeds", "seeds", default=None, help=SEEDS_HELP)
def demo_cmd(output, quick, mmlu_data, mergekit, threads, dtype, force, base, mmlu_limit, train_steps, methods, no_baselines,
             no_sweep, weight_search, seed, seeds) -> int:
    """Run the example recipe examples/manga-assist.yaml: train the domain, structured and safety
    adapters, merge them with every method and with PEFT / mergekit / sequential training for
    comparison, evaluate all of them against the gates, and write report.md, report.json and the
    winning merge (PEFT adapter and NF4 model). The same as `adaptermerge run` on that file.

    \b
      adaptermerge demo -o demo/
      adaptermerge demo --quick -o demo-quick/
      adaptermerge demo --seeds 0,1,2 -o demo-seeds/
    """
    load_api()  # torch, transformers: loaded when a command runs (start-up time)
    from ..recipe import example_path, load_recipe

    recipe = demo_recipe(load_recipe(example_path()), base=base, seed=seed, seeds=parse_seeds(seeds), mmlu_limit=mmlu_limit, train_steps=train_steps,
                         methods=methods, baselines=not no_baselines, sweep=not no_sweep, weight_search=weight_search, dtype=dtype)
    execute(recipe, output=output, quick=quick, mmlu_data=mmlu_data, mergekit=mergekit, threads=threads, force=force)
    return 0  # the table is the demo's result, whether or not a merge passes every gate
