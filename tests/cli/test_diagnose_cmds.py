"""`adaptermerge diagnose` end to end on tiny PEFT adapters: the tables, the JSON schema, the
report folder, calibration records, and bad input as one `error:` line with exit 2."""

from __future__ import annotations

import json

import pytest
from support import make_adapter, save_tiny_chat_model

from adaptermerge.chat.data import build_records
from adaptermerge.chat.records import write_jsonl
from adaptermerge.cli.main import main

PAIR_KEYS = {"a", "b", "sign_conflict", "overlap_A", "overlap_B", "norm_ratio", "cosine", "modules"}


def run(argv):
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    return info.value.code


def test_data_free_json_tables_and_report_folder(adapters, tmp_path, capsys):
    inputs = [adapters["a"], adapters["b"], adapters["c"]]
    assert run(["diagnose", *inputs, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["adapters"] == ["a", "b", "c"] and report["calibrated"] is False and report["calibration"] is None
    assert len(report["pairs"]) == 3 and all(PAIR_KEYS <= set(p) for p in report["pairs"])
    assert all(0.0 <= p["sign_conflict"] <= 1.0 and 0.0 <= p["overlap_A"] <= 1.0 for p in report["pairs"])
    ab = next(p for p in report["pairs"] if (p["a"], p["b"]) == ("a", "b"))
    assert ab["modules"] == 8  # b adapts 4 of the 7 projections in each of the 2 layers
    assert set(report["predicted_interference"]) == {"a", "b", "c"}
    assert {"sum", "average", "merged", "strongest_other", "worst_layers"} <= set(report["predicted_interference"]["a"])
    assert len(report["per_module"]) == report["modules"] == 14

    out = tmp_path / "diag"
    assert run(["diagnose", *inputs, "-o", out]) == 0
    text = capsys.readouterr().out
    assert "adapter pairs" in text and "predicted interference" in text and f"wrote {out}" in text
    assert sorted(p.name for p in out.iterdir()) == ["diagnostics.json", "heatmap.png"]
    assert (out / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = json.loads((out / "diagnostics.json").read_text())
    assert written["pairs"] == report["pairs"]
    assert run(["diagnose", *inputs, "-o", out]) == 2  # an existing report folder needs --force
    assert "already exists" in capsys.readouterr().err
    assert run(["diagnose", *inputs, "-o", out, "--force"]) == 0


def test_a_merged_adapter_is_scored_per_task(adapters, tmp_path, capsys):
    merged = tmp_path / "sum"
    assert run(["task_arithmetic", adapters["a"], adapters["c"], "-o", merged]) == 0
    capsys.readouterr()
    assert run(["diagnose", adapters["a"], adapters["c"], "--merged", merged, "--merged", adapters["a"], "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    predicted = report["predicted_interference"]
    # the task arithmetic merge is the plain sum; adapter a scored as a merge loses nothing of task a
    assert predicted["a"]["merged"]["sum"] == pytest.approx(predicted["a"]["sum"], rel=1e-4)
    assert predicted["c"]["merged"]["sum"] == pytest.approx(predicted["c"]["sum"], rel=1e-4)
    assert predicted["a"]["merged"]["a"] == pytest.approx(0.0, abs=1e-6)
    # data-free, for task c: adapter a alone is off by ||delta_a - delta_c|| / ||delta_c||, from the norms and cosine
    na, nc, cos = report["norms"]["a"], report["norms"]["c"], report["pairs"][0]["cosine"]
    assert predicted["c"]["merged"]["a"] == pytest.approx(((na**2 + nc**2 - 2 * cos * na * nc) / nc**2) ** 0.5, rel=1e-4)
    assert predicted["c"]["sum"] == pytest.approx(na / nc, rel=1e-4)


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    root = tmp_path_factory.mktemp("diagnose")
    base = save_tiny_chat_model(root / "base")
    adapters = [make_adapter(base, root / f"a{i}", seed=30 + i, r=2, alpha=4) for i in range(2)]
    data = write_jsonl(build_records("safety", "train", 0)[:6], root / "safety.jsonl")
    return base, adapters, data


def test_calibration_adds_cross_activation_from_task_names_and_files(chat, tmp_path, capsys):
    base, (a0, a1), data = chat
    out = tmp_path / "diag"
    assert run(["diagnose", a0, a1, "--calib", f"structured,{data}", "--calib-size", "4", "--base", base,
                "--merged", a0, "-o", out, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["calibrated"] is True
    assert [c["records"] for c in report["calibration"]] == [4, 4]
    assert report["calibration"][0]["source"].startswith("built-in structured train split")
    pair = report["pairs"][0]
    assert set(pair["cross_activation"]) == {"a0 on a1", "a1 on a0"}
    assert all(v > 0 for v in pair["cross_activation"].values())
    row = report["per_module"][0]
    assert set(row["cross_activation"]) == {"a0", "a1"} and row["own_energy"]["a0"] > 0
    assert report["predicted_interference"]["a0"]["merged"]["a0"] == pytest.approx(0.0, abs=1e-6)
    assert report["predicted_interference"]["a1"]["worst_layers"]  # calibrated: where the other adapter fires
    assert (out / "heatmap.png").is_file()
    assert set(report["own_strength"]) == {"a0", "a1"} and all(v > 0 for v in report["own_strength"].values())
    assert set(report["inner_products"]["tasks"]) == {"a0", "a1"} and report["inner_products"]["labels"] == ["a0", "a1", "a0"]


@pytest.mark.parametrize("extra, named", [
    (["--calib", "domain"], "calib: got 1 entries for 2 adapters"),
    (["--density", "0"], "density must be"),
    (["--weights", "1,2,3"], "3 weights given for 2 adapters"),
])
def test_bad_options_exit_2_naming_the_parameter(adapters, capsys, extra, named):
    assert run(["diagnose", adapters["a"], adapters["c"], *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and named in err and "Traceback" not in err


def test_bad_inputs_exit_2_naming_them(adapters, quant_adapters, capsys):
    assert run(["diagnose", adapters["a"]]) == 2
    assert "adapters: diagnose compares adapters, give at least two" in capsys.readouterr().err
    assert run(["diagnose", adapters["a"], adapters["dora"]]) == 2
    assert "is DoRA" in capsys.readouterr().err
    # a merge of adapters of another (wider) base model
    assert run(["diagnose", adapters["a"], adapters["c"], "--merged", quant_adapters["qv"], "--ignore-base-mismatch"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: merged:") and "is 64x64; expected 32x32" in err
