"""CLI conventions (issue 31): a default output for the method commands, --version, results on
stdout and progress on stderr, --json for merges, a one-line hint when the eval extra is missing,
help texts that name nothing a user lacks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import pytest

from adaptermerge import __version__, load_adapter
from adaptermerge.cli.main import cli, main


def run(argv) -> int:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    return info.value.code


def test_a_method_without_o_writes_merged_method_and_says_where(adapters, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run(["ties", adapters["a"], adapters["b"]]) == 0
    printed = capsys.readouterr()
    assert load_adapter(tmp_path / "merged-ties").modules
    assert printed.out.strip().splitlines()[-1] == "wrote merged adapter -> merged-ties"  # on stdout
    assert "merged-ties" not in printed.err  # the summary is a result: stdout; stderr has the bar only

    # the default is never replaced silently
    before = (tmp_path / "merged-ties" / "adapter_model.safetensors").read_bytes()
    assert run(["ties", adapters["a"], adapters["c"]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: merged-ties/ (the default output of ties) already exists") and "-o" in err and "--force" in err
    assert len(err.strip().splitlines()) == 1
    assert (tmp_path / "merged-ties" / "adapter_model.safetensors").read_bytes() == before
    assert run(["ties", adapters["a"], adapters["c"], "--force"]) == 0
    assert (tmp_path / "merged-ties" / "adapter_model.safetensors").read_bytes() != before


def test_merge_json_is_the_provenance_on_stdout(adapters, tmp_path, capsys):
    out = tmp_path / "lin"
    assert run(["linear", adapters["a"], adapters["b"], "--weights", "0.6,0.4", "-o", out, "--json"]) == 0
    printed = capsys.readouterr()
    result = json.loads(printed.out)  # stdout is the JSON and nothing else
    assert result["path"] == str(out) and result["output"] == "adapter" and result["method"] == "linear"
    assert [i["name"] for i in result["inputs"]] == ["a", "b"]
    assert result["summary"]["all_exact"] is True and result["weights"] == [0.6, 0.4]
    assert set(result["modules"]) == set(load_adapter(out).modules)  # per-module summary
    written = json.loads((out / "adaptermerge.json").read_text())
    assert {k: result[k] for k in written} == json.loads(json.dumps(written, default=str))  # the same record as the file's
    assert "{" not in printed.err


def test_merge_config_json(adapters, tmp_path, capsys):
    config = tmp_path / "m.yaml"
    config.write_text(f"merge_method: linear\nmodels:\n  - model: {adapters['a']}\n  - model: {adapters['b']}\nout: {tmp_path / 'from-yaml'}\n")
    assert run(["merge", config, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["method"] == "linear" and result["path"] == str(tmp_path / "from-yaml")


def test_version(capsys):
    assert run(["--version"]) == 0
    assert capsys.readouterr().out == f"adaptermerge {__version__}\n"
    assert run(["-V"]) == 0


def test_eval_without_the_eval_extra_is_a_one_line_hint(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` raises ImportError
    for argv in (["eval", tmp_path], ["run", tmp_path / "recipe.yaml", "-o", tmp_path / "out"]):
        if argv[0] == "run":
            from adaptermerge.recipe import example_path

            argv[1] = example_path()
        assert run(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert err.startswith(f"error: adaptermerge {argv[0]} needs lm-eval") and err.rstrip().endswith("pip install 'adaptermerge[eval]'")
    assert run(["eval", "--print-include-path"]) == 0  # needs no lm-eval


def _commands(group: click.Group, ctx: click.Context):
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        yield command
        if isinstance(command, click.Group):
            yield from _commands(command, ctx)


def test_help_texts_name_nothing_a_user_lacks():
    ctx = click.Context(cli, info_name="adaptermerge")
    for command in [cli, *_commands(cli, ctx)]:
        text = command.get_help(click.Context(command, info_name=command.name, parent=ctx))
        assert "../shared" not in text and "/work/" not in text, command.name


def test_shell_completion_as_docs_cli_md_describes_it(tmp_path):
    """Click's completion, under the variable docs/cli.md names: the script, and the answers."""
    import os
    import subprocess

    def complete(env):
        done = subprocess.run([sys.executable, "-m", "adaptermerge"], env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "_adaptermerge_completion()" in complete({"_ADAPTERMERGE_COMPLETE": "bash_source"})
    answers = complete({"_ADAPTERMERGE_COMPLETE": "bash_complete", "COMP_WORDS": "adaptermerge ties --threshold ", "COMP_CWORD": "3"})
    assert answers.split() == ["plain,auto", "plain,exact", "plain,sampled"]
    assert "plain,ties" in complete({"_ADAPTERMERGE_COMPLETE": "bash_complete", "COMP_WORDS": "adaptermerge ti", "COMP_CWORD": "1"})
    doc = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    assert 'eval "$(_ADAPTERMERGE_COMPLETE=bash_source adaptermerge)"' in doc


def test_dtype_flag_sets_the_written_factors_dtype(adapters, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "bf16"
    assert run(["linear", adapters["a"], adapters["b"], "--dtype", "bfloat16", "-o", out]) == 0
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.bfloat16"}
    assert json.loads((out / "adaptermerge.json").read_text())["dtype"] == "bfloat16"


def test_eval_with_an_lm_eval_outside_the_range_is_a_one_line_error(monkeypatch, tmp_path, capsys):
    import importlib.metadata

    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.4.5" if name == "lm-eval" else real(name))
    assert run(["eval", tmp_path]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: lm-eval 0.4.5 is outside the supported range >=0.4.12,<0.5")
