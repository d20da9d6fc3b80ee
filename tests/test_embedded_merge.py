"""Merging real PEFT adapters made on the real embedded base (SmolLM2-135M-Instruct), through the
CLI with the default base, and loading the results in PEFT / transformers."""

import json

import pytest
import torch

from adaptermerge.cli.main import main
from support import make_adapter


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    from adaptermerge import base

    try:
        folder = base.embedded_base_dir()
    except Exception as exc:  # the package is a test dependency; say why if it is missing
        pytest.skip(f"embedded base unavailable: {exc}")
    root = tmp_path_factory.mktemp("smol_adapters")
    name = base.EMBEDDED_ID
    return {
        "base": folder,
        "a": make_adapter(folder, root / "a", seed=1, r=8, alpha=16, targets=["q_proj", "v_proj", "down_proj"], base_name=name),
        "b": make_adapter(folder, root / "b", seed=2, r=4, alpha=8, targets=["q_proj", "o_proj", "up_proj"], base_name=name, dora=True),
    }


def run(argv):
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    return info.value.code


def test_dora_merge_with_default_base_to_model_matches_adapter_output(smol, tmp_path):
    """`adaptermerge dora a/ b/ -o merged/ --output model` with no --base uses the embedded base;
    the full model equals the base with the merged DoRA adapter applied by PEFT."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert run(["dora", smol["a"], smol["b"], "-o", tmp_path / "full", "--output", "model"]) == 0
    assert run(["dora", smol["a"], smol["b"], "-o", tmp_path / "adapter"]) == 0
    meta = json.loads((tmp_path / "full" / "adaptermerge.json").read_text())
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["output"] == "model"
    tok = AutoTokenizer.from_pretrained(tmp_path / "full")
    ids = tok("The capital of France is", return_tensors="pt")
    full = AutoModelForCausalLM.from_pretrained(tmp_path / "full")
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(smol["base"]), tmp_path / "adapter")
    with torch.no_grad():
        a, b = full(**ids).logits, peft(**ids).logits
    torch.testing.assert_close(a, b, atol=2e-3, rtol=1e-3)  # linear inner: the adapter output is exact
    # the merge changed the model
    base_logits = AutoModelForCausalLM.from_pretrained(smol["base"])(**ids).logits
    assert (a - base_logits).abs().max() > 1e-3


def test_ties_merge_loads_and_generates(smol, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lora_only = tmp_path / "b_lora"
    make_adapter(smol["base"], lora_only, seed=3, r=4, alpha=8, targets=["q_proj", "o_proj"], base_name="HuggingFaceTB/SmolLM2-135M-Instruct")
    assert run(["ties", smol["a"], lora_only, "-o", tmp_path / "ties", "--density", "0.3"]) == 0
    meta = json.loads((tmp_path / "ties" / "adaptermerge.json").read_text())
    assert meta["summary"]["modules"] == 30 * 4  # q, v, down from a; q, o from b: union of 4 kinds
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(smol["base"]), tmp_path / "ties")
    tok = AutoTokenizer.from_pretrained(smol["base"])
    out = model.generate(**tok("Hello", return_tensors="pt"), max_new_tokens=5, do_sample=False)
    assert out.shape[1] > 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_merge_equals_cpu_merge(smol):
    from adaptermerge import load_adapter, merge

    a = load_adapter(smol["a"])
    cpu = merge([a, a], "ties", density=0.3, device="cpu")
    gpu = merge([a, a], "ties", density=0.3, device="cuda")
    m = "model.layers.0.self_attn.q_proj"
    torch.testing.assert_close(gpu.factors(m).delta(), cpu.factors(m).delta(), atol=1e-4, rtol=1e-3)
