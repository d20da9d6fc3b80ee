"""The demo's settings: what --quick changes, that defaults keep earlier adapter cache keys, and
that training threads come from the machine, never from what is cached."""

from __future__ import annotations

from pathlib import Path

from adaptermerge.demo import adapters, plan


def test_the_weight_search_is_off_unless_asked():
    assert plan.DemoConfig(Path("d"), quick=True).checked().weight_search is False
    assert plan.DemoConfig(Path("d")).checked().weight_search is False
    assert plan.DemoConfig(Path("d"), quick=True, weight_search=True).checked().weight_search is True


def test_quick_calibrates_regmean_on_fewer_records():
    quick = {a.name: a for a in plan.approaches(plan.DemoConfig(Path("d"), quick=True).checked())}
    full = {a.name: a for a in plan.approaches(plan.DemoConfig(Path("d")).checked())}
    assert quick["regmean"].params == {"calib_size": plan.QUICK_METHOD_PARAMS["regmean"]["calib_size"]}
    assert full["regmean"].params == {}


def test_quick_training_caps_the_anchor_prompts():
    quick = adapters.train_config("domain", base=None, seed=0, quick=True)
    full = adapters.train_config("domain", base=None, seed=0, quick=False)
    assert quick.anchor_unique == plan.QUICK_ANCHOR_UNIQUE and full.anchor_unique is None
    assert quick.max_steps < full.resolved().max_steps


def test_default_anchor_unique_leaves_the_cache_key_as_it_was(monkeypatch):
    import hashlib
    import json
    from dataclasses import asdict

    from adaptermerge.train import trainer

    monkeypatch.setattr(trainer, "base_fingerprint", lambda base: {"sha256": "b"})
    cfg = adapters.train_config("structured", base=None, seed=0, quick=False)
    # The key as computed before anchor_unique existed: adapters cached then are still found (those
    # from before `threads` joined the config were left behind on purpose: see cputhreads).
    settings = {k: v for k, v in asdict(cfg.resolved()).items() if k not in ("output", "force", "anchor_unique")}
    settings["data"] = trainer.load_records(cfg.resolved())[1]["sha256"]
    settings["base"] = "b"
    before = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert adapters.cache_key(cfg) == before
    capped = adapters.train_config("structured", base=None, seed=0, quick=True)
    capped.max_steps = cfg.resolved().max_steps
    assert adapters.cache_key(capped) != before  # an explicit cap is a different training set


def test_the_quick_eval_subsets_do_not_move_with_the_demo_seed(tmp_path):
    """--seed changes training and sampling, never which items the adapters are scored on: a
    subset drawn from another seed's eval split would hold their training items."""
    from adaptermerge.train.data import DATA_SEED, TASKS, build_records

    written = {}
    for seed in (0, 7):
        folder = tmp_path / f"seed{seed}"
        folder.mkdir()
        config = plan.gate_config(plan.DemoConfig(output=folder, quick=True, docs=dict(plan.QUICK_DOCS), seed=seed), folder)
        written[seed] = {t: Path(config.user_tasks[t]["data"]).read_text() for t in config.user_tasks}
    assert written[0] == written[7] and len(written[0]) == len(TASKS)
    eval_prompts = {r["messages"][0]["content"] for t in TASKS for r in build_records(t, "eval", DATA_SEED)}
    for text in written[7].values():
        import json

        assert all(json.loads(line)["messages"][0]["content"] in eval_prompts for line in text.splitlines())


def test_training_threads_come_from_the_machine_and_enter_the_key(monkeypatch):
    """Full runs take half the machine (two train side by side, or one beside the evaluation
    helper) even when only one is missing; --quick's task runs, one at a time, take all of it."""
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    monkeypatch.setattr("adaptermerge.train.trainer.base_fingerprint", lambda base: {"sha256": "b"})
    full = adapters.train_config("domain", base=None, seed=0, quick=False)
    quick = adapters.train_config("domain", base=None, seed=0, quick=True)
    chain = adapters.train_config("safety", base=None, seed=0, quick=True, on_top_of=Path("prev"))
    assert (full.threads, quick.threads, chain.threads) == (2, 4, 2)
    assert full.resolved().threads == 2
    other = adapters.train_config("domain", base=None, seed=0, quick=False)
    other.threads = 1
    assert adapters.cache_key(other) != adapters.cache_key(full)
