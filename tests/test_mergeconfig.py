"""Merge YAML files: every bad value is one AdapterMergeError line naming the file and the key,
with the value quoted short, and the CLI turns it into `error:` and exit 2 before anything is
written. A string is never a bool: `force: "false"` once replaced an existing output."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import yaml

from adaptermerge.cli.main import main
from adaptermerge.errors import AdapterMergeError
from adaptermerge.mergeconfig import MergeJob, load_merge_config

GOOD = {"merge_method": "ties", "models": [{"model": "a", "parameters": {"weight": 0.6}}, {"model": "b", "parameters": {"weight": 0.4}}],
        "parameters": {"density": 0.5}, "out": "merged"}
BOMB = "bomb: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"b{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))


def _write(tmp_path, data=None, text=None):
    path = tmp_path / "merge.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(data, sort_keys=False))
    return path


def _with(**changes):
    data = {**GOOD, **changes}
    return {k: v for k, v in data.items() if v is not None}


def _error(path, **kwargs) -> str:
    with pytest.raises(AdapterMergeError) as info:
        load_merge_config(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and len(message) < 320, message  # pytest's tmp path is 70-80 of them
    assert message.startswith(str(path)), message
    return message


def test_a_good_file_is_typed(tmp_path):
    job = load_merge_config(_write(tmp_path, _with(seed=7, rank=4, device="cpu", force=True, check_base=False)))
    assert job.method == "ties" and job.inputs == [tmp_path / "a", tmp_path / "b"] and job.out == tmp_path / "merged"
    assert job.weights == [0.6, 0.4] and job.params == {"density": 0.5}
    assert (job.seed, job.rank, job.device, job.force, job.check_base) == (7, 4, "cpu", True, False)


@pytest.mark.parametrize("changes, needle", [
    (dict(force="false"), "force must be true or false, got 'false'"),
    (dict(check_base="no"), "check_base must be true or false, got 'no'"),
    (dict(force=1), "force must be true or false, got 1"),
    (dict(seed=1.7), "seed must be an integer, got 1.7"),
    (dict(seed="abc"), "seed must be an integer, got 'abc'"),
    (dict(seed=2**80), "seed must be an integer in 0..9223372036854775807, got 1208925819614629174706176"),
    (dict(seed=-1), "seed must be an integer in 0..9223372036854775807, got -1"),
    (dict(seed=True), "seed must be an integer, got True"),
    (dict(device="tpu"), "device must be cpu, cuda or cuda:N, got 'tpu'"),
    (dict(models=[{"model": 123}]), "models[0] model must be a path"),
    (dict(models=[123]), "models[0] must be a mapping"),
    (dict(models=[{"path": "a", "colour": 1}]), "models[0]: unknown key colour"),
    (dict(models=[{"model": "a", "parameters": {"weight": "abc"}}]), "models[0] weight must be a number, got 'abc'"),
    (dict(models=[{"model": "a", "parameters": {"weight": float("nan")}}]), "models[0] weight must be a finite number, got nan"),
    (dict(models=[{"model": "a", "alpha": -8}]), "models[0] alpha must be a number greater than 0, got -8"),
    (dict(models=[{"model": "a", "parameters": {"gamma": 0.5}}]), "models[0] has per-model parameters gamma"),
    (dict(models=[{"model": "a", "parameters": {"density": 0.5}}, {"model": "b", "parameters": {"density": 0.4}}]),
     "models give parameters.density [0.5, 0.4]: ties takes one density for every model"),
    (dict(models=[{"model": "a", "parameters": {"density": 0.5}}, "b"]), "models give parameters.density [0.5, None]"),
    (dict(models=[{"model": "a", "parameters": {"density": 0.4}}]), "parameters.density is 0.5 but the models give 0.4: give one"),
    (dict(base_model="a", models=["a", {"model": "a", "parameters": {"weight": 1}}, "b"]),
     "models[1] is the base model, which adds nothing to merge"),
    (dict(base_model="a", models=["a"]), "models lists only the base model"),
    (dict(merge_method="dare_ties", parameters={"rescale": False}), "parameters.rescale: false is not supported: DARE here always rescales"),
    (dict(parameters={"rescale": True}), "parameters.rescale: true is not supported: ties here never rescales"),
    (dict(merge_method="linear", parameters={"rescale": False}), "parameters.rescale does not apply to linear"),
    (dict(merge_method="sequential", parameters={"normalize": True}), "parameters.normalize does not apply to sequential"),
    (dict(merge_method="task_arithmetic", parameters={"normalize": "yes"}), "parameters.normalize must be true or false, got 'yes'"),
    (dict(merge_method="task_arithmetic", parameters={"normalize": True},
          models=[{"model": "a", "weight": 1}, {"model": "b", "weight": -1}]), "normalize: the weights sum to 0"),
    (dict(merge_method="slerp"), "merge_method: slerp is a mergekit method with no delta-space form here; the methods: linear"),
    (dict(slices=[{"sources": [{"model": "a", "layer_range": [0, 8]}]}]), "slices (mergekit's layer slices) is not supported here"),
    (dict(tokenizer_source="union"), "tokenizer_source (mergekit's tokenizer merging) is not supported here"),
    (dict(models=[{"model": "a", "parameters": {"density": [1, 0.7, 0.1]}}]),
     "models[0] density must be a number, got [1, 0.7, 0.1]: mergekit's per-layer gradients and filters are not supported"),
    (dict(models=[{"model": "a", "parameters": {"weight": [{"filter": "mlp", "value": 0.5}, {"value": 0}]}}]),
     "models[0] weight must be a number, got [{'filter': 'mlp', 'value': 0.5}"),
    (dict(parameters={"density": {"filter": "mlp", "value": 0.5}}), "parameters.density must be a number, got {'filter'"),
    (dict(parameters={"weight": "x"}), "parameters.weight must be a number, got 'x'"),
    (dict(out_dtype="float8"), "out_dtype must be one of float16, bfloat16, float32, got 'float8'"),
    (dict(merge_method="breadcrumbs", parameters={"density": 0.95, "gamma": 0.1}), "density + gamma must be at most 1"),
    (dict(merge_method="dare_linear", parameters={"int8_mask": "yes"}), "parameters.int8_mask must be true or false, got 'yes'"),
    (dict(dtype="float8"), "dtype must be one of float16, bfloat16, float32, got 'float8'"),
    (dict(dtype=16), "dtype must be one of float16, bfloat16, float32, got 16"),
    (dict(models=[]), "models must be a non-empty list"),
    (dict(models="a"), "models must be a list, got 'a'"),
    (dict(models=None), "models must be a list, got None"),
    (dict(parameters=[1, 2]), "parameters must be a mapping, got [1, 2]"),
    (dict(parameters={1: 0.5}), "parameters: keys must be strings, got the key 1"),
    (dict(parameters={"density": "0.5"}), "parameters.density must be a number, got '0.5'"),
    (dict(parameters={"density": float("inf")}), "parameters.density must be a finite number, got inf"),
    (dict(parameters={"density": 1.5}), "density must be in (0, 1]"),
    (dict(parameters={"lambda": 1}, merge_method="linear"), "method linear has no parameter 'lambda'"),
    (dict(out=123), "out must be a path (a non-empty string), got 123"),
    (dict(out=""), "out must be a path"),
    (dict(out=None), "missing out"),
    (dict(rank=2.5), "rank must be an integer, got 2.5"),
    (dict(rank=0), "rank must be an integer in 1..2147483647, got 0"),
    (dict(output="weights"), "output must be one of adapter, model, got 'weights'"),
    (dict(merge_method="nosuch"), "merge_method must be one of linear"),
    (dict(merge_method=["ties"]), "merge_method must be one of linear"),
    (dict(method="ties"), "give merge_method or method, not both"),
    (dict(base_model=123), "base_model must be a path"),
    (dict(shard_size=[1]), "shard_size must be a string"),
    (dict(compute_dtype="float8"), "compute_dtype must be one of float32, bfloat16, float16"),
    (dict(requantize="fp4"), "requantize must be one of nf4, int8"),
    (dict(colour="red"), "unknown key colour"),
])
def test_each_bad_value_is_one_line_naming_file_and_key(tmp_path, changes, needle):
    assert needle in _error(_write(tmp_path, _with(**changes)))


def test_an_integer_key_is_named(tmp_path):
    data = {**GOOD, 1: "x"}
    assert "merge.yaml: keys must be strings, got the key 1" in _error(_write(tmp_path, data))


@pytest.mark.parametrize("text, needle", [
    ("[" * 5000 + "]" * 5000, "nested too deep"),                                  # RecursionError in the parser
    ("models:\n" + "".join("  " * i + "- \n" for i in range(1, 80)), "nested deeper than 64 levels"),
    (BOMB + "merge_method: ties\nmodels: [a]\nout: o\nparameters: {density: *i}\n", "more than 200000 values"),
    ("- a\n- b\n", "expected a mapping with merge_method and models, got ['a', 'b']"),
    ("", "expected a mapping with merge_method and models, got None"),
    ("merge_method: ties\nmodels: [a]\nout: o\nparameters: {density: [" + ", ".join(["0.5"] * 5000) + "]}\n",
     "parameters.density must be a number, got [0.5, 0.5"),
])
def test_hostile_documents_are_one_short_line(tmp_path, text, needle):
    assert needle in _error(_write(tmp_path, text=text))


def test_a_bomb_under_a_parameter_is_one_short_line(tmp_path):
    """The alias bomb alone: small enough for document()'s budget only if it were; refused either
    way with a message of a few dozen characters, never the value's full repr."""
    text = "merge_method: ties\nmodels: [a]\nout: o\nparameters:\n  density: &a [x, x, x, x, x, x, x, x]\n" \
           "  lambda: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
    message = _error(_write(tmp_path, text=text))
    assert "parameters.density must be a number, got ['x', 'x'" in message and len(message) < 260


