import pytest

from adaptermerge import base
from adaptermerge.errors import AdapterMergeError
from adaptermerge.evalsuite import candidates


def test_auto_dtype_resolves_to_a_concrete_dtype():
    import torch

    resolved = base.resolve_dtype("auto")
    assert resolved in base.DTYPES
    if not torch.cuda.is_available():
        # bf16 only with hardware bf16 (AVX512-BF16 or AMX): emulated it is ~4x slower than float32.
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        assert resolved == ("bfloat16" if native else "float32")


def test_emulated_bf16_is_not_taken_for_native(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    assert base.resolve_dtype("auto") == "float32"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert base.resolve_dtype("auto") == "bfloat16"


def test_auto_asks_the_device_that_computes(monkeypatch):
    """A CPU computation on a machine with a GPU is still a CPU computation (evaluation, a CPU
    merge's range finder): auto must not pick the GPU's bfloat16 for it."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert base.resolve_dtype("auto") == "float32"
    assert base.resolve_dtype("auto", "cpu") == "float32"
    assert base.resolve_dtype("auto", "cuda") == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert base.resolve_dtype("auto", "cuda:1") == "float32"


def test_explicit_dtype_is_kept_and_unknown_is_refused():
    assert base.resolve_dtype("float32") == "float32"
    with pytest.raises(AdapterMergeError, match="float16.*auto, float32, bfloat16"):
        base.resolve_dtype("float16")


def test_an_adapter_is_never_scored_on_another_data_seeds_eval_split(adapters, tmp_path):
    """Built-in data of another seed splits its items differently: seed 1's safety eval split holds
    prompts of seed 0's training split. An adapter whose training.json names one seed is refused on
    another's data, by name; the seed it trained on, or a task it did not train on, is fine."""
    import json
    import shutil

    from adaptermerge.evalsuite.runner import check_data_seed
    from adaptermerge.chat.data import DATA_SEED, build_records

    def prompts(split, seed):
        return {r["messages"][0]["content"] for r in build_records("safety", split, seed)}

    assert prompts("eval", DATA_SEED).isdisjoint(prompts("train", DATA_SEED))
    assert prompts("eval", DATA_SEED + 1) & prompts("train", DATA_SEED)  # why the check exists

    folder = tmp_path / "safety_adapter"
    shutil.copytree(adapters["a"], folder)
    (folder / "training.json").write_text(json.dumps({"task": "safety", "data": {"built_in": True, "task": "safety", "split": "train", "seed": 1}}))
    adapter = candidates.resolve_candidate(str(folder))
    with pytest.raises(AdapterMergeError, match=r"safety_adapter: trained on the built-in safety data generated with seed 1.*data_seed=1"):
        check_data_seed([adapter], ["domain", "safety"], None)
    check_data_seed([adapter], ["safety"], 1)
    check_data_seed([adapter], ["domain", "mmlu"], None)


def test_the_eval_seed_moves_the_mmlu_sample_not_the_built_in_data():
    from adaptermerge.evalsuite import harness
    from adaptermerge.evalsuite.scoring import task_specs
    from adaptermerge.evalsuite.settings import EvalSettings

    docs = [task_specs(["safety"], EvalSettings(seed=s), None, "cloze")[0].docs for s in (0, 5)]
    assert docs[0] == docs[1] == harness.builtin_spec("safety").docs


def test_lm_eval_task_files_take_the_data_seed_apart_from_the_mmlu_seed():
    """The YAML hooks lm-eval calls: its `seed` metadata moves MMLU only, as EvalSettings.seed does;
    another data seed has to be asked for by name."""
    from adaptermerge.evalsuite import taskdata
    from adaptermerge.evalsuite.tasks import utils

    def prompts(**metadata):
        return utils.safety_dataset(**metadata)["test"]["prompt"]

    fixed = [d["prompt"] for d in taskdata.builtin_docs("safety")]
    assert prompts() == prompts(seed=3) == fixed
    assert prompts(data_seed=1) != fixed
