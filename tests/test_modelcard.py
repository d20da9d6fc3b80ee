"""The model card (README.md) of every merge output: front matter the hub reads, the inputs with
their sha256 and weights, the method's parameters and the per-module error summary, written in
the same atomic step as the weights."""

from __future__ import annotations

import json

import pytest
import yaml

from adaptermerge import AdapterMergeError, load_adapter, merge, merge_to_model
from adaptermerge import adapter as adapter_mod
from adaptermerge.modelcard import model_card


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    head, _, _ = text[4:].partition("\n---\n")
    return yaml.safe_load(head)


def test_an_adapter_card_names_base_method_inputs_weights_and_errors(adapters, tmp_path):
    a, c = load_adapter(adapters["a"]), load_adapter(adapters["c"])
    merge([a, c], "ties", [0.7, 0.3], density=0.5, seed=3, out=tmp_path / "m")
    card = (tmp_path / "m" / "README.md").read_text()
    meta = json.loads((tmp_path / "m" / "adaptermerge.json").read_text())
    front = _front_matter(card)
    assert front == {"base_model": a.base_model, "library_name": "peft", "tags": ["adaptermerge", "merge", "lora"]}
    assert "# Merged LoRA adapter: ties" in card and "AutoPeftModelForCausalLM" in card
    for item, weight in zip(meta["inputs"], ("0.7", "0.3")):
        row = next(line for line in card.splitlines() if item["sha256"] in line)
        assert item["path"] in row and f"| {weight} |" in row
    assert "density=0.5" in card and "lambda=1" in card and "- seed: 3" in card and "- dtype: float32" in card
    summary = meta["summary"]
    assert f"- modules: {summary['modules']}" in card
    assert f"max {summary['max_rel_error']:g}, mean {summary['mean_rel_error']:g}" in card
    assert "- exact low rank: no" in card


def test_a_model_card_is_for_transformers_and_replaces_the_bases_own(tiny_base, adapters, tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    for item in tiny_base.iterdir():
        (base / item.name).write_bytes(item.read_bytes())
    (base / "README.md").write_text("the base model's own card\n")
    merge_to_model([load_adapter(adapters["a"])], tmp_path / "full", "linear", base=str(base), check_base=False)
    card = (tmp_path / "full" / "README.md").read_text()
    assert _front_matter(card) == {"base_model": str(base.resolve()), "library_name": "transformers",
                                   "tags": ["adaptermerge", "merge", "lora"]}
    assert "# Merged model: linear" in card and "the base model's own card" not in card
    assert "added to the base weights exactly" in card


def test_the_card_is_pure_text_and_quotes_what_yaml_would_misread():
    meta = {"output": "adapter", "method": "linear", "base_model": "org/model: v2 #1", "params": {"normalize": True},
            "weights": [1.0], "inputs": [{"name": "x", "path": "a|b", "sha256": "ab" * 32, "ranks": [4]}], "summary": {}}
    card = model_card(meta)
    assert _front_matter(card)["base_model"] == "org/model: v2 #1"
    assert "`a\\|b`" in card and "normalize=True" in card
    assert "base_model" not in _front_matter(model_card({**meta, "base_model": None}))


def test_the_card_is_written_with_the_weights_or_not_at_all(adapters, tmp_path, monkeypatch):
    merged = merge([load_adapter(adapters["a"])], "linear")

    def broken(meta):
        raise AdapterMergeError("card failed")

    monkeypatch.setattr(adapter_mod, "model_card", broken)
    with pytest.raises(AdapterMergeError, match="card failed"):
        merged.save(tmp_path / "m")
    assert not (tmp_path / "m").exists() and list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    merged.save(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} == {"adapter_config.json", "adapter_model.safetensors", "adaptermerge.json",
                                                           "README.md"}


def test_a_merge_quantized_after_keeps_its_card_and_gains_the_quantization():
    meta = {"output": "model", "method": "ties", "base_model": "org/base", "params": {"density": 0.2}, "weights": [1.0, 1.0],
            "inputs": [{"path": "a", "sha256": "a" * 64}, {"path": "b", "sha256": "b" * 64}], "summary": {},
            "quantization": {"scheme": "nf4", "double_quant": True, "blocksize": 64, "compute_dtype": "bfloat16",
                             "bitsandbytes": "0.49", "size_bytes": {"before": 4 * 2**20, "after": 2**20},
                             "quantized_layers": 14, "mean_layer_error": 0.09, "max_layer_error": 0.1,
                             "kl": {"mean": 0.02, "max": 0.5}}}
    card = model_card(meta)
    assert _front_matter(card)["tags"] == ["adaptermerge", "merge", "lora", "bitsandbytes", "4-bit", "nf4"]
    assert "# Merged model: ties (NF4)" in card and "then quantized with bitsandbytes" in card
    assert "density=0.2" in card and "`" + "a" * 64 + "`" in card
    assert "blocksize 64, double quantization" in card and "4.0 MiB before, 1.0 MiB after" in card
    assert "over 14 layers: mean 0.09, max 0.1" in card and "mean 0.02, max 0.5" in card
    plain = model_card({k: v for k, v in meta.items() if k != "quantization"})
    assert "Quantization" not in plain and "(NF4)" not in plain and _front_matter(plain)["tags"][-1] == "lora"
