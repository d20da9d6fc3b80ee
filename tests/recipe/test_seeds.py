"""Seed-robust selection (`seeds:`): the choice maximizes the worst seed, not the mean; the report
gives the chosen merge's retention at each seed on the eval split and its minimum over the seeds;
the key and the --seeds option refuse the same bad input; one seed is the plain run.

The run's stages (training, merging, evaluating, writing the winner) are replaced by fakes with
fixed scores: the plumbing and the rule are under test here, tests/recipe/test_pipeline.py runs the
real stages."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from support import fake_scores
from adaptermerge.errors import AdapterMergeError
from adaptermerge.evalsuite.harness import TaskScores
from adaptermerge.recipe import example_path, load_recipe, select
from adaptermerge.recipe import tasks as tasks_mod
from adaptermerge.recipe.rows import Candidate, Row, Winner

TASKS = ("domain", "structured", "safety")
N = 20


# ---------------------------------------------------------------- the rule

def _merge(name: str, retention: dict | None, error: str | None = None) -> Row:
    return Row(name, "merge", candidate=Candidate(name, "method", name, {}, (1.0, 1.0, 1.0)), retention=retention, error=error)


def _ret(d: float, s: float, f: float) -> dict:
    return {"domain": d, "structured": s, "safety": f}


def test_the_choice_maximizes_the_worst_seed_not_the_mean():
    # steady: 0.6 at every seed (mean 0.6); spiky: 0.9, 0.9, 0.3 (mean 0.7, the mean's winner)
    rows = {seed: [_merge("spiky", _ret(0.95, r, 0.95)), _merge("steady", _ret(0.6, 0.8, 0.7))]
            for seed, r in ((0, 0.9), (1, 0.9), (2, 0.3))}
    mean = {n: sum(min(v for v in next(r for r in rows[s] if r.name == n).retention.values()) for s in rows) / 3
            for n in ("spiky", "steady")}
    assert max(mean, key=mean.get) == "spiky"
    chosen, ranked = select.choose_across_seeds(rows)
    assert chosen == "steady" and ranked == ["steady", "spiky"]
    assert select.worst_seed({s: next(r for r in rows[s] if r.name == "spiky") for s in rows}) == 2


def test_a_merge_that_fails_at_one_seed_is_never_chosen():
    rows = {0: [_merge("broken", _ret(1, 1, 1)), _merge("fine", _ret(0.2, 0.2, 0.2))],
            1: [_merge("broken", None, error="RuntimeError: boom"), _merge("fine", _ret(0.3, 0.3, 0.3))]}
    chosen, ranked = select.choose_across_seeds(rows)
    assert chosen == "fine" and ranked == ["fine", "broken"]
    # missing at a seed counts as unusable there
    chosen, _ = select.choose_across_seeds({0: [_merge("a", _ret(1, 1, 1)), _merge("b", _ret(0.1, 0.1, 0.1))],
                                            1: [_merge("b", _ret(0.1, 0.1, 0.1))]})
    assert chosen == "b"
    assert select.choose_across_seeds({0: [_merge("x", None, error="e")]}) == (None, ["x"])


def test_across_seeds_gives_the_minimum_task_by_task():
    rows = {0: replace(_merge("m", _ret(0.9, 0.5, None)), scores={"domain": 0.8}, mmlu_delta=-0.01, gates_passed=3, gates_total=5),
            1: replace(_merge("m", _ret(0.7, 0.6, None)), scores={"domain": 0.6}, mmlu_delta=0.02, gates_passed=4, gates_total=5)}
    out = select.across_seeds(rows)
    assert out["min"]["retention"] == {"domain": 0.7, "structured": 0.5, "safety": None}
    assert out["min"]["scores"] == {"domain": 0.6} and out["min"]["mmlu_delta"] == -0.01
    assert out["min"]["min_retention"] == 0.5 and out["min"]["gates_passed"] == 3 and not out["min"]["passed"]
    assert out["per_seed"][1]["min_retention"] == 0.6 and out["worst_seed"] == 0


# ---------------------------------------------------------------- the run, with fake stages

def _scores(task: str, values: dict[str, float]) -> TaskScores:
    return fake_scores(task, values, N)


def _model(names, domain, structured=1.0, refusal=1.0):
    return {names["domain"]: _scores(names["domain"], {"exact_match": domain}),
            names["structured"]: _scores(names["structured"], {"schema_valid": structured}),
            names["safety"]: _scores(names["safety"], {"refusal_rate": refusal, "benign_answer_rate": 1.0}),
            "mmlu": _scores("mmlu", {"acc": 0.3})}


# domain's score of each merge at each seed on the dev split (the other tasks: 1.0, the single
# adapters' scores, base 0): spiky passes every gate at seeds 0 and 1 and misses badly at 2, so it
# wins on the mean; steady misses retention a little at every seed and wins the worst seed.
DEV = {"spiky": {0: 1.0, 1: 1.0, 2: 0.5}, "steady": {0: 0.8, 1: 0.8, 2: 0.8}}
EVAL = {"spiky": {0: 1.0, 1: 1.0, 2: 0.5}, "steady": {0: 0.8, 1: 0.85, 2: 0.9}}


@pytest.fixture
def fake_stages(monkeypatch, tmp_path):
    from adaptermerge.recipe import pipeline

    calls = {"evaluated": [], "trained": [], "winner": [], "given": []}

    def prepare_adapters(run):
        calls["trained"].append(run.recipe.seed)
        calls["given"] += [(run.recipe.seed, spec.name, spec.path) for spec in run.recipe.adapters if spec.preset is None]
        rows = []
        for spec in run.recipe.adapters:
            path = Path(spec.path) if spec.path is not None else run.tmp / "adapters" / spec.name
            run.inputs[spec.name] = path
            rows.append(Row(spec.name, "adapter", path=path, task=spec.task, source=str(spec.path) if spec.path else None,
                            reused=spec.path is None or None, steps=2))
        return rows

    def make_candidate(run, candidate):
        out = run.tmp / "merges" / candidate.name
        out.mkdir(parents=True)
        return Row(candidate.name, "merge", candidate=candidate, path=out, seconds=0.0)

    def evaluate_entries(run, entries, gate_config, helper=None, split="eval", stage=None):
        seed = run.recipe.seed
        names = tasks_mod.eval_names(run.recipe, run.plan.docs, split)
        table = DEV if split == "dev" else EVAL
        scores = {}
        for e in entries:
            if e.kind == "base":
                scores[e.name] = _model(names, 0.0, 0.0, 0.0)
            elif e.kind == "adapter":
                scores[e.name] = _model(names, 1.0)
            else:
                scores[e.name] = _model(names, table[e.name][seed])
        calls["evaluated"].append((seed, split, sorted(n for n in scores if n in table)))
        return SimpleNamespace(scores=scores, notes=[], candidates=[])

    def write_winner(run, row, out):
        out.mkdir(parents=True)
        calls["winner"].append((run.recipe.seed, row.name, Path(row.path)))
        return Winner(row.name, None, None, None)

    monkeypatch.setattr(pipeline, "prepare_adapters", prepare_adapters)
    monkeypatch.setattr(pipeline, "make_candidate", make_candidate)
    monkeypatch.setattr(pipeline, "evaluate_entries", evaluate_entries)
    monkeypatch.setattr(pipeline, "write_winner", write_winner)
    monkeypatch.setattr(pipeline, "start_helper", lambda *args, **kwargs: None)  # the plain run's early evaluation
    monkeypatch.setattr(pipeline.base_mod, "resolve_base", lambda base: tmp_path / "base")
    monkeypatch.setattr(tasks_mod, "mmlu_source", lambda data: ("local copy", None))
    return calls


def _recipe(**changes):
    recipe = load_recipe(example_path())
    candidates = tuple(replace(c, name=n) for c, n in zip(recipe.candidates, ("spiky", "steady")))
    return recipe.with_overrides(candidates=candidates, baselines=(), **changes)


def test_a_run_across_seeds_chooses_the_worst_seeds_best_and_reports_each_seed(fake_stages, tmp_path):
    from adaptermerge.recipe import report, run_recipe

    result = run_recipe(_recipe().at_seeds([0, 1, 2]), output=tmp_path / "out", quick=True)
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    seeds = data["seeds"]
    assert seeds["seeds"] == [0, 1, 2] and seeds["split"] == "dev" and seeds["chosen"] == "steady"
    assert result.best == "steady" and result.winner.name == "steady"
    # trained and scored on the dev split at every seed; only the chosen merge then on the eval split
    assert fake_stages["trained"] == [0, 1, 2]
    assert [c for c in fake_stages["evaluated"] if c[1] == "dev"] == [(s, "dev", ["spiky", "steady"]) for s in (0, 1, 2)]
    assert [c for c in fake_stages["evaluated"] if c[1] == "eval"] == [(s, "eval", ["steady"]) for s in (0, 1, 2)]
    # the winner written is the first seed's merge
    (seed, name, path), = fake_stages["winner"]
    assert (seed, name, path.parent.parent.name) == (0, "steady", "seed-0")
    # the ranking: every merge at every seed on the dev split, the chosen first, spiky's worst seed 2
    ranking = {r["name"]: r for r in seeds["ranking"]}
    assert [r["name"] for r in seeds["ranking"]] == ["steady", "spiky"]
    assert ranking["spiky"]["worst_seed"] == 2 and ranking["spiky"]["per_seed"]["0"]["passed"]
    assert ranking["steady"]["per_seed"]["2"]["min_retention"] == pytest.approx(0.8)
    # per-seed retention of the chosen merge on the eval split, and the minimum over the seeds
    per_seed = seeds["eval"]["per_seed"]
    assert [per_seed[s]["retention"]["domain"] for s in ("0", "1", "2")] == pytest.approx([0.8, 0.85, 0.9])
    assert seeds["eval"]["min"]["retention"] == pytest.approx({"domain": 0.8, "structured": 1.0, "safety": 1.0})
    # the table: the base once, each seed's adapters and the chosen merge, named by seed
    names = [c["name"] for c in data["candidates"]]
    assert names == ["base", *[f"{n} (seed {s})" for s in (0, 1, 2) for n in (*TASKS, "steady")]]
    assert [r.name for r in result.best_rows] == [f"steady (seed {s})" for s in (0, 1, 2)]
    table = report.seed_rows(data)
    assert table[0][:4] == ["seed", "retention domain", "retention structured", "retention safety"]
    assert [r[0] for r in table[1:]] == ["0", "1", "2", "min over seeds"]
    assert [r[1] for r in table[1:]] == ["0.80", "0.85", "0.90", "0.80"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Across seeds 0, 1, 2" in md and "| min over seeds | 0.80 |" in md and "| **steady** |" in md
    assert "worst seed ranks best on the dev split" in md
    assert (tmp_path / "out" / "retention.png").is_file() and not (tmp_path / "out" / "chart.png").exists()
    assert any("no sweep across seeds" in n for n in data["notes"])
    assert (tmp_path / "out" / "seed-1" / "merges" / "spiky").is_dir()
    assert not result.passed  # steady misses retention at every seed


def test_a_given_adapter_is_taken_at_each_seed_from_its_file_for_that_seed(fake_stages, tmp_path):
    from adaptermerge.recipe import run_recipe

    files = {seed: tmp_path / f"domain-s{seed}.safetensors" for seed in (0, 1)}
    for f in files.values():
        f.write_bytes(b"")
    recipe = _recipe()
    given = replace(recipe.adapters[0], preset=None, paths=files)
    recipe = recipe.with_overrides(adapters=(given, *recipe.adapters[1:]))
    with pytest.raises(AdapterMergeError, match="no file for seed 2"):
        recipe.at_seeds([0, 1, 2])
    run_recipe(recipe.at_seeds([0, 1]), output=tmp_path / "out", quick=True)
    assert fake_stages["given"] == [(0, "domain", files[0]), (1, "domain", files[1])]
    with pytest.raises(AdapterMergeError):  # never written over a given file, whichever seed's
        run_recipe(recipe.at_seeds([0, 1]), output=files[1], quick=True, force=True)
    # a Recipe changed in code is checked by the run itself
    with pytest.raises(AdapterMergeError, match="no file for seed 5"):
        run_recipe(replace(recipe, seed=5), output=tmp_path / "other", quick=True)


def test_one_seed_is_the_plain_run(fake_stages, tmp_path):
    from adaptermerge.recipe import run_recipe

    one = _recipe().at_seeds([2])
    assert one.seeds is None and one.seed == 2
    result = run_recipe(one.with_overrides(select={"sweep": False}), output=tmp_path / "out", quick=True)
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert "seeds" not in data and fake_stages["trained"] == [2]
    assert [c["name"] for c in data["candidates"]] == ["base", *TASKS, "spiky", "steady"]
    # every merge on the eval split, once: the plain run's table (spiky passes at seed 2? no: 0.5)
    assert fake_stages["evaluated"] == [(2, "eval", ["spiky", "steady"])]
    assert result.best == "steady" and [r.name for r in result.best_rows] == ["steady"]
    assert (tmp_path / "out" / "chart.png").is_file()
    assert "Across seeds" not in (tmp_path / "out" / "report.md").read_text()


# ---------------------------------------------------------------- the key and the option

@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for name in ("a0.safetensors", "a1.safetensors"):
        (tmp_path / name).write_bytes(b"")
    return tmp_path


def _load(folder: Path, **top) -> object:
    data = {"adapters": {"a": {"preset": "domain"}, "b": {"preset": "structured"}}, "candidates": ["ties"],
            "gates": {"tasks": {"domain": {"metric": "exact_match", "min": 0.5}, "structured": {"metric": "schema_valid", "min": 0.5}}}}
    data.update(top)
    path = folder / "r.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_recipe(path)


@pytest.mark.parametrize("value, message", [
    ([], "expected a non-empty list of seeds"),
    ("0,1", "expected a non-empty list of seeds"),
    ([0, 1, 0], "seed 0 is given twice"),
    ([0, -1], r"seeds\[1\] must be an integer in 0\.\."),
    ([0, 1.5], r"seeds\[1\] must be an integer"),
    ([0, "1"], r"seeds\[1\] must be an integer"),
    ([True, 2], r"seeds\[0\] must be an integer"),
])
def test_the_seeds_key_refuses_bad_lists(folder, value, message):
    with pytest.raises(AdapterMergeError, match=message) as exc:
        _load(folder, seeds=value)
    assert str(folder / "r.yaml") in str(exc.value)
    # the API and the CLI's --seeds use the same check
    with pytest.raises(AdapterMergeError, match=message.replace("seeds", "--seeds", 1) if "seeds\\[" in message else message):
        _load(folder).at_seeds(value, "--seeds")


def test_the_seeds_key(folder):
    recipe = _load(folder, seeds=[3, 1, 2])
    assert recipe.seeds == (3, 1, 2) and recipe.seed == 3 and recipe.seed_list == (3, 1, 2)
    assert _load(folder, seeds=[4]).seeds is None and _load(folder, seeds=[4]).seed == 4  # one seed: a plain run
    assert _load(folder).seed_list == (0,)
    with pytest.raises(AdapterMergeError, match="seeds: give `seed:` .* or `seeds:` .*not both"):
        _load(folder, seed=0, seeds=[0, 1])
    with pytest.raises(AdapterMergeError, match="select.weight_search runs at one seed"):
        _load(folder, seeds=[0, 1], select={"weight_search": True})


def test_given_adapters_need_a_file_per_seed(folder):
    given = {"a": {"path": "a0.safetensors", "alpha": 8, "task": "domain"}, "b": {"preset": "structured"}}
    with pytest.raises(AdapterMergeError, match=r"adapters\.a\.path: a given file cannot be retrained at seeds 0, 1: .*paths:"):
        _load(folder, adapters=given, seeds=[0, 1])
    with pytest.raises(AdapterMergeError, match=r"--seeds: adapters\.a\.path: a given file cannot be retrained"):
        _load(folder, adapters=given).at_seeds([0, 1], "--seeds")
    per_seed = {"a": {"paths": {0: "a0.safetensors", 1: "a1.safetensors"}, "alpha": 8, "task": "domain"}, "b": {"preset": "structured"}}
    recipe = _load(folder, adapters=per_seed, seeds=[0, 1])
    assert recipe.adapters[0].paths == {0: folder / "a0.safetensors", 1: folder / "a1.safetensors"}
    assert recipe.one_seed(1).adapters[0].path == folder / "a1.safetensors" and recipe.one_seed(1).seeds is None
    assert set(recipe.given_files) == {folder / "a0.safetensors", folder / "a1.safetensors"}
    with pytest.raises(AdapterMergeError, match=r"adapters\.a\.paths: no file for seed 2 \(it has seeds 0, 1\)"):
        recipe.at_seeds([0, 2], "--seeds")
    assert _load(folder, adapters=per_seed, seed=1).one_seed(1).adapters[0].path == folder / "a1.safetensors"
    with pytest.raises(AdapterMergeError, match=r"adapters\.a\.paths: no file for seed 0"):
        _load(folder, adapters={**per_seed, "a": {"paths": {1: "a1.safetensors"}, "task": "domain"}})  # seed 0 by default
    for bad, message in (({"0": "a0.safetensors"}, r"adapters\.a\.paths\.'?0'? must be an integer"),
                         ({0: "missing.safetensors"}, "does not exist"), ({}, "expected a mapping of seeds to files"),
                         ({-1: "a0.safetensors"}, "must be an integer in 0")):
        with pytest.raises(AdapterMergeError, match=message):
            _load(folder, adapters={**per_seed, "a": {"paths": bad, "task": "domain"}})
    with pytest.raises(AdapterMergeError, match="exactly one of"):
        _load(folder, adapters={**per_seed, "a": {"path": "a0.safetensors", "paths": {0: "a0.safetensors"}}})


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0,0"], "--seeds: seed 0 is given twice"),
    (["--seeds", "0,x"], "--seeds '0,x': expected comma-separated integer seeds"),
    (["--seeds", ""], "--seeds '': expected comma-separated integer seeds"),
    (["--seeds", "0,-2"], r"--seeds[1] must be an integer in 0.."),
    (["--seeds", "0,1", "--seed", "3"], "--seed and --seeds: give one"),
    (["--seeds", "0,1", "--weight-search"], "select.weight_search runs at one seed"),
])
def test_the_demo_refuses_bad_seeds(tmp_path, capsys, args, message):
    from adaptermerge.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["demo", "--quick", "-o", str(tmp_path / "d"), *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and err.count("\n") == 1
    assert not (tmp_path / "d").exists()


def test_run_refuses_seeds_its_given_adapters_lack(folder, capsys):
    from adaptermerge.cli.main import main

    data = {"adapters": {"a": {"path": "a0.safetensors", "alpha": 8, "task": "domain"}, "b": {"preset": "structured"}},
            "candidates": ["ties"], "gates": {"tasks": {"domain": {"metric": "exact_match", "min": 0.5},
                                                       "structured": {"metric": "schema_valid", "min": 0.5}}}}
    (folder / "r.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(SystemExit) as exc:
        main(["run", str(folder / "r.yaml"), "-o", str(folder / "out"), "--seeds", "0,1"])
    assert exc.value.code == 2
    assert "--seeds: adapters.a.path: a given file cannot be retrained" in capsys.readouterr().err
    assert not (folder / "out").exists()
