"""The public API (adaptermerge.api): an output is never an input, whichever way it is written.

Each refusal is pinned to its exact text; tests/cli/test_output_guard.py pins the CLI to the same
text. Inputs are copies under tmp_path, hashed before and after: a refusal changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from safetensors.torch import load_file, save_file

import adaptermerge
from adaptermerge import AdapterMergeError, api, load_adapter, merge, merge_to_model, quantize
from adaptermerge.mergeconfig import MergeJob, load_merge_config

EXISTS = "output {out} already exists: pass --force (force=True in Python) to replace it"
OVER = "output {out} would overwrite or write into input {given}: choose another output folder"


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def inputs(tmp_path, adapters, tiny_base):
    """Copies of two adapters, the same two as bare .safetensors files in one folder, and the base
    (under its own folder name, so the adapters' recorded base still matches it)."""
    root = tmp_path / "in"
    a = shutil.copytree(adapters["a"], root / "a")
    c = shutil.copytree(adapters["c"], root / "c")
    (root / "bare").mkdir()
    bare_a, bare_c = root / "bare" / "a.safetensors", root / "bare" / "c.safetensors"
    save_file(load_file(a / "adapter_model.safetensors"), bare_a)
    save_file(load_file(c / "adapter_model.safetensors"), bare_c)
    base = shutil.copytree(tiny_base, root / tiny_base.name)
    return SimpleNamespace(root=root, a=a, c=c, bare_a=bare_a, bare_c=bare_c, base=base)


def _bare(i):
    return [load_adapter(i.bare_a, alpha=8), load_adapter(i.bare_c, alpha=2)]


# (id, call(inputs, force), out(inputs), the input it names(inputs))
CASES = [
    ("adapter folder", lambda i, f: merge([i.a, i.c], out=i.a, force=f), lambda i: i.a, lambda i: i.a),
    ("bare file", lambda i, f: merge(_bare(i), out=i.bare_a, force=f), lambda i: i.bare_a, lambda i: i.bare_a),
    ("inside an input", lambda i, f: merge([i.a, i.c], out=i.a / "sub", force=f), lambda i: i.a / "sub", lambda i: i.a),
    ("above an input", lambda i, f: merge([i.a, i.c], out=i.root, force=f), lambda i: i.root, lambda i: i.a),
    ("base folder, adapter output", lambda i, f: merge([i.a, i.c], base=str(i.base), out=i.base, force=f), lambda i: i.base, lambda i: i.base),
    ("base folder, model output", lambda i, f: merge_to_model([i.a], i.base, base=str(i.base), force=f), lambda i: i.base, lambda i: i.base),
    ("inside the base, model output", lambda i, f: merge_to_model([i.a], i.base / "m", base=str(i.base), force=f), lambda i: i.base / "m", lambda i: i.base),
    ("adapter folder, model output", lambda i, f: merge_to_model([i.a], i.a, base=str(i.base), force=f), lambda i: i.a, lambda i: i.a),
    ("base folder, requantized", lambda i, f: merge_to_model([i.a], i.base, base=str(i.base), requantize="nf4", force=f), lambda i: i.base, lambda i: i.base),
    ("save over an input", lambda i, f: merge([i.a, i.c]).save(i.c, force=f), lambda i: i.c, lambda i: i.c),
    ("save into the base", lambda i, f: merge([i.a, i.c], base=str(i.base)).save(i.base, force=f), lambda i: i.base, lambda i: i.base),
    ("quantize over its input", lambda i, f: quantize(i.base, i.base, "int8", force=f), lambda i: i.base, lambda i: i.base),
    ("quantize into its input", lambda i, f: quantize(i.base, i.base / "q", "int8", force=f), lambda i: i.base / "q", lambda i: i.base),
]


@pytest.mark.parametrize("force", [False, True], ids=["no force", "force"])
@pytest.mark.parametrize("call, out, given", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_an_output_is_never_an_input(inputs, call, out, given, force):
    before = digest(inputs.root)
    target = out(inputs)
    expected = EXISTS.format(out=target) if target.exists() and not force else OVER.format(out=target, given=given(inputs))
    with pytest.raises(AdapterMergeError) as info:
        call(inputs, force)
    assert str(info.value) == expected
    assert digest(inputs.root) == before
    assert not [p for p in inputs.root.rglob(".*")]  # no temp folder left behind


def test_a_merge_job_refuses_like_the_functions(inputs, tmp_path):
    config = tmp_path / "merge.yaml"
    config.write_text(f"merge_method: linear\nmodels:\n  - model: {inputs.a}\n  - model: {inputs.c}\nout: {inputs.a}\nforce: true\n")
    before = digest(inputs.root)
    with pytest.raises(AdapterMergeError) as info:
        api.run_merge_job(load_merge_config(config))
    assert str(info.value) == OVER.format(out=inputs.a, given=inputs.a)
    job = MergeJob(inputs=[inputs.a], out=inputs.base, base=str(inputs.base), output="model", force=True)
    with pytest.raises(AdapterMergeError, match="^" + OVER.format(out=inputs.base, given=inputs.base) + "$"):
        api.run_merge_job(job)
    assert digest(inputs.root) == before


def test_beside_a_bare_file_is_fine_and_the_result_records_its_inputs(inputs):
    out = inputs.bare_a.parent / "merged"
    merged = merge(_bare(inputs), out=out)
    assert load_adapter(out).modules == merged.modules
    assert merged.inputs == (inputs.bare_a, inputs.bare_c)
    with pytest.raises(AdapterMergeError, match="would overwrite or write into input"):
        merged.save(inputs.bare_a.parent, force=True)  # the folder holding the inputs


def test_a_merge_of_merges_protects_the_first_inputs_too(inputs, tmp_path):
    first = merge([inputs.a, inputs.c], "linear", [0.5, 0.5])
    second = merge([first, inputs.c], "linear")
    with pytest.raises(AdapterMergeError) as info:
        second.save(inputs.a, force=True)
    assert str(info.value) == OVER.format(out=inputs.a, given=inputs.a)
    second.save(tmp_path / "ok")
    assert json.loads((tmp_path / "ok" / "adaptermerge.json").read_text())["method"] == "linear"


def test_merge_takes_paths_and_adapters_and_writes_with_out(inputs, tmp_path):
    from_paths = merge([inputs.a, str(inputs.c)], "ties", density=0.5, out=tmp_path / "m")
    from_adapters = merge([load_adapter(inputs.a), load_adapter(inputs.c)], "ties", density=0.5)
    for m in from_paths.modules:
        assert (from_paths.factors(m).A == from_adapters.factors(m).A).all()
    assert [i["name"] for i in json.loads((tmp_path / "m" / "adaptermerge.json").read_text())["inputs"]] == ["a", "c"]
    with pytest.raises(AdapterMergeError, match="adapters must be a list of adapters or paths"):
        merge(inputs.a)
    with pytest.raises(AdapterMergeError, match=r"adapters\[1\]: expected an Adapter or a path, got int"):
        merge([inputs.a, 3])


def test_loaded_inputs_with_one_name_are_told_apart(inputs, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    for folder, source in ((tmp_path / "x", inputs.a), (tmp_path / "y", inputs.c)):
        shutil.copy(source / "adapter_model.safetensors", folder)
        shutil.copy(source / "adapter_config.json", folder)
    job = MergeJob(inputs=[tmp_path / "x" / "adapter_model.safetensors", tmp_path / "y" / "adapter_model.safetensors"], out=tmp_path / "o")
    meta = api.run_merge_job(job)
    assert [i["name"] for i in meta["inputs"]] == ["adapter_model#1", "adapter_model#2"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(requantize="nf3"), "unknown quantization scheme 'nf3'"),
        (dict(requantize="nf4", compute_dtype="float8"), "unknown compute dtype 'float8'"),
        (dict(compute_dtype="bfloat16"), "--compute-dtype bfloat16 applies to --requantize"),
        (dict(merge_onto="quantized"), "--merge-onto 'quantized': expected one of original, dequantized"),
        (dict(shard_size="0"), "--shard-size '0': expected a positive size"),
    ],
)
def test_model_options_are_checked_before_any_work(inputs, tmp_path, kwargs, message):
    with pytest.raises(AdapterMergeError, match=message):
        merge_to_model([inputs.a], tmp_path / "out", base=str(inputs.base), **kwargs)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(output="weights"), "output must be adapter or model, got 'weights'"),
        (dict(requantize="nf4"), "--requantize applies to --output model"),
        (dict(merge_onto="original"), "--merge-onto applies to --output model"),
        (dict(output="model", rank=4), "--rank applies to adapter output"),
        (dict(alphas=[1.0, 2.0, 3.0]), "--alpha: 3 values for 2 inputs"),
    ],
)
def test_a_merge_job_is_consistent_when_built(tmp_path, fields, message):
    with pytest.raises(AdapterMergeError, match=message):
        MergeJob(inputs=[tmp_path / "a", tmp_path / "b"], out=tmp_path / "o", **fields)


