"""Calibration Grams on a real (tiny) model, and the regmean method end to end: API, cache, CLI."""

import json

import pytest
import torch
from support import make_adapter, save_tiny_chat_model

from adaptermerge import base as base_mod
from adaptermerge import calibration, load_adapter, merge
from adaptermerge.cli.main import main
from adaptermerge.chat.data import build_records
from adaptermerge.chat.records import write_jsonl

LAYER = "model.layers.1"


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    root = tmp_path_factory.mktemp("regmean")
    base = save_tiny_chat_model(root / "base")
    adapters = [make_adapter(base, root / f"a{i}", seed=20 + i, r=2, alpha=4) for i in range(2)]
    data = [write_jsonl(build_records(task, "train", 0)[:12], root / f"{task}.jsonl") for task in ("domain", "structured")]
    return base, adapters, data


def _grams_by_hand(model, tok, records, module):
    """Independent reference: the module's inputs record by record, no batching or padding."""
    from adaptermerge.chat.tokens import tokenize_record

    named = dict(model.named_modules())
    seen = []
    handle = named[module].register_forward_pre_hook(lambda _m, args: seen.append(args[0][0].double()))
    with torch.inference_mode():
        for r in records:
            model(input_ids=torch.tensor([tokenize_record(tok, r, 512)[0]]))
    handle.remove()
    x = torch.cat(seen)
    return x.T @ x / x.shape[0]


