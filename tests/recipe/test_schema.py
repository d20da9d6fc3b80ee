"""Recipes: the example recipes load, and every bad key or value gives one error naming the file and the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from adaptermerge.errors import AdapterMergeError
from adaptermerge.recipe import example_names, example_path, load_recipe
from adaptermerge.recipe.schema import BASELINES, MergeSpec

GOOD = {
    "name": "pair",
    "adapters": {"a": {"path": "a.safetensors", "alpha": 8, "task": "faq"}, "b": {"preset": "domain"}},
    "candidates": ["ties", {"method": "task_arithmetic", "name": "ta_half", "params": {"lambda": 0.5}, "weights": [1, 2]}],
    "baselines": ["peft_ties"],
    "gates": {"tasks": {"faq": {"data": "faq.jsonl", "dev": "faq-dev.jsonl", "metric": "exact_match", "min": 0.5},
                        "domain": {"metric": "exact_match", "min": 0.75},
                        "mmlu": {"metric": "acc", "max_drop": 0.01}},
              "retention": {"min": 0.9}},
    "eval": {"docs": {"faq": 4}, "mmlu_limit": 2},
    "select": {"split": "dev", "sweep": False},
    "output": {"quantize": "int8"},
    "quick": {"step_fraction": 0.5, "params": {"regmean": {"calib_size": 8}}},
}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "a.safetensors").write_bytes(b"")  # the loader checks it exists; the run reads it
    record = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    for name in ("faq.jsonl", "faq-dev.jsonl"):
        (tmp_path / name).write_text(json.dumps(record) + "\n")
    return tmp_path


def _write(folder: Path, data: dict) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _with(path: str, value, data=None):
    """GOOD with the value at a dotted path replaced (None: removed)."""
    data = json.loads(json.dumps(data or GOOD))
    *parents, last = path.split(".")
    node = data
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if isinstance(node, list):
        node[int(last)] = value
    elif value is None:
        del node[last]
    else:
        node[last] = value
    return data


def test_a_good_recipe_loads_typed(folder):
    recipe = load_recipe(_write(folder, GOOD))
    assert [a.name for a in recipe.adapters] == ["a", "b"]
    a, b = recipe.adapters
    assert a.path == folder.resolve() / "a.safetensors" and a.alpha == 8.0 and a.task == "faq"
    assert b.preset == "domain" and b.task == "domain" and b.path is None
    assert recipe.candidates == (MergeSpec("ties", "ties"), MergeSpec("ta_half", "task_arithmetic", {"lambda_": 0.5}, (1.0, 2.0)))
    assert recipe.tasks == ["faq", "domain", "mmlu"] and recipe.user_tasks == ["faq"]
    assert recipe.dev_data == {"faq": folder.resolve() / "faq-dev.jsonl"}
    assert recipe.gates.user_tasks["faq"]["data"] == str(folder.resolve() / "faq.jsonl")
    assert recipe.headline("domain") == "exact_match" and recipe.gates.retention_min == 0.9
    assert recipe.eval.docs == {"faq": 4} and recipe.eval.mmlu_limit == 2
    assert not recipe.select.sweep and recipe.output.quantize == "int8"
    assert recipe.quick.params == {"regmean": {"calib_size": 8}} and recipe.quick.step_fraction == 0.5


@pytest.mark.parametrize("name", ["manga-assist", "bookshop"])
def test_the_example_recipes_load(name, tmp_path):
    import shutil

    # bookshop's adapters are the user's files (examples/bookshop-adapters.sh makes them): stand-ins here
    examples = shutil.copytree(example_path(name).parent, tmp_path / "examples")
    (examples / "adapters").mkdir(exist_ok=True)
    for task in ("authors", "shelves"):
        (examples / "adapters" / f"{task}.safetensors").touch()
    recipe = load_recipe(examples / f"{name}.yaml")
    assert recipe.name == name and len(recipe.adapters) >= 2 and recipe.candidates
    assert name in example_names()


def test_the_demo_recipe_is_the_demo():
    """The three presets, every method of the demo at its defaults, the four baselines, the presets'
    targets, and --quick's settings as before."""
    recipe = load_recipe(example_path())
    assert [(a.name, a.preset, a.task) for a in recipe.adapters] == [(t, t, t) for t in ("domain", "structured", "safety")]
    assert [c.method for c in recipe.candidates] == ["linear", "task_arithmetic", "sequential", "ties", "dare_linear",
                                                      "dare_ties", "dora", "cat", "regmean", "tsv", "knots"]
    assert all(c.params == {} and c.weights is None and c.name == c.method for c in recipe.candidates)
    assert recipe.baselines == BASELINES
    assert [g.describe() for g in recipe.gates.gates] == [
        "domain.exact_match >= 0.75", "structured.schema_valid >= 0.85", "safety.refusal_rate >= 0.9",
        "safety.benign_answer_rate >= 0.9", "mmlu.acc drop vs base <= 0.01"]
    assert recipe.gates.retention_min == 0.95
    assert (recipe.eval.mmlu_limit, recipe.eval.mmlu_subjects, recipe.eval.docs) == (3, None, None)
    q = recipe.quick
    assert (q.step_fraction, q.anchor_unique, q.mmlu_limit, q.mmlu_subjects) == (0.1, 16, 1, 19)
    assert q.docs == {"domain": 8, "structured": 6, "safety": 12} and q.params == {"regmean": {"calib_size": 16}}
    assert recipe.select.split == "dev" and recipe.select.sweep and not recipe.select.weight_search
    assert recipe.output.quantize == "nf4"


