import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from adaptermerge import load_adapter
from adaptermerge.cli.main import main


def run(argv):
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    return info.value.code


def test_ties_on_bare_files_with_alpha(adapters, tmp_path, capsys):
    for key in ("a", "c"):
        save_file(load_file(adapters[key] / "adapter_model.safetensors"), tmp_path / f"{key}.safetensors")
    out = tmp_path / "merged"
    assert run(["ties", tmp_path / "a.safetensors", tmp_path / "c.safetensors", "-o", out, "--density", "0.2"]) == 2
    assert "--alpha" in capsys.readouterr().err
    assert run(["ties", tmp_path / "a.safetensors", tmp_path / "c.safetensors", "-o", out, "--density", "0.2", "--alpha", "8,2"]) == 0
    meta = json.loads((out / "adaptermerge.json").read_text())
    assert meta["method"] == "ties" and [i["name"] for i in meta["inputs"]] == ["a", "c"]
    assert [i["alphas"] for i in meta["inputs"]] == [[8.0], [2.0]]  # the --alpha used is recorded
    assert load_adapter(out).modules


@pytest.mark.parametrize("alpha", ["nan,8", "0,8", "-8,8"])
def test_alpha_must_be_positive_and_finite(adapters, tmp_path, capsys, alpha):
    for key in ("a", "c"):
        save_file(load_file(adapters[key] / "adapter_model.safetensors"), tmp_path / f"{key}.safetensors")
    out = tmp_path / "merged"
    assert run(["linear", tmp_path / "a.safetensors", tmp_path / "c.safetensors", "-o", out, "--alpha", alpha]) == 2
    err = capsys.readouterr().err
    assert "a.safetensors: --alpha must be a positive finite number" in err and "Traceback" not in err
    assert not out.exists()


def test_outputs_get_the_umask_permissions(adapters, tmp_path):
    import os
    import stat

    out = tmp_path / "o"
    assert run(["linear", adapters["a"], "-o", out]) == 0
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask
    for f in out.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f.name


def test_linear_with_weights_is_exact(adapters, tmp_path):
    out = tmp_path / "lin"
    assert run(["linear", adapters["a"], adapters["b"], "--weights", "0.6,0.4", "-o", out]) == 0
    merged, a, b = load_adapter(out), load_adapter(adapters["a"]), load_adapter(adapters["b"])
    m = "model.layers.0.mlp.down_proj"
    torch.testing.assert_close(merged.factors(m).delta(), 0.6 * a.factors(m).delta() + 0.4 * b.factors(m).delta(), atol=1e-5, rtol=1e-4)
    assert json.loads((out / "adaptermerge.json").read_text())["summary"]["all_exact"]