def test_grams_match_unbatched_inputs_and_shared_inputs_are_stored_once(chat):
    from transformers import AutoTokenizer, LlamaForCausalLM

    base, adapters, data = chat
    model = LlamaForCausalLM.from_pretrained(base).eval()
    calibration.fold_adapter(model, load_adapter(adapters[0]))
    tok = AutoTokenizer.from_pretrained(base)
    records = calibration.from_file(data[0], 12, 0).records
    modules = [f"model.layers.{i}.{p}" for i in (0, 1) for p in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                                "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    grams, alias = calibration.collect_grams(model, tok, records, modules)
    assert alias[f"{LAYER}.self_attn.k_proj"] == alias[f"{LAYER}.self_attn.q_proj"]  # one input, one Gram
    assert alias[f"{LAYER}.mlp.up_proj"] == alias[f"{LAYER}.mlp.gate_proj"] != alias[f"{LAYER}.self_attn.o_proj"]
    assert len(grams) == 8
    for module in modules:
        torch.testing.assert_close(grams[alias[module]].double(), _grams_by_hand(model, tok, records, module), atol=1e-4, rtol=1e-4)


def test_the_gram_pass_skips_the_vocabulary_projection_unless_the_head_is_a_module(chat):
    from transformers import AutoTokenizer, LlamaForCausalLM

    base, _, data = chat
    model = LlamaForCausalLM.from_pretrained(base).eval()
    tok = AutoTokenizer.from_pretrained(base)
    records = calibration.from_file(data[0], 12, 0).records
    seen = []
    handle = model.lm_head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    try:
        calibration.collect_grams(model, tok, records, [f"{LAYER}.mlp.down_proj"])
        assert seen and set(seen) == {1}  # the last position only
        seen.clear()
        grams, alias = calibration.collect_grams(model, tok, records, ["lm_head"])
    finally:
        handle.remove()
    assert min(seen) > 1  # every position: the head's Gram needs them all
    torch.testing.assert_close(grams[alias["lm_head"]].double(), _grams_by_hand(model, tok, records, "lm_head"), atol=1e-4, rtol=1e-4)


def test_regmean_reports_the_gram_pass_to_the_progress_callback(chat, tmp_path, monkeypatch):
    base, adapters, data = chat
    monkeypatch.setenv("ADAPTERMERGE_CACHE", str(tmp_path / "cache"))  # an empty cache: the Grams are computed
    loaded = [load_adapter(a) for a in adapters]
    calib = ",".join(str(d) for d in data)
    calls = []
    merge(loaded, "regmean", base=str(base), calib=calib, calib_size=12, progress=lambda *a: calls.append(a))
    grams = [c for c in calls if c[2].startswith("calibration Grams")]
    assert grams[-1][:2] == (24, 24)  # 12 records per adapter
    assert [c[0] for c in grams] == sorted(c[0] for c in grams) and len(grams) > 2
    assert {c[2] for c in grams} >= {f"calibration Grams: {a.name}" for a in loaded}
    assert calls[-1][1] == len(loaded[0].modules)  # then the merge's own module count
    calls.clear()
    merge(loaded, "regmean", base=str(base), calib=calib, calib_size=12, progress=lambda *a: calls.append(a))
    assert [c for c in calls if "Grams" in c[2]] == [(12, 24, f"calibration Grams: {loaded[0].name} (cached)"),
                                                     (24, 24, f"calibration Grams: {loaded[1].name} (cached)")]


def test_regmean_beats_linear_and_sum_on_its_objective_and_reuses_the_cache(chat):
    from transformers import AutoTokenizer, LlamaForCausalLM

    base, adapters, data = chat
    loaded = [load_adapter(a) for a in adapters]
    calib = ",".join(str(d) for d in data)
    merged = merge(loaded, "regmean", base=str(base), calib=calib, calib_size=12)
    cached = sorted((base_mod.cache_dir() / "grams").glob("*.safetensors"))
    assert len(cached) >= 2
    stamp = [f.stat().st_mtime_ns for f in cached]
    again = merge(loaded, "regmean", [2.0, 2.0], base=str(base), calib=calib, calib_size=12)  # weights are relative
    assert [f.stat().st_mtime_ns for f in cached] == stamp  # read back, not recomputed

    tok = AutoTokenizer.from_pretrained(base)
    module = f"{LAYER}.mlp.down_proj"
    grams = []
    for adapter, path in zip(loaded, data):
        model = LlamaForCausalLM.from_pretrained(base).eval()
        calibration.fold_adapter(model, adapter)
        grams.append(_grams_by_hand(model, tok, calibration.from_file(path, 12, 0).records, module))
    deltas = [a.factors(module).delta().double() for a in loaded]

    def objective(d):
        return sum(float(torch.trace((d - di) @ g @ (d - di).T)) for di, g in zip(deltas, grams))

    ours = merged.factors(module).delta().double()
    torch.testing.assert_close(again.factors(module).delta().double(), ours, atol=1e-5, rtol=1e-4)
    assert objective(ours) < objective(sum(deltas) / 2)
    assert objective(ours) < objective(sum(deltas))
    assert merged.metadata["summary"]["all_exact"]


def test_modules_reading_one_input_share_one_solved_system(chat, monkeypatch):
    from adaptermerge.engine import MergePlan
    from adaptermerge.methods import regmean

    base, adapters, data = chat
    loaded = [load_adapter(a) for a in adapters]
    calib = ",".join(str(d) for d in data)
    solved = []
    real = regmean.regmean_system
    monkeypatch.setattr(regmean, "regmean_system", lambda grams, *a, **k: solved.append(grams[0].shape) or real(grams, *a, **k))
    merged = {}
    for workers in ("1", "4"):  # one thread: modules in name order; four: in any order, some at once
        monkeypatch.setenv("ADAPTERMERGE_WORKERS", workers)
        solved.clear()
        plan = MergePlan(loaded, "regmean", base=str(base), calib=calib, calib_size=12)
        merged[workers] = plan.to_adapter()
        assert plan.prepared.memo == {}  # every kept system was taken by the modules sharing it
        if workers == "1":
            distinct = {plan.prepared.key(m) for m in plan.modules}
            layers = {m.rsplit(".", 2)[0] for m in plan.modules}
            assert len(solved) == len(distinct) == 4 * len(layers) < len(plan.modules)  # one per distinct input, not per module
    store = plan.prepared
    for module in plan.modules:  # a shared system gives what a fresh solve of the module's own Grams gives
        factors = [(a.factors(module).scaled_B(), a.factors(module).A.float()) for a in loaded]
        fresh = sum(b @ a for b, a in real_terms(factors, store.grams(module)))
        for m in merged.values():
            torch.testing.assert_close(m.factors(module).delta(), fresh, atol=1e-6, rtol=1e-5)


def real_terms(factors, grams):
    from adaptermerge.methods.regmean import regmean_terms

    return regmean_terms(factors, grams, [1.0] * len(grams))


def test_refine_solves_again_on_the_inputs_the_merge_so_far_sees(chat):
    from transformers import AutoTokenizer, LlamaForCausalLM

    base, adapters, data = chat
    loaded = [load_adapter(a) for a in adapters]
    calib = ",".join(str(d) for d in data)
    first = merge(loaded, "regmean", base=str(base), calib=calib, calib_size=12)
    refined = merge(loaded, "regmean", base=str(base), calib=calib, calib_size=12, refine=1)
    # Reference: each adapter's records read by the base with the first merge folded in; the
    # targets stay each adapter's own delta.
    tok = AutoTokenizer.from_pretrained(base)
    module = f"{LAYER}.mlp.down_proj"
    grams = []
    for path in data:
        model = LlamaForCausalLM.from_pretrained(base).eval()
        calibration.fold_adapter(model, first)
        grams.append(_grams_by_hand(model, tok, calibration.from_file(path, 12, 0).records, module))
    deltas = [a.factors(module).delta().double() for a in loaded]
    expected = sum(d @ g for d, g in zip(deltas, grams)) @ torch.linalg.inv(sum(grams))
    got = refined.factors(module).delta().double()
    # S is ill-conditioned here (cond ~1e5): float32 Grams against float64 ones move the solve by ~1 %.
    assert (got - expected).norm() < 0.02 * expected.norm()
    assert (got - first.factors(module).delta().double()).norm() > 0.1 * got.norm()  # the inputs did move


def test_refine_must_not_be_negative(chat):
    from adaptermerge.errors import AdapterMergeError

    base, adapters, data = chat
    with pytest.raises(AdapterMergeError, match="refine must be >= 0"):
        merge([load_adapter(adapters[0])], "regmean", base=str(base), calib=str(data[0]), refine=-1)


def test_cli_regmean_needs_calibration_data_it_can_find(chat, tmp_path, capsys):
    base, adapters, data = chat
    out = tmp_path / "m"
    code = _run(["regmean", *adapters, "--base", base, "-o", out])
    assert code == 2
    err = capsys.readouterr().err
    assert "training.json" in err and "--calib" in err and "a0" in err
    assert not out.exists()
    assert _run(["regmean", *adapters, "--base", base, "-o", out, "--calib", str(data[0])]) == 2
    assert "1 files for 2 adapters" in capsys.readouterr().err
    assert _run(["regmean", *adapters, "--base", base, "-o", out, "--calib", f"{data[0]},{data[1]}", "--calib-size", "6"]) == 0
    meta = json.loads((out / "adaptermerge.json").read_text())
    assert meta["method"] == "regmean" and meta["params"]["calib_size"] == 6
    assert [c["records"] for c in meta["calibration"]] == [6, 6]
    assert meta["calibration"][1]["source"] == str(data[1].resolve())


def test_calibration_from_training_json(chat, tmp_path):
    base, adapters, data = chat
    folder = tmp_path / "trained"
    folder.mkdir()
    for f in adapters[0].iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "training.json").write_text(json.dumps({"data": {"built_in": True, "task": "safety", "split": "train", "seed": 0}}))
    calib = calibration.from_training(load_adapter(folder), 5, 0)
    assert len(calib.records) == 5 and "safety" in calib.source
    pool = build_records("safety", "train", 0)
    assert all(r in pool for r in calib.records)
    (folder / "training.json").write_text(json.dumps({"data": {"built_in": False, "path": str(tmp_path / "gone.jsonl")}}))
    with pytest.raises(Exception, match="gone.jsonl"):
        calibration.from_training(load_adapter(folder), 5, 0)


def _run(argv):
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    return info.value.code