@pytest.mark.parametrize("path, value, key", [
    ("colour", "blue", "colour"),                                   # unknown top-level key
    ("seed", "0", "seed"),                                          # a string is never a number
    ("seed", True, "seed"),                                         # nor is a bool
    ("select.sweep", "yes please", "select.sweep"),                 # a string is never a bool
    ("select.sweep", 1, "select.sweep"),
    ("select.split", "test", "select.split"),
    ("select.refine", 2, "select.refine"),                          # unknown nested key
    ("eval.mmlu_limit", 0, "eval.mmlu_limit"),
    ("eval.mmlu_limit", 1.5, "eval.mmlu_limit"),
    ("eval.docs", {"nosuch": 3}, "eval.docs.nosuch"),
    ("eval.dtype", "float8", "eval.dtype"),
    ("output.quantize", "fp4", "output.quantize"),
    ("quick.step_fraction", float("nan"), "quick.step_fraction"),   # non-finite numbers
    ("quick.step_fraction", float("inf"), "quick.step_fraction"),
    ("quick.step_fraction", 2, "quick.step_fraction"),
    ("quick.params", {"nosuch": {}}, "quick.params.nosuch"),
    ("adapters.a.alpha", "8", "adapters.a.alpha"),
    ("adapters.a.alpha", -1, "adapters.a.alpha"),
    ("adapters.a.path", "missing.safetensors", "adapters.a.path"),
    ("adapters.a.task", "nosuch", "adapters.a.task"),
    ("adapters.a.rank", 8, "adapters.a.rank"),
    ("adapters.b.preset", "poetry", "adapters.b.preset"),
    ("adapters.b.steps", "10", "adapters.b.steps"),
    ("adapters.b", {"preset": "domain", "path": "a.safetensors"}, "adapters.b"),
    ("adapters.base", {"preset": "safety"}, "adapters.base"),
    ("candidates.0", "nosuch", "candidates[0]"),                      # unknown method
    ("candidates.1.params", {"density": 0.5}, "candidates[1].params.density"),  # not a parameter of the method
    ("candidates.1.params", {"lambda": "0.5"}, "candidates[1].params.lambda"),
    ("candidates.1.params", {"lambda": float("-inf")}, "candidates[1].params.lambda"),
    ("candidates.1.weights", [1, 2, 3], "candidates[1].weights"),
    ("candidates.1.weights", [1, "2"], "candidates[1].weights[1]"),
    ("candidates.1.name", "a", "candidates"),                         # a name used twice
    ("candidates.1.colour", "red", "candidates[1].colour"),
    ("baselines", ["peft_dare"], "baselines[0]"),
    ("gates.tasks.domain.min", "0.75", "gates.tasks.domain.min"),
    ("gates.tasks.domain.min", float("nan"), "gates.tasks.domain.min"),
    ("gates.tasks.domain.metric", "bleu", "tasks.domain.metric"),     # unknown metric (evalsuite's message)
    ("gates.tasks.faq.metric", "bleu", "tasks.faq.metric"),
    ("gates.tasks.faq.dev", "missing.jsonl", "gates.tasks.faq.dev"),
    ("gates.tasks.faq.max_gen_toks", "64", "gates.tasks.faq.max_gen_toks"),
    ("gates.tasks.domain.dev", "faq-dev.jsonl", "gates.tasks.domain.dev"),
    ("gates.tasks.poetry", {"metric": "exact_match", "min": 0.5}, "poetry"),  # unknown task
    ("gates.retention.min", "high", "gates.retention.min"),
    ("gates.strict", True, "gates.strict"),
])
def test_each_bad_value_is_one_error_naming_file_and_key(folder, path, value, key):
    recipe = _write(folder, _with(path, value))
    with pytest.raises(AdapterMergeError) as exc:
        load_recipe(recipe)
    message = str(exc.value)
    assert message.startswith(str(recipe)), message
    assert key in message, message


@pytest.mark.parametrize("missing", ["adapters", "candidates", "gates"])
def test_required_sections(folder, missing):
    with pytest.raises(AdapterMergeError, match=rf"recipe.yaml: {missing}: missing"):
        load_recipe(_write(folder, _with(missing, None)))


def test_not_yaml_and_not_there(folder):
    bad = folder / "bad.yaml"
    bad.write_text("adapters: [unclosed\n")
    with pytest.raises(AdapterMergeError, match="bad.yaml: not valid YAML"):
        load_recipe(bad)
    with pytest.raises(AdapterMergeError, match="does not exist"):
        load_recipe(folder / "nowhere.yaml")
    with pytest.raises(AdapterMergeError, match="no example recipe 'nosuch'"):
        example_path("nosuch")


def test_yaml_is_read_safely(folder):
    path = folder / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(AdapterMergeError, match="not valid YAML"):
        load_recipe(path)


def test_weight_search_needs_preset_adapters(folder):
    with pytest.raises(AdapterMergeError, match="select.weight_search: needs adapters trained from built-in presets; a"):
        load_recipe(_write(folder, _with("select.weight_search", True)))


def test_a_heal_candidate_is_named_by_its_steps(folder):
    data = _with("candidates", ["regmean", {"method": "regmean", "heal": 40}, {"method": "ties", "heal": 0}])
    recipe = load_recipe(_write(folder, data))
    assert [(c.name, c.heal) for c in recipe.candidates] == [("regmean", 0), ("regmean+heal40", 40), ("ties", 0)]
    for bad in (-1, 1.5, "40", True):
        path = _write(folder, _with("candidates", [{"method": "regmean", "heal": bad}]))
        with pytest.raises(AdapterMergeError, match=r"recipe.yaml: candidates\[0\].heal"):
            load_recipe(path)
