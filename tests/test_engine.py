import json

import pytest
import torch

from adaptermerge import AdapterMergeError, MergePlan, load_adapter, merge, merge_to_model
from adaptermerge.methods.math import dora_weight, row_norm
from support import peft_deltas


def deltas_of(adapter):
    return {m: adapter.factors(m).delta() for m in adapter.modules}


def assert_same_deltas(got, ref, atol=1e-5):
    assert set(got) == set(ref)
    for m in ref:
        torch.testing.assert_close(got[m], ref[m], atol=atol, rtol=1e-4)


def test_one_adapter_at_weight_one_comes_back_unchanged(adapters):
    a = load_adapter(adapters["pattern"])
    for method in ("linear", "task_arithmetic", "sequential", "cat"):
        assert_same_deltas(deltas_of(merge([a], method)), deltas_of(a))


def test_merging_an_adapter_with_itself_returns_it(adapters):
    a = load_adapter(adapters["a"])
    merged = merge([a, a], "linear")
    assert_same_deltas(deltas_of(merged), deltas_of(a))
    assert merged.metadata["summary"]["ranks"] == [4]  # rank r, not 2r
    assert_same_deltas(deltas_of(merge([a, a], "ties", density=1.0)), deltas_of(a))


def test_linear_equals_peft_cat_the_exact_weighted_sum(tiny_base, adapters, tmp_path):
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    a, b, c = (load_adapter(adapters[k]) for k in "abc")
    weights = [0.5, 0.3, 0.2]
    ours = merge([a, b, c], "linear", weights)
    ours.save(tmp_path / "ours")
    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tiny_base), adapters["a"], adapter_name="a")
    model.load_adapter(adapters["b"], adapter_name="b")
    model.load_adapter(adapters["c"], adapter_name="c")
    model.add_weighted_adapter(["a", "b", "c"], weights, "cat", combination_type="cat")
    model.set_adapter("cat")
    (tmp_path / "peft").mkdir()
    model.save_pretrained(tmp_path / "peft", selected_adapters=["cat"])
    ref = peft_deltas(tiny_base, tmp_path / "peft" / "cat")
    assert_same_deltas(peft_deltas(tiny_base, tmp_path / "ours"), ref)
    # and both equal the weighted sum of each adapter's own delta
    da, db, dc = deltas_of(a), deltas_of(b), deltas_of(c)
    for m, d in ref.items():
        expect = 0.5 * da[m] + (0.3 * db[m] if m in db else 0) + 0.2 * dc[m]
        torch.testing.assert_close(d, expect, atol=1e-5, rtol=1e-4)


def test_ties_module_result_matches_independent_dense_ties(adapters):
    from methods.test_math import dense_ties_reference

    a, b = load_adapter(adapters["a"]), load_adapter(adapters["b"])
    plan = MergePlan([a, b], "ties", [1.0, 2.0], density=0.3)
    m = "model.layers.1.self_attn.q_proj"
    result, _ = plan.module_result(m)
    ref = dense_ties_reference([a.factors(m).delta(), b.factors(m).delta()], [1.0, 2.0], 0.3)
    torch.testing.assert_close(result.dense, ref)
    # a module only `a` has: TIES of one delta is its trimmed self
    m = "model.layers.0.self_attn.k_proj"
    result, _ = plan.module_result(m)
    torch.testing.assert_close(result.dense, dense_ties_reference([a.factors(m).delta()], [1.0], 0.3))


def test_ties_adapter_output_records_error_and_loads_in_peft(tiny_base, adapters, tmp_path):
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    a, b = load_adapter(adapters["a"]), load_adapter(adapters["b"])
    merged = merge([a, b], "ties", density=0.2)
    merged.save(tmp_path / "ties")
    meta = json.loads((tmp_path / "ties" / "adaptermerge.json").read_text())
    assert meta["method"] == "ties" and meta["params"]["density"] == 0.2
    assert len(meta["inputs"]) == 2 and all(len(i["sha256"]) == 64 for i in meta["inputs"])
    for stats in meta["modules"].values():
        assert 0 <= stats["rel_error"] < 1 and 0 < stats["energy"] <= 1
    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tiny_base), tmp_path / "ties")
    out = model(torch.tensor([[1, 2, 3, 4]])).logits
    assert torch.isfinite(out).all()


def test_model_output_matches_peft_merge_and_unload(tiny_base, adapters, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    a = load_adapter(adapters["a"])
    merge_to_model([a], tmp_path / "full", "linear", base=str(tiny_base), shard_size="100KB")
    index = json.loads((tmp_path / "full" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # really sharded
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "full").state_dict()
    ref = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tiny_base), adapters["a"]).merge_and_unload().state_dict()
    assert set(ours) == set(ref)
    for k in ref:
        torch.testing.assert_close(ours[k], ref[k], atol=1e-6, rtol=1e-5)