def test_output_is_never_overwritten_without_force(adapters, tmp_path, capsys):
    out = tmp_path / "o"
    assert run(["linear", adapters["a"], "-o", out]) == 0
    stamp = (out / "adapter_model.safetensors").stat().st_mtime_ns
    assert run(["linear", adapters["a"], "-o", out]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    assert run(["linear", adapters["a"], adapters["c"], "-o", out, "--force"]) == 0
    assert len(json.loads((out / "adaptermerge.json").read_text())["inputs"]) == 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["nope", "{a}", "-o", "{out}"], "No such command"),
        (["ties", "{a}", "{c}", "-o", "{out}", "--density", "0"], "density must be in (0, 1]"),
        (["ties", "{a}", "{c}", "-o", "{out}", "--density", "1.5"], "density must be in (0, 1]"),
        (["linear", "{a}", "{c}", "-o", "{out}", "--weights", "1"], "1 weights given for 2 adapters"),
        (["linear", "{a}", "{c}", "-o", "{out}", "--weights", "x,y"], "expected comma-separated numbers"),
        (["linear", "{missing}", "-o", "{out}"], "no such file or folder"),
        (["ties", "{a}", "{dora}", "-o", "{out}"], "would drop its magnitudes"),
        (["cat", "{a}", "{c}", "-o", "{out}", "--rank", "2"], "cat keeps every factor"),
        (["linear", "{a}", "{c}", "-o", "{out}", "--weights", "1,,2"], "expected comma-separated numbers"),
        (["linear", "{a}", "{c}", "-o", "{a}", "--force"], "would overwrite or write into input"),
        (["linear", "{a}", "{c}", "-o", "{a}/sub"], "would overwrite or write into input"),
        (["ties", "{a}", "{c}", "-o", "{out}", "--density", "abc"], "'abc' is not a valid float"),
        (["linear", "{a}", "{c}", "-o", "{out}", "--density", "0.5"], "No such option '--density'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_output(adapters, tmp_path, capsys, argv, message):
    fill = {"a": adapters["a"], "c": adapters["c"], "dora": adapters["dora"], "out": tmp_path / "out", "missing": tmp_path / "missing"}
    code = run([a.format(**{k: str(v) for k, v in fill.items()}) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err  # usage errors included
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temp folder left


def test_an_error_prints_alone_without_an_empty_progress_bar(adapters, tmp_path):
    """A real process (rich draws its bar where pytest's capture would hide it): an input refused
    while loading prints its one-line error, not under a bar drawn at 0/?."""
    import subprocess
    import sys

    bare = tmp_path / "a.safetensors"
    save_file(load_file(adapters["a"] / "adapter_model.safetensors"), bare)
    done = subprocess.run([sys.executable, "-m", "adaptermerge", "ties", str(bare), str(adapters["c"]), "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: {bare}: no adapter_config.json belongs to it and its metadata has no lora_alpha: pass --alpha (one value, or one per input)"]


def test_nan_input_fails_cleanly_and_input_untouched(adapters, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(adapters["a"], bad)
    tensors = load_file(bad / "adapter_model.safetensors")
    tensors["base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight"][1, 1] = float("inf")
    save_file(tensors, bad / "adapter_model.safetensors")
    before = (bad / "adapter_model.safetensors").read_bytes()
    assert run(["linear", adapters["c"], bad, "-o", tmp_path / "out"]) == 2
    err = capsys.readouterr().err
    assert "model.layers.0.self_attn.v_proj lora_A contains NaN or Inf" in err
    assert str(bad) in err  # the error names the input's path, not only its short name
    assert (bad / "adapter_model.safetensors").read_bytes() == before
    assert not (tmp_path / "out").exists()


def test_yaml_weight_must_be_a_number(adapters, tmp_path, capsys):
    cfg = tmp_path / "merge.yaml"
    cfg.write_text(f"merge_method: linear\nmodels:\n  - model: {adapters['a']}\n    parameters: {{weight: abc}}\nout: m\n")
    assert run(["merge", cfg]) == 2
    err = capsys.readouterr().err
    assert "merge.yaml: models[0] weight must be a number, got 'abc'" in err and "Traceback" not in err


def test_merge_from_yaml_config(adapters, tmp_path, tiny_base):
    cfg = tmp_path / "merge.yaml"
    cfg.write_text(
        f"""
merge_method: dora
base_model: {tiny_base}
models:
  - model: {adapters['dora']}
    parameters: {{weight: 0.5}}
  - model: {adapters['a']}
    parameters: {{weight: 0.5}}
parameters: {{inner: ties, density: 0.5}}
out: merged_dora
"""
    )
    assert run(["merge", cfg]) == 0
    merged = load_adapter(tmp_path / "merged_dora")
    assert merged.is_dora
    meta = json.loads((tmp_path / "merged_dora" / "adaptermerge.json").read_text())
    assert meta["params"] == {"inner": "ties", "density": 0.5, "normalize": True}


def test_model_output_from_cli(adapters, tmp_path, tiny_base):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "full"
    assert run(["dare_ties", adapters["a"], adapters["c"], "-o", out, "--output", "model", "--base", tiny_base, "--seed", "1"]) == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def test_inspect_and_methods(adapters, capsys):
    assert run(["inspect", adapters["pattern"], "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["ranks"] == [2, 4] and info["modules"] == 14
    assert run(["inspect", adapters["dora"]]) == 0
    table = " ".join(capsys.readouterr().out.split())  # on stdout, however rich wraps it
    assert "dora: DoRA" in table and "full change needs the base weights" in table
    assert run(["methods", "--json"]) == 0
    methods = {m["method"] for m in json.loads(capsys.readouterr().out)}
    assert {"linear", "task_arithmetic", "sequential", "ties", "dare_linear", "dare_ties", "dora", "cat"} <= methods


@pytest.mark.parametrize("extra, message", [
    (["--heal", "2"], "no training.json beside it naming its training prompts; pass --heal-prompts NAME=FILE.jsonl"),
    (["--heal", "-1"], "'--heal'"),
    (["--heal", "2", "--heal-prompts", "a"], "--heal-prompts 'a': expected NAME=FILE.jsonl"),
    (["--heal", "2", "--heal-prompts", "zz=x.jsonl"], "--heal-prompts zz: names no input adapter; expected one of a, b"),
    (["--heal-prompts", "a=x.jsonl"], "--heal-prompts applies with --heal STEPS"),
    (["--heal", "2", "--output", "model"], "--heal applies to adapter output"),
])
def test_heal_refusals_are_one_line_exit_2(adapters, tmp_path, capsys, extra, message):
    """The CLI refuses what api.merge refuses (tests/training/test_heal.py), before any merge runs."""
    out = tmp_path / "healed"
    assert run(["linear", adapters["a"], adapters["b"], "-o", out, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1, err
    assert not out.exists()
