"""examples/bookshop.yaml end to end on the real embedded base: two bare .safetensors adapters (made
here, small and random: the recipe's plumbing is under test, not the adapters' quality), the
user's own JSONL tasks with dev files, and gates. The rows, the gates and the winner's files agree."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file


pytestmark = pytest.mark.slow

TASKS = ("authors", "shelves")


def _bare_adapter(path, config: dict, seed: int) -> None:
    """A rank-2 LoRA on q_proj and v_proj of every layer, as bare PEFT-named tensors (no config)."""
    gen = torch.Generator().manual_seed(seed)
    hidden, heads, kv = config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    out = {"q_proj": heads * head_dim, "v_proj": kv * head_dim}
    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        for proj, rows in out.items():
            key = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            tensors[f"{key}.lora_A.weight"] = 1e-3 * torch.randn(2, hidden, generator=gen)
            tensors[f"{key}.lora_B.weight"] = 1e-3 * torch.randn(rows, 2, generator=gen)
    save_file(tensors, str(path))


@pytest.fixture(scope="module")
def bookshop(tmp_path_factory):
    from adaptermerge import base as base_mod
    from adaptermerge.recipe import example_path, load_recipe, run_recipe

    root = tmp_path_factory.mktemp("bookshop")
    examples = shutil.copytree(example_path("bookshop").parent, root / "examples")
    config = json.loads((base_mod.resolve_base(None) / "config.json").read_text())
    (examples / "adapters").mkdir(exist_ok=True)
    for seed, task in enumerate(TASKS):
        _bare_adapter(examples / "adapters" / f"{task}.safetensors", config, seed)
    recipe = load_recipe(examples / "bookshop.yaml")
    # Two of its candidates and no int8 copy of the winner (half a minute) keep the test short;
    # everything else is the shipped recipe (tests/recipe/test_pipeline.py writes a quantized winner).
    assert recipe.output.quantize == "int8"
    recipe = recipe.with_overrides(candidates=tuple(c for c in recipe.candidates if c.name in ("linear", "ties_dense")), baselines=(),
                                   output={"quantize": None})
    result = run_recipe(recipe, output=root / "out", quick=True)
    return result, recipe


def test_rows_gates_and_winner_agree(bookshop):
    result, recipe = bookshop
    data = json.loads((result.output / "report.json").read_text())
    names = [c["name"] for c in data["candidates"]]
    assert names[:5] == ["base", *TASKS, "linear", "ties_dense"]
    assert data["tasks"] == list(TASKS) and "mmlu" not in data["metrics"]
    assert data["eval_tasks"] == {t: f"{t}_first8" for t in TASKS}
    for c in data["candidates"]:
        assert c["error"] is None and not c["errors"], c
        assert set(c["scores"]) == set(TASKS) and all(0.0 <= v <= 1.0 for v in c["scores"].values())
        assert c["gates_total"] == len(c["gates"]) and c["gates_passed"] == sum(g["passed"] for g in c["gates"])
        if c["kind"] == "merge":  # two minimums and a retention gate per task
            assert c["gates_total"] == 4 and set(c["retention"]) == set(TASKS)
    given = {c["name"]: c for c in data["candidates"] if c["kind"] == "adapter"}
    assert all(c["source"].endswith(f"{n}.safetensors") and c["task"] == n for n, c in given.items())
    assert all((result.output / "adapters" / t / "adapter_config.json").is_file() for t in TASKS)  # the bare files as PEFT folders
    # No random adapter passes: the sweep chose on the dev files, and the winner is its choice.
    sweep = data["sweep"]
    assert sweep["split"] == "dev" and sweep["eval_tasks"] == {t: f"{t}_dev_first8" for t in TASKS}
    winner = data["winner"]
    assert winner["name"] == sweep["chosen"] == result.winner.name
    assert winner["name"] in names and winner["adapter"] == "adapter" and winner["quantized"] is None
    assert (result.output / "winner" / "adapter" / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in (result.output / "winner").iterdir()) == ["adapter"]
    report = (result.output / "report.md").read_text()
    assert "# bookshop" in report and "given adapter for authors" in report and "## The sweep, on the dev split" in report