def test_dora_single_adapter_roundtrip_adapter_and_model(tiny_base, adapters, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    d = load_adapter(adapters["dora"])
    merged = merge([d], "dora", base=str(tiny_base))
    assert merged.is_dora
    for m in d.modules:
        torch.testing.assert_close(merged.factors(m).magnitude, d.factors(m).magnitude)
    merged.save(tmp_path / "dora_out")
    ref = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tiny_base), adapters["dora"]).merge_and_unload().state_dict()
    got = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tiny_base), tmp_path / "dora_out").merge_and_unload().state_dict()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=1e-5, rtol=1e-4)
    merge_to_model([d], tmp_path / "dora_full", "dora", base=str(tiny_base))
    full = AutoModelForCausalLM.from_pretrained(tmp_path / "dora_full").state_dict()
    for k in ref:
        torch.testing.assert_close(full[k], ref[k], atol=1e-5, rtol=1e-4)


def test_dora_merge_of_two_follows_the_documented_formula(tiny_base, adapters):
    from safetensors import safe_open

    d1, d2 = load_adapter(adapters["dora"]), load_adapter(adapters["dora2"])
    plan = MergePlan([d1, d2], "dora", [0.7, 0.3], base=str(tiny_base))
    m = "model.layers.0.self_attn.q_proj"
    with safe_open(str(tiny_base / "model.safetensors"), "pt") as f:
        w0 = f.get_tensor(m + ".weight")
    f1, f2 = d1.factors(m), d2.factors(m)
    v1 = (w0 + f1.delta()) / row_norm(w0 + f1.delta())[:, None]
    v2 = (w0 + f2.delta()) / row_norm(w0 + f2.delta())[:, None]
    direction = 0.7 * v1 + 0.3 * v2
    magnitude = 0.7 * f1.magnitude + 0.3 * f2.magnitude
    expect = magnitude[:, None] * direction / row_norm(direction)[:, None]
    torch.testing.assert_close(plan.merged_weight(m), expect, atol=1e-5, rtol=1e-4)


def test_sequential_dora_order_matters_and_matches_stepwise(tiny_base, adapters):
    d1, d2 = load_adapter(adapters["dora"]), load_adapter(adapters["dora2"])
    m = "model.layers.0.self_attn.q_proj"
    ab = MergePlan([d1, d2], "sequential", base=str(tiny_base)).merged_weight(m)
    ba = MergePlan([d2, d1], "sequential", base=str(tiny_base)).merged_weight(m)
    assert not torch.allclose(ab, ba, atol=1e-4)
    w0 = MergePlan([d1], "dora", base=str(tiny_base)).base_weights.weight(m)
    w1 = dora_weight(w0, d1.factors(m).delta(), d1.factors(m).magnitude)
    w2 = dora_weight(w1, d2.factors(m).delta(), d2.factors(m).magnitude)
    torch.testing.assert_close(ab, w2, atol=1e-5, rtol=1e-4)


def test_dare_is_reproducible_and_seed_dependent(adapters):
    a, b = load_adapter(adapters["a"]), load_adapter(adapters["b"])
    m = "model.layers.0.self_attn.q_proj"
    r1 = MergePlan([a, b], "dare_ties", density=0.5, seed=3).module_result(m)[0].dense
    r2 = MergePlan([a, b], "dare_ties", density=0.5, seed=3).module_result(m)[0].dense
    r3 = MergePlan([a, b], "dare_ties", density=0.5, seed=4).module_result(m)[0].dense
    assert torch.equal(r1, r2) and not torch.equal(r1, r3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="nope"), "unknown merge method 'nope': expected one of linear"),
        (dict(method="ties", density=0.0), r"density must be in \(0, 1\]"),
        (dict(method="ties", density=1.5), r"density must be in \(0, 1\]"),
        (dict(method="linear", weights=[1.0]), "1 weights given for 2 adapters"),
        (dict(method="linear", density=0.5), "method linear has no parameter 'density'"),
        (dict(method="dora", inner="median"), "inner must be one of linear, ties"),
        # the Python API's values are checked against each parameter's type, as the CLI's parser does
        (dict(method="task_arithmetic", lambda_=float("nan")), "lambda must be a finite number, got nan"),
        (dict(method="linear", normalize="no"), "normalize must be true or false, got 'no'"),
        (dict(method="ties", density="dense"), "density must be a number, got 'dense'"),
        (dict(method="linear", weights=1.0), "weights must be a list of numbers, one per adapter"),
        (dict(method="linear", weights=["a", 1]), "weights must be a list of numbers"),
        (dict(method="linear", seed="x"), "seed must be an integer, got 'x'"),
        (dict(method="ties", rank=2.5), r"rank \(--rank\) must be a positive integer, got 2.5"),
        (dict(method="linear", base="/no/such/base"), "base /no/such/base .*: no such folder"),
    ],
)
def test_bad_parameters_are_clear_errors(adapters, kwargs, message):
    a, b = load_adapter(adapters["a"]), load_adapter(adapters["c"])
    with pytest.raises(AdapterMergeError, match=message):
        merge([a, b], **kwargs)


