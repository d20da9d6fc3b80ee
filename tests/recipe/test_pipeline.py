"""The demo recipe (examples/manga-assist.yaml) with --quick end to end on a tiny random Llama: every
candidate gives a row (real, finite scores or its error), report.json has the documented
structure, the winner folders load.

The tiny model scores ~0 on the tasks: these tests check the plumbing, not the quality."""

from __future__ import annotations

import json
import math

import pytest

from support import SHARED_MMLU

TASKS = ("domain", "structured", "safety")


def _demo(base):
    """The demo recipe on the tiny base: 2 training steps, a few documents, the weight search on."""
    from dataclasses import replace

    from adaptermerge.recipe import example_path, load_recipe

    recipe = load_recipe(example_path())
    return recipe.with_overrides(base=str(base), adapters=tuple(replace(a, steps=2) for a in recipe.adapters),
                                 quick={"docs": {"domain": 3, "structured": 2, "safety": 4}, "mmlu_limit": 1},
                                 select={"weight_search": True})  # off by default; run here to cover its plumbing


@pytest.fixture(scope="module")
def demo_run(tiny_base, tmp_path_factory):
    from adaptermerge.recipe import run_recipe

    root = tmp_path_factory.mktemp("demo")
    mp = pytest.MonkeyPatch()
    mp.setenv("ADAPTERMERGE_CACHE", str(root / "cache"))  # the demo trains its own adapters here
    mp.setenv("HF_DATASETS_CACHE", str(root / "hf_datasets"))
    mp.setenv("HF_HUB_OFFLINE", "1")
    mmlu = str(SHARED_MMLU) if (SHARED_MMLU / "test").is_dir() else None
    recipe = _demo(tiny_base)
    stages = set()
    result = run_recipe(recipe, output=root / "demo", quick=True, mmlu_data=mmlu,
                        progress=lambda stage, done, total, label="": stages.add(stage))
    yield result, recipe, stages, mmlu is not None, root
    mp.undo()


def test_every_candidate_has_a_row_with_finite_scores(demo_run):
    from adaptermerge.recipe.rows import Row

    result, recipe, _, has_mmlu, _ = demo_run
    rows = {r.name: r for r in result.rows}
    assert all(isinstance(r, Row) for r in result.rows)
    expected = ["base", *TASKS, *[c.name for c in recipe.candidates], *recipe.baselines]
    assert all(name in rows for name in expected), sorted(set(expected) - set(rows))
    for name in expected:
        row = rows[name]
        if row.error:  # allowed only where a real limitation says so, never silently
            assert name == "mergekit_ties" and row.skipped, (name, row.error)
            continue
        assert not row.errors, (name, row.errors)
        tasks = TASKS + (("mmlu",) if has_mmlu else ())
        for task in tasks:
            assert isinstance(row.scores[task], float) and math.isfinite(row.scores[task]), (name, task, row.scores)
        assert row.gates_total > 0


def test_peft_factor_ties_runs_on_the_presets_mixed_ranks(demo_run):
    # The presets train domain at rank 16, the others at rank 8: PEFT's factor-wise ties refuses
    # that, so the demo zero-pads the rank-8 adapters first; both PEFT rows must produce scores.
    rows = {r.name: r for r in demo_run[0].rows}
    for name in ("peft_ties", "peft_ties_svd"):
        assert rows[name].error is None and rows[name].scores, (name, rows[name].error)


def test_mergekit_row_runs_or_says_why(demo_run):
    from adaptermerge.recipe.baselines import find_mergekit

    row = {r.name: r for r in demo_run[0].rows}["mergekit_ties"]
    if find_mergekit(None) is None:
        assert row.skipped and "mergekit-yaml not found" in row.error
    else:
        assert row.error is None and row.model == "full"