@pytest.mark.parametrize("key, value, message", [("seed", "x", "seed must be an integer"), ("force", "yes", "force must be true or false"),
                                                  ("rank", 2.5, "rank must be an integer")])
def test_yaml_values_have_their_types(tmp_path, key, value, message):
    config = tmp_path / "merge.yaml"
    config.write_text(f"merge_method: linear\nmodels: [a]\nout: o\n{key}: {value!r}\n")
    with pytest.raises(AdapterMergeError, match=message):
        load_merge_config(config)


def test_yaml_out_may_come_from_the_caller(tmp_path):
    config = tmp_path / "merge.yaml"
    config.write_text("merge_method: linear\nmodels: [a]\n")
    with pytest.raises(AdapterMergeError, match="missing out"):
        load_merge_config(config)
    job = load_merge_config(config, out=tmp_path / "o", force=True)
    assert (job.out, job.force, job.inputs) == (tmp_path / "o", True, [tmp_path / "a"])


def test_the_package_exports_the_front_door():
    for name in ("load_adapter", "merge", "merge_to_model", "quantize", "evaluate", "train", "run_recipe", "Adapter",
                 "LoraFactors", "MergePlan", "METHODS", "AdapterMergeError", "__version__"):
        assert name in adaptermerge.__all__ and hasattr(adaptermerge, name), name
    assert adaptermerge.merge is api.merge and adaptermerge.merge_to_model is api.merge_to_model


