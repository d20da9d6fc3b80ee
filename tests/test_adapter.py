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


# -- every value read is checked: one line naming the file and key ---------------------------


def _with_config(adapters, tmp_path, **patch):
    import shutil

    d = tmp_path / "bad"
    shutil.copytree(adapters["a"], d)
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg.update(patch)
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"rank_pattern": [1, 2]}, r"rank_pattern must be a mapping, got \[1, 2\]"),
        ({"alpha_pattern": ["q_proj"]}, r"alpha_pattern must be a mapping"),
        ({"alpha_pattern": {"q_proj": "x"}}, r"alpha_pattern\['q_proj'\] must be a positive finite number"),
        ({"rank_pattern": {"q_proj": "4"}}, r"rank_pattern\['q_proj'\] must be an integer"),
        ({"rank_pattern": {"q_proj(": 4}}, r"rank_pattern: key 'q_proj\(' is not a valid regular expression"),
        ({"alpha_pattern": {"[": 4}}, r"alpha_pattern: key '\[' is not a valid regular expression"),
        # patterns whose failed match backtracks for exponential time would hang the load
        ({"rank_pattern": {"(.*)*x": 4}}, r"rank_pattern: key '\(\.\*\)\*x' could take exponential time"),
        ({"alpha_pattern": {"(ab|a)*c": 4}}, r"alpha_pattern: key .* could take exponential time"),
        ({"alpha_pattern": {".*.*.*x": 4}}, r"could take exponential time .*more than 2 repeats"),
        ({"lora_alpha": -8}, r"lora_alpha must be a positive finite number .*got -8"),
        ({"lora_alpha": 0}, r"lora_alpha must be a positive finite number .*got 0"),
        ({"lora_alpha": "8"}, r"lora_alpha must be a positive finite number .*got '8'"),
        ({"lora_alpha": True}, r"lora_alpha must be a positive finite number .*got True"),
        ({"lora_alpha": 1e308}, r"lora_alpha must be a positive finite number \(at most 3.4e\+38"),
        ({"alpha_pattern": {"q_proj": -1}}, r"alpha_pattern\['q_proj'\] must be a positive finite number"),
        ({"r": "4"}, r": r must be an integer, got '4'"),
        ({"r": 0}, r": r must be an integer >= 1"),
        ({"use_rslora": "false"}, r"use_rslora must be true or false, got 'false'"),
        ({"use_dora": 1}, r"use_dora must be true or false"),
        ({"target_modules": 5}, r"target_modules must be a string or a list of strings"),
        ({"base_model_name_or_path": {"x": 1}}, r"base_model_name_or_path must be a string"),
        ({"peft_type": 7}, r"peft_type must be a string"),
        ({"lora_alpha": "x" * 10_000}, r"lora_alpha must be a positive finite number .*got 'xxxx.*\.\.\.$"),
    ],
)
def test_bad_config_values_are_one_line_naming_file_and_key(adapters, tmp_path, patch, message):
    d = _with_config(adapters, tmp_path, **patch)
    with pytest.raises(AdapterMergeError, match=message) as info:
        load_adapter(d)
    text = str(info.value)
    assert text.startswith(f"{d / 'adapter_config.json'}: ") and "\n" not in text and len(text) < 400, text


def test_plain_patterns_still_work(adapters, tmp_path):
    d = _with_config(adapters, tmp_path, alpha_pattern={r"layers\.(0|1)\..*q_proj": 2, "v_proj": 4})
    ad = load_adapter(d)
    assert ad.specs["model.layers.1.self_attn.q_proj"].alpha == 2 and ad.specs["model.layers.0.self_attn.v_proj"].alpha == 4


