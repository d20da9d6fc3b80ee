"""The aligned low-rank methods (knots, tsv, iso_c, iso_cts, core) end to end through the CLI on
real PEFT adapters: the written adapter is the method's exact merge, and it loads in PEFT."""

import json

import pytest
import torch

from adaptermerge import load_adapter
from adaptermerge.cli.main import main
from adaptermerge.methods import METHODS, MergeContext

ALIGNED = ["knots", "tsv", "iso_c", "iso_cts", "core"]


def run(argv):
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    return info.value.code


@pytest.mark.parametrize("name, flags, params", [
    ("knots", ["--density", "0.5"], {"density": 0.5}),
    ("tsv", ["--keep", "0.5"], {"keep": 0.5}),
    ("iso_c", ["--lambda", "1.5"], {"lambda_": 1.5}),
    ("iso_cts", ["--common", "0.6"], {"common": 0.6}),
    ("core", ["--inner", "dare_ties", "--density", "0.5"], {"inner": "dare_ties", "density": 0.5}),
])
def test_cli_merge_is_the_exact_method_result(adapters, tmp_path, name, flags, params):
    out = tmp_path / name
    assert run([name, adapters["a"], adapters["b"], "--weights", "1,0.5", "-o", out, *flags]) == 0
    meta = json.loads((out / "adaptermerge.json").read_text())
    assert meta["method"] == name and meta["summary"]["all_exact"]
    merged, a, b = load_adapter(out), load_adapter(adapters["a"]), load_adapter(adapters["b"])
    method = METHODS.get(name)
    for m in ("model.layers.0.mlp.down_proj", "model.layers.1.self_attn.k_proj"):  # b lacks k_proj
        inputs = [a.factors(m), b.factors(m) if m in b.modules else None]
        expect = method.merge_module(inputs, [1.0, 0.5], None, method.Params(**params), MergeContext(m, 0, torch.device("cpu"))).delta()
        torch.testing.assert_close(merged.factors(m).delta(), expect, rtol=1e-4, atol=1e-5 * float(expect.abs().max()))


def test_knots_output_loads_in_peft(tiny_base, adapters, tmp_path):
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    assert run(["knots", adapters["a"], adapters["c"], "-o", tmp_path / "k"]) == 0
    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tiny_base), tmp_path / "k")
    assert torch.isfinite(model(torch.tensor([[1, 2, 3, 4]])).logits).all()


def test_methods_lists_them(capsys):
    assert run(["methods", "--json"]) == 0
    rows = {r["method"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(ALIGNED) <= set(rows)
    assert all(rows[n]["exact_adapter_output"] and not rows[n]["needs_base"] for n in ALIGNED)
    assert [p["name"] for p in rows["core"]["parameters"]] == ["inner", "density", "lambda"]