def test_numeric_strings_are_taken_as_numbers(adapters):
    a, b = load_adapter(adapters["a"]), load_adapter(adapters["c"])
    assert MergePlan([a, b], "ties", density="0.5").params.density == 0.5


def test_dora_inputs_refused_by_delta_methods(adapters):
    with pytest.raises(AdapterMergeError, match="DoRA adapter .* would drop its magnitudes"):
        merge([load_adapter(adapters["a"]), load_adapter(adapters["dora"])], "ties")


def test_mismatched_shapes_and_bases_are_refused(tiny_base, adapters, tmp_path):
    from support import make_adapter, tiny_config
    from transformers import LlamaForCausalLM

    other = tmp_path / "other_base"
    LlamaForCausalLM(tiny_config(hidden_size=48, intermediate_size=96)).save_pretrained(other)
    wide = load_adapter(make_adapter(other, tmp_path / "wide", seed=1, base_name=str(tiny_base)))
    with pytest.raises(AdapterMergeError, match="do not fit the same base model"):
        merge([load_adapter(adapters["a"]), wide], "linear")
    foreign = load_adapter(make_adapter(tiny_base, tmp_path / "foreign", seed=1, base_name="org/another-model"))
    with pytest.raises(AdapterMergeError, match="different base models"):
        merge([load_adapter(adapters["a"]), foreign], "linear")
    assert merge([load_adapter(adapters["a"]), foreign], "linear", check_base=False).modules


