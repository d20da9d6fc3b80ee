"""No loader ever unpickles: every way a model or adapter is loaded (evaluation, quantize,
calibration, training's --on-top-of, the base) is given a folder whose pickle weights would create
a marker file if unpickled, and must refuse it with one line before anything reads it."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from adaptermerge import base as base_mod
from adaptermerge import calibration, quantization
from adaptermerge.cli.main import main
from adaptermerge.errors import AdapterMergeError
from adaptermerge.evalsuite import candidates


class Hostile:
    """Unpickling it creates `marker` (the stand-in for arbitrary code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def hostile_pickle(path, marker):
    torch.save({"weight": Hostile(marker)}, path)
    return path


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "PWNED"


def test_the_hostile_pickle_does_run_code_when_unpickled(tmp_path, marker):
    """The control: the files below are truly hostile to a loader that unpickles."""
    path = hostile_pickle(tmp_path / "x.bin", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.fixture
def pickle_model(tmp_path, tiny_base, marker):
    """A model folder: config and tokenizer files, pytorch_model.bin (hostile) and a decoy
    .safetensors that is not the model's weights file."""
    folder = tmp_path / "pickle_model"
    folder.mkdir()
    shutil.copy(tiny_base / "config.json", folder / "config.json")
    hostile_pickle(folder / "pytorch_model.bin", marker)
    save_file({"decoy": torch.zeros(2)}, folder / "decoy.safetensors")
    return folder


@pytest.fixture
def sharded_pickle_model(tmp_path, tiny_base, marker):
    """An index whose weight_map names a pickle shard."""
    folder = tmp_path / "sharded_pickle_model"
    folder.mkdir()
    shutil.copy(tiny_base / "config.json", folder / "config.json")
    hostile_pickle(folder / "pytorch_model-00001-of-00001.bin", marker)
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "pytorch_model-00001-of-00001.bin"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


@pytest.fixture
def pickle_adapter(tmp_path, adapters, marker):
    """A PEFT adapter folder whose only weights are adapter_model.bin (hostile)."""
    folder = tmp_path / "pickle_adapter"
    folder.mkdir()
    shutil.copy(adapters["a"] / "adapter_config.json", folder / "adapter_config.json")
    hostile_pickle(folder / "adapter_model.bin", marker)
    return folder


def refused(call, match="pickle|safetensors"):
    with pytest.raises(AdapterMergeError, match=match) as info:
        call()
    assert "\n" not in str(info.value)
    return str(info.value)


def cli(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    return info.value.code, capsys.readouterr().err.strip()


# ---------------------------------------------------------------- the Python loaders


@pytest.mark.parametrize("model", ["pickle_model", "sharded_pickle_model"])
def test_base_loading_refuses_pickle_weights(request, model, marker):
    folder = request.getfixturevalue(model)
    refused(lambda: base_mod.resolve_base(str(folder)))
    refused(lambda: base_mod.load_model(str(folder)))
    refused(lambda: base_mod.load_tokenizer(str(folder)))
    assert not marker.exists()


def test_peft_loading_refuses_an_adapter_with_only_adapter_model_bin(tiny_base, pickle_adapter, marker):
    model = base_mod.load_model(str(tiny_base))
    message = refused(lambda: base_mod.load_adapter(model, pickle_adapter))
    assert "adapter_model.bin" in message
    assert not marker.exists()


def test_evaluation_refuses_a_pickle_adapter_before_peft_sees_it(tiny_base, pickle_adapter, marker):
    refused(lambda: candidates.resolve_candidate(str(pickle_adapter), str(tiny_base)))
    # a Candidate built in Python, past resolve_candidate, is refused at load
    candidate = candidates.Candidate("x", "adapter", pickle_adapter, base=str(tiny_base))
    refused(lambda: candidates.load(candidate))
    assert not marker.exists()


@pytest.mark.parametrize("model", ["pickle_model", "sharded_pickle_model"])
def test_evaluation_refuses_a_pickle_merged_model(request, model, marker, tiny_base):
    folder = request.getfixturevalue(model)
    refused(lambda: candidates.resolve_candidate(str(folder), str(tiny_base)))
    refused(lambda: candidates.load(candidates.Candidate("x", "merged", folder, base=str(tiny_base))))
    refused(lambda: candidates.load(candidates.base_candidate(str(folder))))
    assert not marker.exists()


@pytest.mark.parametrize("model", ["pickle_model", "sharded_pickle_model"])
def test_quantize_refuses_pickle_weights_beside_a_decoy_safetensors(request, model, marker, tmp_path):
    folder = request.getfixturevalue(model)
    refused(lambda: quantization.check_full_precision(folder))
    refused(lambda: quantization.load_reference(folder))
    assert not marker.exists() and not (tmp_path / "q").exists()


def test_calibration_refuses_a_pickle_base(pickle_model, adapters, marker):
    from adaptermerge.adapter import load_adapter

    adapter = load_adapter(adapters["a"])
    calib = calibration.Calibration([{"messages": [{"role": "user", "content": "hi"}]}], "test", "0" * 64)
    refused(lambda: calibration.gram_store([adapter], [calib], str(pickle_model), ["q_proj"]))
    assert not marker.exists()


# ---------------------------------------------------------------- the commands


def test_eval_refuses_a_pickle_adapter_with_one_line(pickle_adapter, tiny_base, tmp_path, capsys, marker):
    code, err = cli(["eval", pickle_adapter, "--base", tiny_base, "--tasks", "domain", "-o", tmp_path / "report"], capsys)
    assert code == 2 and err.startswith("error: ") and "\n" not in err and "adapter_model.bin" in err, err
    assert not marker.exists() and not (tmp_path / "report").exists()


def test_quantize_refuses_a_pickle_model_with_one_line(pickle_model, tmp_path, capsys, marker):
    code, err = cli(["quantize", pickle_model, "--scheme", "int8", "-o", tmp_path / "q"], capsys)
    assert code == 2 and err.startswith("error: ") and "\n" not in err, err
    assert not marker.exists() and not (tmp_path / "q").exists()


def test_train_on_top_of_a_pickle_adapter_is_refused_with_one_line(pickle_adapter, tiny_base, tmp_path, capsys, marker):
    argv = ["train", "--task", "domain", "--base", tiny_base, "--on-top-of", pickle_adapter, "--max-steps", "1",
            "--no-qlora", "-o", tmp_path / "trained"]
    code, err = cli(argv, capsys)
    assert code == 2 and err.startswith("error: ") and "\n" not in err and "adapter_model.bin" in err, err
    assert not marker.exists() and not (tmp_path / "trained").exists()


def test_merge_onto_a_pickle_base_is_refused_with_one_line(pickle_model, adapters, tmp_path, capsys, marker):
    argv = ["linear", adapters["a"], "--base", pickle_model, "--output", "model", "-o", tmp_path / "m"]
    code, err = cli(argv, capsys)
    assert code == 2 and err.startswith("error: ") and "\n" not in err, err
    assert not marker.exists() and not (tmp_path / "m").exists()


def test_pickle_weights_beside_safetensors_weights_are_ignored_not_read(tiny_base, tmp_path, marker):
    """Hub folders often ship both: the safetensors weights load, the pickle is never opened."""
    folder = shutil.copytree(tiny_base, tmp_path / "both")
    hostile_pickle(folder / "pytorch_model.bin", marker)
    assert base_mod.load_model(str(folder)) is not None
    assert not marker.exists()
