"""A base model folder is checked when it is opened: one-line errors naming the file and key."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from adaptermerge import AdapterMergeError
from adaptermerge.basemodel import BaseWeights

Q = "model.layers.0.self_attn.q_proj"


@pytest.fixture
def base(tiny_base, tmp_path):
    d = tmp_path / "base"
    shutil.copytree(tiny_base, d)
    return d


def _index(folder, data):
    (folder / "model.safetensors.index.json").write_text(data if isinstance(data, str) else json.dumps(data))


def _retensor(folder, **tensors):
    t = load_file(folder / "model.safetensors")
    t.update(tensors)
    save_file(t, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: _index(d, "{not json"), r"model.safetensors.index.json: not valid JSON"),
        (lambda d: _index(d, {"metadata": {}}), r"model.safetensors.index.json: weight_map must be a non-empty mapping .*got None"),
        (lambda d: _index(d, {"weight_map": ["model.safetensors"]}), r"weight_map must be a non-empty mapping"),
        (lambda d: _index(d, {"weight_map": {"lm_head.weight": 5}}), r"weight_map\['lm_head.weight'\] must name a .safetensors file"),
        (lambda d: _index(d, {"weight_map": {"lm_head.weight": "../x.safetensors"}}), r"must name a .safetensors file in the folder"),
        (lambda d: _index(d, {"weight_map": {"nope.weight": "model.safetensors"}}), r"puts tensor nope.weight in model.safetensors, which does not hold it"),
        (lambda d: (d / "config.json").write_text("[1, 2"), r"config.json: not valid JSON"),
        (lambda d: (d / "config.json").write_text("[1, 2]"), r"config.json: expected a JSON object"),
        (lambda d: (d / "config.json").write_text(json.dumps({"quantization_config": "nf4"})), r"is already quantized \(quantization_config 'nf4'"),
        (lambda d: (d / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "bitsandbytes"}})), r"already quantized \(bitsandbytes"),
        (lambda d: (d / "model.safetensors").write_bytes(b"\x08" + b"\0" * 7 + b"{garbage"), r"model.safetensors: not a readable safetensors file"),
    ],
)
def test_bad_base_folders_are_one_line_errors(base, mutate, message):
    mutate(base)
    with pytest.raises(AdapterMergeError, match=message) as info:
        BaseWeights(base)
    assert "\n" not in str(info.value)


def test_a_non_float_weight_is_refused_where_a_merge_needs_it(base):
    _retensor(base, **{f"{Q}.weight": torch.zeros(32, 32, dtype=torch.uint16), "extra.counter": torch.zeros(3, dtype=torch.int64)})
    weights = BaseWeights(base)
    with pytest.raises(AdapterMergeError, match=rf"tensor {Q}.weight has dtype U16; merging needs a floating-point weight"):
        weights.shape(Q)
    assert weights.shape("model.layers.0.self_attn.k_proj") == (16, 32)  # other weights are fine
    assert weights.tensor("extra.counter").dtype == torch.int64  # copied as stored


def test_a_fifo_shard_is_refused_before_it_is_opened(base):
    import os

    (base / "model.safetensors").unlink()
    os.mkfifo(base / "model.safetensors")
    with pytest.raises(AdapterMergeError, match="is a FIFO"):
        BaseWeights(base)


def test_an_index_decides_and_lists_extra_tensors(base):
    tensors = load_file(base / "model.safetensors")
    keys = sorted(tensors)
    half = len(keys) // 2
    save_file({k: tensors[k] for k in keys[:half]}, base / "a.safetensors")
    save_file({k: tensors[k] for k in keys[half:]}, base / "b.safetensors")
    (base / "model.safetensors").unlink()
    _index(base, {"weight_map": {keys[0]: "a.safetensors", keys[-1]: "b.safetensors"}})  # partial: the shards hold the rest
    weights = BaseWeights(base)
    assert weights.shards == ["a.safetensors", "b.safetensors"]
    assert set(weights.location) == set(keys)
    torch.testing.assert_close(weights.tensor(keys[-1]), tensors[keys[-1]])