def test_nan_alpha_and_deep_json_are_refused(adapters, tmp_path):
    d = _with_config(adapters, tmp_path)
    (d / "adapter_config.json").write_text('{"lora_alpha": NaN, "r": 4}')
    with pytest.raises(AdapterMergeError, match="lora_alpha must be a positive finite number .*got nan"):
        load_adapter(d)
    (d / "adapter_config.json").write_text('{"x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(AdapterMergeError, match="adapter_config.json: not valid JSON .nested too deep"):
        load_adapter(d)


def _bare(tmp_path, name, tensors, metadata):
    path = tmp_path / f"{name}.safetensors"
    save_file(tensors, path, metadata=metadata)
    return path


M = "base_model.model.model.layers.0.self_attn.q_proj"


@pytest.mark.parametrize(
    "tensors, message",
    [
        ({f"{M}.lora_A.weight": torch.zeros(0, 32), f"{M}.lora_B.weight": torch.zeros(32, 0)}, "a LoRA needs rank >= 1"),
        ({f"{M}.lora_A.weight": torch.zeros(4, 0), f"{M}.lora_B.weight": torch.zeros(32, 4)}, "a LoRA needs rank >= 1 and non-empty"),
        ({f"{M}.lora_A.weight": torch.ones(4, 32, dtype=torch.int32), f"{M}.lora_B.weight": torch.ones(32, 4)}, "has dtype I32; LoRA tensors must be floating point"),
        ({f"{M}.lora_A.weight": torch.ones(4, 32), f"{M}.lora_B.weight": torch.ones(32, 4, dtype=torch.bool)}, "has dtype BOOL; LoRA tensors must be floating point"),
        ({f"{M}.lora_A.weight": torch.ones(4, 32), f"{M}.lora_B.weight": torch.ones(32, 4), f"{M}.lora_magnitude_vector": torch.ones(7)},
         r"lora_magnitude_vector has shape \(7,\), expected \(32,\)"),
    ],
)
def test_bad_tensors_are_refused_from_the_header(tmp_path, tensors, message):
    path = _bare(tmp_path, "bad", tensors, {"lora_alpha": "8"})
    with pytest.raises(AdapterMergeError, match=message) as info:
        load_adapter(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_module_names_are_bounded(tmp_path):
    long = "base_model.model." + "x" * 400 + ".q_proj"
    path = _bare(tmp_path, "long", {f"{long}.lora_A.weight": torch.ones(4, 32), f"{long}.lora_B.weight": torch.ones(32, 4)}, {"lora_alpha": "8"})
    with pytest.raises(AdapterMergeError, match="names a module of 407 characters; module names are at most 300"):
        load_adapter(path)


@pytest.mark.parametrize("meta", [{"lora_alpha": "-8"}, {"alpha": "0"}, {"lora_alpha": "nan"}, {"ss_network_alpha": "1e400"},
                                  {"adapter_config": json.dumps({"lora_alpha": -1})}])
def test_metadata_alpha_is_checked_like_every_alpha(tmp_path, meta):
    path = _bare(tmp_path, "m", {f"{M}.lora_A.weight": torch.ones(4, 32), f"{M}.lora_B.weight": torch.ones(32, 4)}, meta)
    with pytest.raises(AdapterMergeError, match=r"m.safetensors: metadata .*alpha must be a positive finite number"):
        load_adapter(path)
    with pytest.raises(AdapterMergeError, match=r"--alpha must be a positive finite number"):
        load_adapter(path, alpha=-2.0)


def test_a_fifo_is_refused_before_it_is_opened(adapters, tmp_path):
    import os
    import shutil

    d = tmp_path / "fifo"
    shutil.copytree(adapters["a"], d)
    (d / "adapter_model.safetensors").unlink()
    os.mkfifo(d / "adapter_model.safetensors")
    with pytest.raises(AdapterMergeError, match="is a FIFO"):
        load_adapter(d)
    os.mkfifo(tmp_path / "x.safetensors")
    with pytest.raises(AdapterMergeError, match="is a FIFO"):
        load_adapter(tmp_path / "x.safetensors")


def test_shared_peft_fields_keeps_only_what_every_input_says(adapters):
    from adaptermerge.adapter import shared_peft_fields

    a, b = load_adapter(adapters["a"]), load_adapter(adapters["b"])
    mapping = {"base_model_class": "LlamaForCausalLM", "parent_library": "transformers.models.llama.modeling_llama"}
    assert shared_peft_fields([a, b]) == {"auto_mapping": mapping}
    a.config["task_type"] = b.config["task_type"] = "CAUSAL_LM"
    assert shared_peft_fields([a, b]) == {"task_type": "CAUSAL_LM", "auto_mapping": mapping}
    b.config["task_type"], b.config["auto_mapping"] = "SEQ_CLS", None
    assert shared_peft_fields([a, b]) == {}
    a.config["auto_mapping"] = b.config["auto_mapping"] = {"base_model_class": 3}  # not what PEFT writes: left out
    assert shared_peft_fields([a, b]) == {}
