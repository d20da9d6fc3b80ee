"""Full-model output: equals PEFT's merge_and_unload, --merge-onto dequantized, --requantize."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support import peft_deltas

from adaptermerge import AdapterMergeError, load_adapter, merge, merge_to_model
from adaptermerge.qlora import choose_merge_onto, quantizable_modules
from adaptermerge.quantization import quantized_modules, roundtrip


def state(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def greedy(model, ids, n=8):
    return model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=0)[0, ids.shape[1]:].tolist()


def test_model_output_generates_what_peft_merge_and_unload_generates(tiny_base, adapters, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    a, b = load_adapter(adapters["a"]), load_adapter(adapters["b"])
    merge([a, b], "linear", [0.6, 0.4]).save(tmp_path / "merged_adapter")
    merge_to_model([a, b], tmp_path / "full", "linear", [0.6, 0.4], base=str(tiny_base))
    reference = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tiny_base), tmp_path / "merged_adapter").merge_and_unload().eval()
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "full").eval()
    ids = torch.tensor([[5, 17, 3, 99, 42]])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, reference(ids).logits, atol=1e-4, rtol=1e-4)
        tokens = greedy(ours, ids)
        assert len(tokens) == 8 and tokens == greedy(reference, ids)
    meta = json.loads((tmp_path / "full" / "adaptermerge.json").read_text())
    assert meta["merge_onto"]["merge_onto"] == "original"


def test_index_total_size_counts_tensor_bytes_only(tiny_base, adapters, tmp_path):
    merge_to_model([load_adapter(adapters["a"])], tmp_path / "full", "linear", base=str(tiny_base), shard_size="100KB")
    index = json.loads((tmp_path / "full" / "model.safetensors.index.json").read_text())
    tensors = state(tmp_path / "full")
    assert len(set(index["weight_map"].values())) > 1  # sharded
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())


def test_quantizable_modules_are_the_linears_bitsandbytes_quantizes(quant_base):
    from transformers import AutoModelForCausalLM

    from adaptermerge.quantization import bnb_config

    model = AutoModelForCausalLM.from_pretrained(quant_base, quantization_config=bnb_config("nf4"), dtype=torch.float32)
    expected = set(quantized_modules(model))
    assert quantizable_modules(quant_base) == expected
    assert len(expected) == 2 * 7 and "lm_head" not in expected


def test_merge_onto_dequantized_changes_exactly_the_quantizable_weights(quant_base, quant_adapters, tmp_path):
    adapter = load_adapter(quant_adapters["qv"])
    merge_to_model([adapter], tmp_path / "dq", base=str(quant_base), merge_onto="dequantized")
    base, out = state(quant_base), state(tmp_path / "dq")
    deltas = peft_deltas(quant_base, quant_adapters["qv"])
    quantizable = quantizable_modules(quant_base)
    assert set(out) == set(base)
    seen = {"target": 0, "other": 0, "untouched": 0}
    for key, w0 in base.items():
        module = key.removesuffix(".weight")
        if module in deltas:
            torch.testing.assert_close(out[key], roundtrip(w0, "nf4") + deltas[module], atol=1e-5, rtol=1e-5)
            seen["target"] += 1
        elif module in quantizable:
            assert torch.equal(out[key], roundtrip(w0, "nf4")) and not torch.equal(out[key], w0)
            seen["other"] += 1
        else:
            assert torch.equal(out[key], w0), key  # embeddings, norms
            seen["untouched"] += 1
    assert seen == {"target": 4, "other": 10, "untouched": len(base) - 14}
    meta = json.loads((tmp_path / "dq" / "adaptermerge.json").read_text())
    assert meta["merge_onto"]["merge_onto"] == "dequantized" and meta["merge_onto"]["quantizable_modules"] == 14


def test_dequantized_merge_is_closer_to_the_trained_qlora_model(quant_base, quant_adapters, tmp_path):
    """What a QLoRA adapter was trained in: the NF4 base plus the adapter, through PEFT."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from adaptermerge.base import load_model

    adapter = load_adapter(quant_adapters["all"])
    for onto in ("original", "dequantized"):
        merge_to_model([adapter], tmp_path / onto, base=str(quant_base), merge_onto=onto)
    qlora = PeftModel.from_pretrained(load_model(str(quant_base), quantization="nf4"), quant_adapters["all"]).eval()
    ids = torch.tensor([[5, 17, 3, 99, 42, 7, 64]])
    with torch.no_grad():
        target = qlora(ids).logits
        gaps = {onto: (AutoModelForCausalLM.from_pretrained(tmp_path / onto)(ids).logits - target).abs().max().item() for onto in ("original", "dequantized")}
    assert gaps["dequantized"] < 0.1 * gaps["original"], gaps


def test_default_merge_onto_follows_training_json(quant_adapters, tmp_path):
    qlora_dir = tmp_path / "qlora"
    shutil.copytree(quant_adapters["qv"], qlora_dir)
    (qlora_dir / "training.json").write_text(json.dumps({"task": "x", "quantization": "nf4"}))
    plain, qlora = load_adapter(quant_adapters["qv"]), load_adapter(qlora_dir)
    assert choose_merge_onto([qlora], None)["merge_onto"] == "dequantized"  # measured best in full precision
    assert choose_merge_onto([qlora], None, requantize="nf4")["merge_onto"] == "original"  # and re-quantized
    assert choose_merge_onto([plain], None)["merge_onto"] == "original"
    assert choose_merge_onto([qlora, plain], None)["merge_onto"] == "original"  # not every adapter saw NF4
    asked = choose_merge_onto([plain], "dequantized")
    assert (asked["merge_onto"], asked["scheme"]) == ("dequantized", "nf4")
    with pytest.raises(AdapterMergeError, match="expected one of original, dequantized"):
        choose_merge_onto([plain], "quantized")