def test_report_json_structure(demo_run):
    result, _, stages, has_mmlu, _ = demo_run
    data = json.loads((result.output / "report.json").read_text())
    assert isinstance(data["candidates"], list)
    names = [c["name"] for c in data["candidates"]]
    assert names[:4] == ["base", *TASKS]
    for c in data["candidates"]:
        assert isinstance(c["name"], str) and isinstance(c["scores"], dict)
        if c["kind"] == "merge" and not c.get("error"):
            assert set(c["retention"]) == set(TASKS)
            assert all(v is None or math.isfinite(v) for v in c["retention"].values())
            if has_mmlu:
                mmlu_delta = c["scores"]["mmlu"] - data["candidates"][0]["scores"]["mmlu"]
                assert c["mmlu_delta"] == pytest.approx(mmlu_delta)
    assert {"base", "train", "merge", "grams", "eval", "winner"} <= stages  # grams: regmean's calibration pass
    assert data["recipe"] == "manga-assist" and data["tasks"] == list(TASKS) and data["run"]["quick"] is True
    assert (result.output / "report.md").read_text().count("|") > 10
    assert (result.output / "chart.png").stat().st_size > 1000
    assert data["timings_s"]["total"] > 0
    # The tiny model passes no gate, so the sweep ran, the weight search first.
    assert "sweep" in stages and "search" in stages
    search = data["weight_search"]
    assert len(search["best"]["weights"]) == 3 and search["points"] == len(search["trace"]) >= 1
    assert search["best"]["worst"] >= search["start"]["worst"]
    assert "## Weight search" in (result.output / "report.md").read_text()
    # The sweep chose on the dev split: its rows there, the choice among them, and the winner is that
    # choice's eval row (a sweep point is in the table only when it was chosen).
    sweep = data["sweep"]
    assert sweep["split"] == "dev" and set(sweep["eval_tasks"].values()) == {f"{t}_dev_first{n}" for t, n in
                                                                           {"domain": 3, "structured": 2, "safety": 4}.items()}
    dev_names = [r["name"] for r in sweep["rows"]]
    assert sweep["chosen"] in dev_names and any(r.get("sweep") for r in sweep["rows"])
    assert data["winner"]["name"] == sweep["chosen"]
    table_sweeps = [c["name"] for c in data["candidates"] if c.get("sweep")]
    assert table_sweeps == ([sweep["chosen"]] if sweep["chosen"].startswith("sweep_") else [])
    assert "## The sweep, on the dev split" in (result.output / "report.md").read_text()
    assert any("dev split" in n for n in data["notes"])
    # The winner's gates are listed with their details; a miss on 0/1 items says how many it needs.
    report = (result.output / "report.md").read_text()
    winner_row = next(c for c in data["candidates"] if c["name"] == data["winner"]["name"])
    assert f"## The winner's gates ({winner_row['name']})" in report
    for g in winner_row["gates"]:
        assert f"| {g['rule']} |" in report
    # Each registered method's row records its output ranks and truncation error: exact for the
    # linear combinations, truncated (error > 0) for the sparse merges, whose rows are the adapter's.
    rows = {c["name"]: c for c in data["candidates"]}
    assert rows["linear"]["lowrank"]["all_exact"] and rows["linear"]["lowrank"]["mean_rel_error"] < 1e-5
    assert not rows["ties"]["lowrank"]["all_exact"] and rows["ties"]["lowrank"]["mean_rel_error"] > 0
    assert rows["ties"]["candidate"]["describe"] == "method:ties weights=[1.0, 1.0, 1.0]"
    assert "- ties: method:ties" in report and "truncated to rank" in report and "exact at rank" in report


def test_evaluation_starts_beside_the_merges(demo_run):
    """On a multi-core CPU the helper process, started before the merges, evaluates part of the
    models (run.EarlyEvaluation); the scores are the same whoever evaluates (test_eval)."""
    import os

    result, *_ = demo_run
    helped = result.report["evaluated_by_helper"]
    names = {r.name for r in result.rows}
    assert set(helped) <= names
    if (os.cpu_count() or 1) >= 2:
        assert helped, "the helper evaluated nothing"


def test_trained_adapters_are_cached_by_settings(demo_run):
    from adaptermerge.recipe import adapters

    _, recipe, _, _, root = demo_run
    cfg = adapters.choose_config("domain", base=recipe.base, seed=0, quick=recipe.quick, steps=2)
    assert adapters.is_trained(adapters.cache_path(cfg))
    other = adapters.choose_config("domain", base=recipe.base, seed=0, quick=recipe.quick, steps=3)
    assert adapters.cache_path(other) != adapters.cache_path(cfg)
    assert adapters.cache_path(cfg).parent == root / "cache" / "adapters"


def test_winner_folders_exist_and_load(demo_run):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result, recipe, _, _, _ = demo_run
    assert result.winner is not None and result.winner.scheme == "nf4"
    winner = result.output / "winner"
    ids = torch.tensor([[1, 2, 3]])
    if (winner / "adapter").is_dir():
        base = AutoModelForCausalLM.from_pretrained(recipe.base)
        model = PeftModel.from_pretrained(base, winner / "adapter")
        assert torch.isfinite(model(input_ids=ids).logits).all()
    nf4 = AutoModelForCausalLM.from_pretrained(winner / "nf4")
    assert any("Params4bit" in type(p).__name__ for p in nf4.parameters())
    assert torch.isfinite(nf4(input_ids=ids).logits.float()).all()


