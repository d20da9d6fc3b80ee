import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from adaptermerge import AdapterMergeError, load_adapter

from support import peft_deltas


def test_deltas_match_peft_scaling(tiny_base, adapters):
    # rsLoRA, rank_pattern and alpha_pattern: our delta must equal what PEFT merges into the base.
    for key in ("a", "c", "pattern"):
        ad = load_adapter(adapters[key])
        ref = peft_deltas(tiny_base, adapters[key])
        assert set(ref) == set(ad.modules)
        for m, d in ref.items():
            torch.testing.assert_close(ad.factors(m).delta(), d, atol=1e-6, rtol=1e-5)


def test_pattern_resolves_rank_and_alpha(adapters):
    ad = load_adapter(adapters["pattern"])
    assert ad.specs["model.layers.0.mlp.down_proj"].rank == 2
    assert ad.specs["model.layers.0.mlp.down_proj"].scale == pytest.approx(8 / 2)
    assert ad.specs["model.layers.1.self_attn.q_proj"].scale == pytest.approx(3 / 4)
    assert ad.specs["model.layers.0.self_attn.q_proj"].scale == pytest.approx(8 / 4)
    c = load_adapter(adapters["c"])
    assert c.specs["model.layers.0.self_attn.q_proj"].scale == pytest.approx(2 / 2**0.5)


def test_dora_magnitude_is_read(adapters):
    ad = load_adapter(adapters["dora"])
    assert ad.is_dora
    f = ad.factors("model.layers.0.self_attn.q_proj")
    assert f.magnitude is not None and f.magnitude.shape == (32,)


def test_bare_file_uses_config_beside_it_only_when_it_belongs(adapters, tmp_path):
    tensors = load_file(adapters["a"] / "adapter_model.safetensors")
    bare = tmp_path / "a.safetensors"
    save_file(tensors, bare)
    with pytest.raises(AdapterMergeError, match="--alpha"):
        load_adapter(bare)
    ad = load_adapter(bare, alpha=8)
    assert ad.specs["model.layers.0.self_attn.q_proj"].scale == pytest.approx(2.0)
    save_file(tensors, tmp_path / "m.safetensors", metadata={"lora_alpha": "16"})
    assert load_adapter(tmp_path / "m.safetensors").specs["model.layers.0.self_attn.q_proj"].scale == pytest.approx(4.0)
    # A config that fits the tensors (same r, targets) is used; one that does not is ignored.
    cfg = json.loads((adapters["a"] / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps(cfg))
    assert load_adapter(bare).specs["model.layers.0.self_attn.q_proj"].alpha == 8
    cfg["r"] = 16
    (tmp_path / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterMergeError, match="--alpha"):
        load_adapter(bare)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: (d / "adapter_config.json").unlink(), "no adapter_config.json"),
        (lambda d: (d / "adapter_model.safetensors").write_bytes(b"garbage"), "not a readable safetensors"),
        (lambda d: (d / "adapter_model.safetensors").write_bytes((d / "adapter_model.safetensors").read_bytes()[:200]), "not a readable safetensors"),
        (lambda d: (d / "adapter_config.json").write_text("{not json"), "not valid JSON"),
        (lambda d: ((d / "adapter_config.json").rename(d / "config.json"), (d / "adaptermerge.json").write_text("{}")),
         "a full model folder .config.json., not a LoRA adapter.*adaptermerge.json records the merge"),
    ],
)
def test_bad_inputs_name_the_file(adapters, tmp_path, mutate, message):
    import shutil

    d = tmp_path / "bad"
    shutil.copytree(adapters["a"], d)
    mutate(d)
    with pytest.raises(AdapterMergeError, match=message) as info:
        load_adapter(d)
    assert "bad" in str(info.value)


def test_nan_is_refused_naming_the_module(adapters, tmp_path):
    import shutil

    d = tmp_path / "nan"
    shutil.copytree(adapters["a"], d)
    tensors = load_file(d / "adapter_model.safetensors")
    key = "base_model.model.model.layers.1.mlp.up_proj.lora_B.weight"
    tensors[key][0, 0] = float("nan")
    save_file(tensors, d / "adapter_model.safetensors")
    ad = load_adapter(d)
    with pytest.raises(AdapterMergeError, match="model.layers.1.mlp.up_proj lora_B contains NaN"):
        ad.factors("model.layers.1.mlp.up_proj")


def test_save_roundtrip_loads_in_peft(tiny_base, adapters, tmp_path):
    from adaptermerge.adapter import Adapter

    ad = load_adapter(adapters["pattern"])
    copy = Adapter.from_factors("copy", {m: ad.factors(m) for m in ad.modules}, base_model=str(tiny_base))
    copy.save(tmp_path / "copy")
    ref = peft_deltas(tiny_base, adapters["pattern"])
    got = peft_deltas(tiny_base, tmp_path / "copy")
    assert set(ref) == set(got)
    for m in ref:
        torch.testing.assert_close(got[m], ref[m], atol=1e-6, rtol=1e-5)
    with pytest.raises(AdapterMergeError, match="already exists"):
        copy.save(tmp_path / "copy")