def test_evaluate_reads_a_gates_file(tmp_path):
    with pytest.raises(AdapterMergeError, match="gates file .*missing.yaml does not exist"):
        api.evaluate([], gates=tmp_path / "missing.yaml")


def test_train_takes_a_config_or_its_fields_not_both(tmp_path):
    with pytest.raises(AdapterMergeError, match="unexpected keyword argument 'stepz'"):
        api.train(task="domain", output=tmp_path / "x", stepz=3)
    with pytest.raises(AdapterMergeError, match="not both"):
        api.train(api.TrainConfig(task="domain", output=tmp_path / "x"), max_steps=3)


@pytest.mark.parametrize("options, message", [
    ({"seed": 2 ** 80}, "seed must be"),
    ({"seed": 1.7}, "seed must be"),
    ({"device": "tpu"}, "device must be cpu, cuda or cuda:N"),
])
def test_merge_refuses_bad_seed_and_device_as_the_cli_does(adapters, options, message):
    with pytest.raises(AdapterMergeError, match=message):
        merge([adapters["a"], adapters["b"]], "linear", **options)


def test_a_recipe_refuses_a_launchers_processes(monkeypatch, tmp_path):
    """Training and evaluation spread over `accelerate launch` processes; a recipe's merges and
    writes would race there, so it says so instead."""
    from adaptermerge import run_recipe
    from adaptermerge.recipe import example_path

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(AdapterMergeError, match="a recipe runs in one process"):
        run_recipe(example_path(), output=tmp_path / "out")
    assert not (tmp_path / "out").exists()