def test_existing_output_needs_force(demo_run):
    from adaptermerge.errors import AdapterMergeError
    from adaptermerge.recipe import run_recipe

    with pytest.raises(AdapterMergeError, match="--force"):
        run_recipe(demo_run[1], output=demo_run[0].output, quick=True)


def test_cli_rejects_bad_train_steps(tmp_path, capsys):
    from adaptermerge.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["demo", "--quick", "-o", str(tmp_path / "d"), "--train-steps", "domain=many"])
    assert exc.value.code == 2
    assert "--train-steps" in capsys.readouterr().err


def test_cli_run_names_the_recipe_file_and_key_of_an_error(tmp_path, capsys):
    from adaptermerge.cli.main import main

    recipe = tmp_path / "bad.yaml"
    recipe.write_text("adapters: {}\ncandidates: all\ngates: {tasks: {domain: {min: 0.5}}}\nselect: {sweep: 'no'}\n")
    with pytest.raises(SystemExit) as exc:
        main(["run", str(recipe), "-o", str(tmp_path / "out")])
    assert exc.value.code == 2
    assert f"{recipe}: adapters:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_merges_with_the_same_weights_are_evaluated_once(demo_run):
    result = demo_run[0]
    rows = {r.name: r for r in result.rows}
    # For plain LoRA adapters sequential is the plain sum, the same weights as task arithmetic.
    assert rows["sequential"].same_as == "task_arithmetic"
    for row in rows.values():
        if row.same_as:
            assert row.scores == rows[row.same_as].scores and row.probe_difference < 1e-4
    assert "sequential (= task_arithmetic)" in (result.output / "report.md").read_text()


def test_the_verdict_tells_the_targets_from_the_task_minimums():
    from adaptermerge.cli.run_cmds import verdict
    from adaptermerge.recipe.rows import GateOutcome

    def gate(kind, passed):
        return GateOutcome("t", "m", kind, 0.5, "rule", passed, 0.4)

    targets = [gate("retention", True), gate("max_drop", True)]
    assert verdict(targets + [gate("min", True)]) == "passes every gate"
    missed_min = verdict(targets + [gate("min", False)])
    assert "retention and reference targets met" in missed_min and "task minimums missed" in missed_min
    missed_target = verdict([gate("retention", False), gate("max_drop", True), gate("min", True)])
    assert "targets missed" in missed_target and "task minimums met" in missed_target


def test_a_heal_candidate_merges_then_distils_and_sits_beside_sequential_training(tiny_base, tmp_path, monkeypatch):
    """Kind "heal": the method's merge, then its heal steps on the inputs' own training prompts
    (their training.json); listed after the data-free merges, next to sequential training."""
    from types import SimpleNamespace

    from adaptermerge.recipe import pipeline
    from adaptermerge.recipe.schema import MergeSpec
    from adaptermerge.training.trainer import TrainConfig, train

    monkeypatch.setenv("ADAPTERMERGE_CACHE", str(tmp_path / "cache"))
    inputs = {task: train(TrainConfig(task=task, base=str(tiny_base), output=tmp_path / task, max_steps=6, batch_size=4, rank=4, lr=5e-2,
                                      alpha=8, qlora=False, anchor_fraction=0.0, threads=1)) for task in ("domain", "safety")}
    recipe = SimpleNamespace(adapters=[1, 2], seed=0, base=str(tiny_base), baselines=("sequential_training", "peft_ties"),
                             candidates=(MergeSpec("linear", "linear"), MergeSpec("linear+heal20", "linear", heal=20)),
                             quick=SimpleNamespace(params={}, step_fraction=0.1))
    run = SimpleNamespace(recipe=recipe, options=SimpleNamespace(quick=True), quick=recipe.quick, base=str(tiny_base),
                          inputs=inputs, tmp=tmp_path / "run", progress=lambda *a: None)
    todo = pipeline.candidates(run)
    assert [(c.name, c.kind, c.heal) for c in todo] == [("linear", "method", 0), ("peft_ties", "peft", 0),
                                                        ("linear+heal20", "heal", 2), ("sequential_training", "train", 0)]
    row = pipeline.make_candidate(run, todo[2])
    assert row.error is None and json.loads((row.path / "adaptermerge.json").read_text())["heal"]["steps"] == 2
    (tmp_path / "safety" / "training.json").unlink()  # a given adapter without lineage: the row says what to do
    row = pipeline.make_candidate(run, todo[2])
    assert "no training.json" in row.error and "--heal-prompts" in row.error
