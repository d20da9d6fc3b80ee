"""MMLU on a fresh machine: no local copy ($ADAPTERMERGE_MMLU_DATA unset, no --mmlu-data) and no
hub (HF_HUB_OFFLINE=1, an empty datasets cache, and no internet socket may connect). A recipe
with an MMLU gate still runs, and that gate fails closed for every model, with a loud warning at
the top of report.md and in report.json's `warnings`: it is never skipped silently."""

from __future__ import annotations

import json
import shutil
import socket

import pytest
import torch
from safetensors.torch import save_file

from adaptermerge.recipe import example_path


def _bare_adapter(path, config: dict, seed: int) -> None:
    """A rank-2 LoRA on q_proj and v_proj of every layer, as bare PEFT-named tensors."""
    gen = torch.Generator().manual_seed(seed)
    hidden, heads, kv = config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        for proj, rows in {"q_proj": heads * head_dim, "v_proj": kv * head_dim}.items():
            key = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            tensors[f"{key}.lora_A.weight"] = 1e-3 * torch.randn(2, hidden, generator=gen)
            tensors[f"{key}.lora_B.weight"] = 1e-3 * torch.randn(rows, 2, generator=gen)
    save_file(tensors, str(path))


RECIPE = """
name: offline-mmlu
base: {base}
adapters:
  authors: {{path: authors.safetensors, alpha: 4, task: authors}}
  shelves: {{path: shelves.safetensors, alpha: 4, task: shelves}}
candidates: [linear]
baselines: []
gates:
  tasks:
    authors: {{data: data/authors-eval.jsonl, metric: exact_match, min: 0.5, max_gen_toks: 4}}
    shelves: {{data: data/shelves-eval.jsonl, metric: exact_match, min: 0.5, max_gen_toks: 4}}
    mmlu: {{metric: acc, max_drop: 0.01}}
select: {{split: eval, sweep: false}}
output: {{quantize: null}}
quick: {{docs: {{authors: 2, shelves: 2}}, mmlu_limit: 1, mmlu_subjects: 2}}
"""


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No local MMLU, the hub offline with an empty cache, and internet sockets refused."""
    monkeypatch.delenv("ADAPTERMERGE_MMLU_DATA", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    monkeypatch.setenv("ADAPTERMERGE_CACHE", str(tmp_path / "cache"))
    datasets = pytest.importorskip("datasets")  # read its settings at import: set them here too
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets", raising=False)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)
    connect = socket.socket.connect

    def refuse(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError(f"no network in this test (connect to {address})")
        return connect(self, address)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_mmlu_source_offline_gives_the_reason(offline):
    from adaptermerge.recipe import tasks

    source, reason = tasks.mmlu_source(None)
    assert source is None and "cais/mmlu" in reason and "--mmlu-data" in reason


def test_mmlu_source_takes_a_local_copy_first(tmp_path, monkeypatch):
    from adaptermerge.recipe import tasks

    (tmp_path / "test").mkdir()
    assert tasks.mmlu_source(str(tmp_path)) == (str(tmp_path), None)
    monkeypatch.setenv("ADAPTERMERGE_MMLU_DATA", str(tmp_path))
    assert tasks.mmlu_source(None) == (str(tmp_path), None)


def test_recipe_mmlu_gate_fails_closed_with_a_warning(offline, tiny_base, tmp_path):
    from adaptermerge.recipe import run_recipe

    config = json.loads((tiny_base / "config.json").read_text())
    folder = tmp_path / "recipe"
    shutil.copytree(example_path("bookshop").parent / "data", folder / "data")
    for seed, task in enumerate(("authors", "shelves")):
        _bare_adapter(folder / f"{task}.safetensors", config, seed)
    (folder / "recipe.yaml").write_text(RECIPE.format(base=tiny_base))
    result = run_recipe(folder / "recipe.yaml", output=tmp_path / "out", quick=True)

    data = json.loads((result.output / "report.json").read_text())
    assert len(data["warnings"]) == 1 and "MMLU was NOT scored" in data["warnings"][0]
    assert "mmlu.acc drop vs base <= 0.01" in data["warnings"][0]
    md = (result.output / "report.md").read_text().splitlines()
    assert md[2].startswith("> **WARNING: MMLU was NOT scored")
    assert "mmlu.acc drop vs base <= 0.01" in data["gates"]["rules"]
    evaluated = [c for c in data["candidates"] if c["scores"]]
    assert {c["name"] for c in evaluated} >= {"base", "authors", "shelves", "linear"}
    for c in evaluated:  # the gate is there, failed, with the reason: never silently skipped
        mmlu = [g for g in c["gates"] if g["task"] == "mmlu"]
        assert len(mmlu) == 1 and not mmlu[0]["passed"] and mmlu[0]["value"] is None, (c["name"], mmlu)
        assert "not scored" in mmlu[0]["detail"]
        assert not c["passed"] and "mmlu" not in c["scores"]
    assert not any(r.passed for r in result.rows)