def test_the_config_path_must_be_a_utf8_file(tmp_path):
    assert "merge config" in _error_any(tmp_path)
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"merge_method: ties\nout: caf\xe9\n")
    with pytest.raises(AdapterMergeError, match="latin1.yaml"):
        load_merge_config(bad)


def _error_any(path) -> str:
    with pytest.raises(AdapterMergeError) as info:
        load_merge_config(path)
    return str(info.value)


def test_flags_are_checked_as_flags(tmp_path):
    """MergeJob built by the CLI or the Python API checks its own values, naming the flag."""
    for fields, needle in [(dict(seed=2**80), "--seed must be an integer in 0.."), (dict(force="false"), "--force must be true or false"),
                           (dict(device="tpu"), "--device must be cpu, cuda or cuda:N"), (dict(rank=0), "--rank must be an integer in 1..")]:
        with pytest.raises(AdapterMergeError, match=needle.replace(".", r"\.")):
            MergeJob(inputs=[tmp_path / "a"], out=tmp_path / "o", **fields)


# ---------------------------------------------------------------- through the CLI


def _run(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    return info.value.code, capsys.readouterr().err


def _digest(root) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("key, value", [("force", '"false"'), ("force", "'no'"), ("check_base", '"no"')])
def test_a_string_false_never_replaces_an_existing_output(adapters, tmp_path, capsys, key, value):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    config = tmp_path / "merge.yaml"
    config.write_text(f"merge_method: linear\nmodels:\n  - model: {adapters['a']}\n  - model: {adapters['c']}\nout: merged\n"
                      f"{'force: true' if key == 'check_base' else ''}\n{key}: {value}\n")
    before = _digest(tmp_path)
    code, err = _run(["merge", config], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: {config}: {key} must be true or false"), err
    assert _digest(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merge.yaml", "merged"]


@pytest.mark.parametrize("argv, needle", [
    (["--seed", str(2**80)], "Invalid value for '--seed'"),
    (["--seed", "-1"], "Invalid value for '--seed'"),
    (["--rank", "0"], "Invalid value for '--rank'"),
    (["--weights", "nan,1"], "--weights 'nan,1': expected finite numbers"),
    (["--device", "tpu"], "Invalid value for '--device'"),
])
def test_cli_numbers_are_bounded(adapters, tmp_path, capsys, argv, needle):
    code, err = _run(["linear", adapters["a"], adapters["c"], "-o", tmp_path / "o", *argv], capsys)
    assert code == 2 and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv", [["--density", "nan"], ["--density", "inf"], ["--density", "2"]])
def test_cli_method_parameters_are_finite_and_in_range(adapters, tmp_path, capsys, argv):
    code, err = _run(["ties", adapters["a"], adapters["c"], "-o", tmp_path / "o", *argv], capsys)
    assert code == 2 and err.count("\n") == 1 and "density" in err, err
    assert not (tmp_path / "o").exists()


def test_mergekit_spellings_are_taken_in(tmp_path):
    job = load_merge_config(_write(tmp_path, _with(
        base_model="base", dtype="bfloat16", parameters={"normalize": True, "int8_mask": True},
        models=["base", {"model": "a", "parameters": {"weight": 0.6, "density": 0.5}},
                {"model": "b", "parameters": {"weight": 0.4, "density": 0.5}}])))
    assert job.inputs == [tmp_path / "a", tmp_path / "b"] and job.weights == [0.6, 0.4]  # the base is no input
    assert job.params == {"density": 0.5, "normalize": True} and job.dtype == "bfloat16" and job.base == "base"


@pytest.mark.parametrize("method, given, expected", [
    # what a file leaves out is mergekit's default (its merge_methods/registry.py and generalized_task_arithmetic.py)
    ("ties", {}, {"density": 1.0}),
    ("ties", {"density": 0.3, "normalize": False, "rescale": False}, {"density": 0.3, "normalize": False}),
    ("dare_ties", {}, {"density": 1.0, "normalize": False}),
    ("dare_ties", {"normalize": True, "density": 0.4}, {"density": 0.4, "normalize": True}),
    ("dare_linear", {"rescale": True, "int8_mask": False}, {"density": 1.0, "normalize": False}),
    ("breadcrumbs", {}, {"density": 1.0, "gamma": 0.0}),  # mergekit masks nothing at density 1
    ("breadcrumbs", {"density": 0.8}, {"density": 0.8}),
    ("task_arithmetic", {"lambda": 0.5}, {"lambda": 0.5}),
    ("linear", {}, {}),
    ("cat", {}, {}),
])
def test_a_file_takes_mergekits_defaults(tmp_path, method, given, expected):
    from adaptermerge.methods import METHODS

    job = load_merge_config(_write(tmp_path, _with(merge_method=method, parameters=given)))
    assert job.params == expected and job.weights == [0.6, 0.4]
    # the commands keep their own defaults: where they differ, the catalog says so
    from adaptermerge.cli.catalog import rows

    catalog = {p["name"]: p for p in next(r for r in rows(METHODS) if r["method"] == method)["parameters"]}
    for name, value in expected.items():
        if name not in given and not (method == "breadcrumbs" and name == "gamma"):
            assert catalog[name]["yaml_default"] == value != catalog[name]["default"]


def test_normalize_of_a_summing_method_divides_the_weights(tmp_path):
    """mergekit's task_arithmetic and breadcrumbs divide the merged delta by the weights' sum when
    normalize: true; here that is the weights divided by their sum, exactly."""
    job = load_merge_config(_write(tmp_path, _with(merge_method="task_arithmetic", parameters={"normalize": True},
                                                   models=[{"model": "a", "weight": 3.0}, {"model": "b", "weight": 1.0}])))
    assert job.weights == [0.75, 0.25] and job.params == {}
    job = load_merge_config(_write(tmp_path, _with(merge_method="breadcrumbs", parameters={"normalize": True, "density": 0.5},
                                                   models=["a", "b"])))
    assert job.weights == [0.5, 0.5] and job.params == {"density": 0.5}
    job = load_merge_config(_write(tmp_path, _with(merge_method="task_arithmetic", parameters={"normalize": False})))
    assert job.weights == [0.6, 0.4] and job.params == {}


def test_a_top_level_weight_is_every_models_default(tmp_path):
    job = load_merge_config(_write(tmp_path, _with(parameters={"weight": 0.5, "density": 0.5},
                                                   models=["a", {"model": "b", "parameters": {"weight": 2.0}}])))
    assert job.weights == [0.5, 2.0] and job.params == {"density": 0.5}


def test_linear_counts_a_weighted_base_in_its_normalization(tmp_path):
    """mergekit's linear averages the base in as a model: (w_b W0 + sum w_i (W0 + d_i)) / (w_b + sum w_i)
    is W0 + sum w_i d_i / (w_b + sum w_i)."""
    models = [{"model": "base", "weight": 2.0}, {"model": "a", "weight": 1.0}, {"model": "b", "weight": 1.0}]
    job = load_merge_config(_write(tmp_path, _with(merge_method="linear", base_model="base", parameters=None, models=models)))
    assert job.inputs == [tmp_path / "a", tmp_path / "b"] and job.weights == [0.25, 0.25] and job.params == {"normalize": False}
    models = [{"model": "base", "weight": 0.5}, {"model": "a", "weight": 0.25}, {"model": "b", "weight": 0.25}]
    job = load_merge_config(_write(tmp_path, _with(merge_method="linear", base_model="base", parameters={"normalize": False},
                                                   models=models)))
    assert job.weights == [0.25, 0.25] and job.params == {"normalize": False}


def test_linear_without_normalizing_merges_deltas_and_warns_where_mergekit_differs(tmp_path, caplog):
    """mergekit's unnormalized linear is sum_i w_i W_i = W0 * sum(w) + sum_i w_i d_i: the base is
    scaled unless the weights (the base's included) sum to 1. Here it stays a delta merge, said."""
    models = [{"model": "base", "weight": 0.6}, {"model": "a", "weight": 0.25}, {"model": "b", "weight": 0.25}]
    with caplog.at_level("WARNING", logger="adaptermerge.mergeconfig"):
        job = load_merge_config(_write(tmp_path, _with(merge_method="linear", base_model="base",
                                                       parameters={"normalize": False}, models=models)))
    assert job.weights == [0.25, 0.25] and job.params == {"normalize": False}
    assert "mergekit would also scale the base's weights by the sum of the weights (1.1)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="adaptermerge.mergeconfig"):
        load_merge_config(_write(tmp_path, _with(merge_method="linear", parameters={"normalize": False})))  # 0.6 + 0.4
    assert caplog.text == ""


def test_out_dtype_is_the_outputs_dtype(tmp_path):
    assert load_merge_config(_write(tmp_path, _with(dtype="float32", out_dtype="float16"))).dtype == "float16"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", None])
def test_dtype_is_read_for_both_outputs(tmp_path, dtype):
    for output in ("adapter", "model"):
        job = load_merge_config(_write(tmp_path, _with(dtype=dtype, output=output)))
        assert job.dtype == dtype and job.output == output


def test_dash_o_stands_in_for_a_missing_out(tmp_path):
    path = _write(tmp_path, _with(out=None))
    assert load_merge_config(path, out=tmp_path / "elsewhere").out == tmp_path / "elsewhere"
    assert "missing out (the output folder), or pass -o" in _error(path)


def test_the_mergekit_example_runs_unchanged_apart_from_its_model_paths(tiny_base, adapters, tmp_path, capsys):
    """examples/mergekit-ties.yaml, its model paths pointed at the tiny fixtures: the base listed among
    the models, per-model density, normalize and int8_mask, dtype, no out (-o gives it)."""
    from safetensors.torch import load_file
    from support import REPO

    text = (REPO / "examples" / "mergekit-ties.yaml").read_text()
    assert "out:" not in text and text.count("HuggingFaceTB/SmolLM2-135M-Instruct") == 2
    text = (text.replace("HuggingFaceTB/SmolLM2-135M-Instruct", str(tiny_base))
            .replace("adapters/domain", str(adapters["a"])).replace("adapters/structured", str(adapters["c"])))
    config = tmp_path / "mergekit-ties.yaml"
    config.write_text(text)
    raw = yaml.safe_load(text)
    assert raw["merge_method"] == "ties" and raw["dtype"] == "bfloat16" and len(raw["models"]) == 3
    with pytest.raises(SystemExit) as info:
        main(["merge", str(config), "-o", str(tmp_path / "merged")])
    assert info.value.code in (0, None), capsys.readouterr().err
    out = tmp_path / "merged"
    meta = json.loads((out / "adaptermerge.json").read_text())
    assert meta["method"] == "ties" and meta["weights"] == [0.6, 0.4] and meta["params"]["density"] == 0.5
    assert [i["path"] for i in meta["inputs"]] == [str(adapters["a"]), str(adapters["c"])] and meta["dtype"] == "bfloat16"
    assert {t.dtype for t in load_file(out / "adapter_model.safetensors").values()} == {torch.bfloat16}
    assert "library_name: peft" in (out / "README.md").read_text()
    # the same merge through the API, with the file's values
    from adaptermerge import load_adapter, merge

    ref = merge([load_adapter(adapters["a"]), load_adapter(adapters["c"])], "ties", [0.6, 0.4], density=0.5, dtype="bfloat16")
    back = load_adapter(out)
    for m in ref.modules:
        torch.testing.assert_close(back.factors(m).delta(), ref.factors(m).delta())
