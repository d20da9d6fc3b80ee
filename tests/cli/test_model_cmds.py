"""`--output model` with --requantize and --merge-onto, from flags and from a YAML config."""

import json
import shutil
import sys

import pytest

from adaptermerge.cli.main import main


def run(argv):
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    return info.value.code


def test_requantize_nf4_writes_and_prints_the_report(quant_base, quant_adapters, tmp_path, capsys):
    out = tmp_path / "merged-nf4"
    assert run(["linear", quant_adapters["all"], quant_adapters["qv"], "--output", "model", "--base", quant_base, "--requantize", "nf4", "-o", out]) == 0
    printed = capsys.readouterr()
    assert "nf4 quantization of" in printed.out + printed.err and "merged onto" in printed.out + printed.err
    meta = json.loads((out / "adaptermerge.json").read_text())
    assert meta["quantization"]["scheme"] == "nf4" and meta["quantization"]["quantized_layers"] == 14
    assert meta["merge_onto"]["merge_onto"] == "original" and len(meta["inputs"]) == 2
    assert json.loads((out / "config.json").read_text())["quantization_config"]["bnb_4bit_quant_type"] == "nf4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged-nf4"]


def test_yaml_config_takes_merge_onto_and_requantize(quant_base, quant_adapters, tmp_path):
    config = tmp_path / "merge.yaml"
    config.write_text(
        f"merge_method: linear\nbase_model: {quant_base}\nmodels:\n  - model: {quant_adapters['qv']}\n"
        "output: model\nmerge_onto: dequantized\nrequantize: int8\nout: merged-int8\n"
    )
    assert run(["merge", config]) == 0
    meta = json.loads((tmp_path / "merged-int8" / "adaptermerge.json").read_text())
    assert meta["merge_onto"]["merge_onto"] == "dequantized" and meta["merge_onto"]["reason"].startswith("asked for")
    assert meta["quantization"]["scheme"] == "int8"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--output", "model", "--requantize", "nf3"], "unknown quantization scheme 'nf3'"),
        (["--output", "model", "--requantize", "nf4", "--compute-dtype", "float8"], "unknown compute dtype"),
        (["--output", "model", "--merge-onto", "quantized"], "--merge-onto 'quantized': expected one of original, dequantized"),
        (["--requantize", "nf4"], "--requantize applies to --output model"),
        (["--merge-onto", "dequantized"], "--merge-onto applies to --output model"),
        (["--output", "model", "--compute-dtype", "bfloat16"], "--compute-dtype bfloat16 applies to --requantize"),
        (["--output", "model", "--shard-size", "0"], "--shard-size '0': expected a positive size"),
    ],
)
def test_bad_model_options_are_one_line_errors_with_no_output(quant_base, quant_adapters, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert run(["linear", quant_adapters["qv"], "--base", quant_base, "-o", out, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_quantized_base_with_merge_onto_original_is_refused(quant_base, quant_adapters, tmp_path, capsys):
    from adaptermerge.quantization import quantize_model

    quantize_model(quant_base, tmp_path / "nf4_base", "nf4")
    argv = ["linear", quant_adapters["qv"], "--base", tmp_path / "nf4_base", "--ignore-base-mismatch", "--output", "model", "--merge-onto", "original", "-o", tmp_path / "out"]
    assert run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar's line
    assert err.startswith("error: base model") and "already quantized" in err and "full-precision" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nf4_base"]


def test_missing_bitsandbytes_is_a_one_line_error(quant_base, quant_adapters, tmp_path, capsys, monkeypatch):
    for name in [m for m in sys.modules if m == "bitsandbytes" or m.startswith("bitsandbytes.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what `import bitsandbytes` sees when it is not installed
    assert run(["linear", quant_adapters["qv"], "--base", quant_base, "--output", "model", "--requantize", "nf4", "-o", tmp_path / "out"]) == 2
    err = capsys.readouterr().err.strip()
    assert "bitsandbytes is needed" in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_the_base_folder_is_never_the_output(tiny_base, adapters, tmp_path, capsys):
    base = tmp_path / "base"
    shutil.copytree(tiny_base, base)
    before = (base / "model.safetensors").read_bytes()
    assert run(["linear", adapters["a"], "--base", base, "--ignore-base-mismatch", "--output", "model", "-o", base, "--force"]) == 2
    assert "would overwrite or write into input" in capsys.readouterr().err
    assert (base / "model.safetensors").read_bytes() == before