def test_requantize_nf4_reloads_as_linear4bit_with_the_report(quant_base, quant_adapters, tmp_path):
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    out = tmp_path / "nf4"
    merge_to_model([load_adapter(quant_adapters["all"])], out, base=str(quant_base), requantize="nf4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nf4"]  # no temp folder left beside it
    model = AutoModelForCausalLM.from_pretrained(out)
    layers = quantized_modules(model)
    assert len(layers) == 14 and all(isinstance(m, bnb.nn.Linear4bit) for m in layers.values())
    meta = json.loads((out / "adaptermerge.json").read_text())
    q = meta["quantization"]
    assert meta["method"] == "linear" and meta["output"] == "model"  # the merge provenance is kept
    assert q["scheme"] == "nf4" and set(q["layers"]) == set(layers)
    assert 0 < q["mean_layer_error"] < 0.2 and q["size_bytes"]["after"] < q["size_bytes"]["before"]


def test_bad_requantize_and_quantized_base_leave_nothing(quant_base, quant_adapters, tmp_path):
    from adaptermerge.quantization import quantize_model

    adapter = load_adapter(quant_adapters["qv"])
    with pytest.raises(AdapterMergeError, match="unknown quantization scheme 'nf3'"):
        merge_to_model([adapter], tmp_path / "x", base=str(quant_base), requantize="nf3")
    quantize_model(quant_base, tmp_path / "nf4_base", "nf4")
    with pytest.raises(AdapterMergeError, match="already quantized"):
        merge_to_model([adapter], tmp_path / "y", base=str(tmp_path / "nf4_base"), merge_onto="original", check_base=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nf4_base"]


def test_streaming_safetensors_writer_round_trips_every_dtype(tmp_path):
    from adaptermerge.stwriter import StreamingSafetensors

    g = torch.Generator().manual_seed(0)
    tensors = {
        "a": torch.randn(3, 5, generator=g),
        "b": torch.randn(7, generator=g).to(torch.bfloat16),
        "c": torch.randint(-9, 9, (2, 2, 2), generator=g, dtype=torch.int64),
        "d": torch.tensor(1.5, dtype=torch.float16),
    }
    codes = {torch.float32: "F32", torch.bfloat16: "BF16", torch.int64: "I64", torch.float16: "F16"}
    layout = [(k, codes[t.dtype], list(t.shape)) for k, t in tensors.items()]
    with StreamingSafetensors(tmp_path / "x.safetensors", layout, metadata={"format": "pt"}) as w:
        for k, t in tensors.items():
            w.write(k, t)
    loaded = load_file(tmp_path / "x.safetensors")
    assert all(torch.equal(loaded[k], t) and loaded[k].dtype == t.dtype for k, t in tensors.items())
    with pytest.raises(ValueError, match="expected a F32"):
        with StreamingSafetensors(tmp_path / "y.safetensors", layout) as w:
            w.write("a", tensors["a"].double())


@pytest.mark.parametrize("dtype, code", [("float16", torch.float16), ("bfloat16", torch.bfloat16)])
def test_dtype_sets_the_shards_dtype_and_config(tiny_base, adapters, tmp_path, dtype, code):
    from transformers import AutoModelForCausalLM

    a = load_adapter(adapters["a"])
    merge_to_model([a], tmp_path / "full", "linear", base=str(tiny_base), dtype=dtype, shard_size="100KB")
    merge_to_model([a], tmp_path / "ref", "linear", base=str(tiny_base))
    ours, ref = state(tmp_path / "full"), state(tmp_path / "ref")
    assert set(ours) == set(ref) and {t.dtype for t in ours.values()} == {code}
    for key in ref:
        torch.testing.assert_close(ours[key], ref[key].to(code))
    config = json.loads((tmp_path / "full" / "config.json").read_text())
    assert config["torch_dtype"] == dtype and config.get("dtype", dtype) == dtype
    index = json.loads((tmp_path / "full" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in ours.values())
    assert json.loads((tmp_path / "full" / "adaptermerge.json").read_text())["dtype"] == dtype
    assert f"- dtype: {dtype}" in (tmp_path / "full" / "README.md").read_text()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "full", dtype="auto")
    assert model.dtype == code and torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits.float()).all()


def test_dtype_is_checked_before_any_work(tiny_base, adapters, tmp_path):
    a = load_adapter(adapters["a"])
    with pytest.raises(AdapterMergeError, match=r"^dtype must be one of float16, bfloat16, float32, got 'int8'$"):
        merge_to_model([a], tmp_path / "full", "linear", base=str(tiny_base), dtype="int8")
    with pytest.raises(AdapterMergeError, match="dtype float16 applies to an unquantized model"):
        merge_to_model([a], tmp_path / "full", "linear", base=str(tiny_base), dtype="float16", requantize="nf4")
    assert not (tmp_path / "full").exists()