def test_sequential_single_dora_adapter_comes_back_unchanged_and_chain_is_low_rank(tiny_base, adapters):
    d1, d2 = load_adapter(adapters["dora"]), load_adapter(adapters["dora2"])
    one = merge([d1], "sequential", base=str(tiny_base))
    for m in d1.modules:
        torch.testing.assert_close(one.factors(m).delta(), d1.factors(m).delta(), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(one.factors(m).magnitude, d1.factors(m).magnitude)
    chain = merge([d1, d2], "sequential", base=str(tiny_base))
    meta = chain.metadata
    assert meta["summary"]["all_exact"]  # the chain is a DoRA layer of rank <= 4 + 2, no truncation
    plan = MergePlan([d1, d2], "sequential", base=str(tiny_base))
    m = "model.layers.0.self_attn.q_proj"
    w0 = plan.base_weights.weight(m)
    f = chain.factors(m)
    torch.testing.assert_close(dora_weight(w0, f.delta(), f.magnitude), plan.merged_weight(m), atol=1e-5, rtol=1e-4)


def test_dora_without_normalize_adds_the_changes_of_magnitude_and_direction(tiny_base, adapters):
    """normalize=false is task arithmetic on DoRA's parts: m = b + sum w_i (m_i - b) and
    V = V0 + sum w_i (V_i - V0), with b = ||W0||_row and V0 = W0 / b (a sum of the magnitudes
    themselves would scale every row by the weights' sum)."""
    from safetensors import safe_open

    d1, d2 = load_adapter(adapters["dora"]), load_adapter(adapters["dora2"])
    weights = [0.3, 0.4]  # not summing to 1: the base keeps a share of 0.3
    plan = MergePlan([d1, d2], "dora", weights, base=str(tiny_base), normalize=False)
    m = "model.layers.0.self_attn.q_proj"
    with safe_open(str(tiny_base / "model.safetensors"), "pt") as f:
        w0 = f.get_tensor(m + ".weight")
    b = row_norm(w0)
    f1, f2 = d1.factors(m), d2.factors(m)
    v0 = w0 / b[:, None]
    v1 = (w0 + f1.delta()) / row_norm(w0 + f1.delta())[:, None]
    v2 = (w0 + f2.delta()) / row_norm(w0 + f2.delta())[:, None]
    direction = v0 + weights[0] * (v1 - v0) + weights[1] * (v2 - v0)
    magnitude = b + weights[0] * (f1.magnitude - b) + weights[1] * (f2.magnitude - b)
    expect = magnitude[:, None] * direction / row_norm(direction)[:, None]
    torch.testing.assert_close(plan.merged_weight(m), expect, atol=1e-5, rtol=1e-4)
    # These random fixtures' deltas are larger than the base weights: at weights 1, 1 the summed
    # direction changes outweigh V0, which no W0 + delta can express; that is an error, not a flip.
    with pytest.raises(AdapterMergeError, match=r"dora, module .*past zero"):
        merge([d1, d2], "dora", [1.0, 1.0], base=str(tiny_base), normalize=False)


def _as_causal_lm(src, dst):
    """A copy of a fixture adapter as PEFT saves a CAUSAL_LM one: task_type set, auto_mapping null."""
    import shutil

    shutil.copytree(src, dst)
    config = json.loads((dst / "adapter_config.json").read_text())
    config.update(task_type="CAUSAL_LM", auto_mapping=None)
    (dst / "adapter_config.json").write_text(json.dumps(config))
    return dst


def test_a_merge_of_causal_lm_adapters_loads_with_auto_peft_model(tiny_base, adapters, tmp_path):
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import LlamaForCausalLM

    a, c = _as_causal_lm(adapters["a"], tmp_path / "a"), _as_causal_lm(adapters["c"], tmp_path / "c")
    merge([load_adapter(a), load_adapter(c)], "ties", density=0.5, out=tmp_path / "m")
    config = json.loads((tmp_path / "m" / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and "auto_mapping" not in config
    ids = torch.tensor([[1, 2, 3, 4]])
    auto = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    ref = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tiny_base), tmp_path / "m").eval()
    with torch.no_grad():
        logits = auto(ids).logits
        assert logits.shape == (1, 4, 128) and torch.isfinite(logits).all()
        torch.testing.assert_close(logits, ref(ids).logits)


def test_peft_auto_mapping_is_kept_and_disagreeing_task_types_are_dropped(adapters, tmp_path):
    from peft import AutoPeftModelForCausalLM

    merge([load_adapter(adapters["a"]), load_adapter(adapters["b"])], "linear", out=tmp_path / "plain")
    config = json.loads((tmp_path / "plain" / "adapter_config.json").read_text())
    # the fixtures, saved by PEFT without a task type, carry auto_mapping: it loads them, and the merge
    assert config["auto_mapping"] == {"base_model_class": "LlamaForCausalLM", "parent_library": "transformers.models.llama.modeling_llama"}
    assert "task_type" not in config
    assert torch.isfinite(AutoPeftModelForCausalLM.from_pretrained(tmp_path / "plain")(torch.tensor([[5, 6]])).logits).all()
    causal = _as_causal_lm(adapters["a"], tmp_path / "a")
    merge([load_adapter(causal), load_adapter(adapters["b"])], "linear", out=tmp_path / "mixed")
    config = json.loads((tmp_path / "mixed" / "adapter_config.json").read_text())
    assert "task_type" not in config and "auto_mapping" not in config  # the inputs disagree: neither is a fact


def test_a_relative_base_folder_is_recorded_absolute(tiny_base, adapters, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_base.parent)
    merged = merge([load_adapter(adapters["a"])], "ties", base=tiny_base.name, out=tmp_path / "m")
    config = json.loads((tmp_path / "m" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_base.resolve()) == merged.metadata["base_model"]
    hub = merge([load_adapter(adapters["a"])], "linear", base="org/not-a-folder", check_base=False)
    assert hub.base_model == "org/not-a-folder"  # a hub id is kept as given


@pytest.mark.parametrize("dtype, torch_dtype", [("float16", torch.float16), ("bfloat16", torch.bfloat16), ("float32", torch.float32)])
def test_dtype_sets_the_adapter_factors_dtype(adapters, tmp_path, dtype, torch_dtype):
    from safetensors.torch import load_file

    a = load_adapter(adapters["a"])
    merge([a], "linear", dtype=dtype, out=tmp_path / "m")
    tensors = load_file(tmp_path / "m" / "adapter_model.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch_dtype}
    assert json.loads((tmp_path / "m" / "adaptermerge.json").read_text())["dtype"] == dtype
    back = load_adapter(tmp_path / "m")
    assert_same_deltas(deltas_of(back), deltas_of(a), atol=1e-2 if dtype != "float32" else 1e-5)


def test_an_unknown_dtype_is_one_line_before_any_work(adapters, tmp_path):
    with pytest.raises(AdapterMergeError, match=r"^dtype must be one of float16, bfloat16, float32, got 'float8'$") as info:
        merge([load_adapter(adapters["a"])], "linear", dtype="float8", out=tmp_path / "m")
    assert "\n" not in str(info.value) and not (tmp_path / "m").exists()
