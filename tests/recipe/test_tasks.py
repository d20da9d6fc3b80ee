"""A recipe's evaluation tasks on a split, and what --quick changes: subsets that never move with
the run's seed, training settings that keep the adapter cache keys of before."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from adaptermerge.chat.data import DATA_SEED, TASKS, build_records
from adaptermerge.recipe import adapters, example_path, load_recipe
from adaptermerge.recipe import tasks as tasks_mod

DEMO = load_recipe(example_path())


def test_quick_uses_the_recipes_quick_settings():
    quick, full = tasks_mod.plan(DEMO, True, "mmlu"), tasks_mod.plan(DEMO, False, "mmlu")
    assert (quick.docs, quick.mmlu_limit, quick.mmlu_subjects) == ({"domain": 8, "structured": 6, "safety": 12}, 1, 19)
    assert (full.docs, full.mmlu_limit, full.mmlu_subjects) == ({}, 3, None)
    assert not tasks_mod.plan(DEMO, False, None).has_mmlu


def test_quick_training_caps_the_anchor_prompts():
    quick = adapters.train_config("domain", base=None, seed=0, quick=DEMO.quick)
    full = adapters.train_config("domain", base=None, seed=0, quick=None)
    assert quick.anchor_unique == 16 and full.anchor_unique is None
    assert quick.max_steps == 20 and full.max_steps is None and full.resolved().max_steps == 200


def test_default_anchor_unique_leaves_the_cache_key_as_it_was(monkeypatch):
    from adaptermerge.training import trainer

    monkeypatch.setattr(trainer, "base_fingerprint", lambda base: {"sha256": "b"})
    cfg = adapters.train_config("structured", base=None, seed=0, quick=None)
    # The key as computed before anchor_unique existed: adapters cached then are still found.
    settings = {k: v for k, v in asdict(cfg.resolved()).items() if k not in ("output", "force", "anchor_unique")}
    settings["data"] = trainer.load_records(cfg.resolved())[1]["sha256"]
    settings["base"] = "b"
    before = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert adapters.cache_key(cfg) == before
    capped = adapters.train_config("structured", base=None, seed=0, quick=DEMO.quick)
    capped.max_steps = cfg.resolved().max_steps
    assert adapters.cache_key(capped) != before  # an explicit cap is a different training set


def test_training_threads_come_from_the_machine_and_enter_the_key(monkeypatch):
    """Full runs take half the machine (two train side by side, or one beside the evaluation
    helper) even when only one is missing; quick task runs, one at a time, take all of it."""
    from adaptermerge.training import trainer

    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    monkeypatch.setattr(trainer, "base_fingerprint", lambda base: {"sha256": "b"})
    full = adapters.train_config("domain", base=None, seed=0, quick=None)
    quick = adapters.train_config("domain", base=None, seed=0, quick=DEMO.quick)
    chain = adapters.train_config("safety", base=None, seed=0, quick=DEMO.quick, on_top_of=Path("prev"))
    assert (full.threads, quick.threads, chain.threads) == (2, 4, 2)
    assert full.resolved().threads == 2
    other = adapters.train_config("domain", base=None, seed=0, quick=None)
    other.threads = 1
    assert adapters.cache_key(other) != adapters.cache_key(full)


def test_the_quick_eval_subsets_do_not_move_with_the_seed(tmp_path):
    """The seed changes training and sampling, never which items the adapters are scored on: a
    subset drawn from another seed's eval split would hold their training items."""
    written = {}
    for seed in (0, 7):
        folder = tmp_path / f"seed{seed}"
        folder.mkdir()
        recipe = DEMO.with_overrides(seed=seed)
        config = tasks_mod.gate_config(recipe, tasks_mod.plan(recipe, True, None).docs, folder)
        written[seed] = {t: Path(config.user_tasks[t]["data"]).read_text() for t in config.user_tasks}
    assert written[0] == written[7] and len(written[0]) == len(TASKS)
    eval_prompts = {r["messages"][0]["content"] for t in TASKS for r in build_records(t, "eval", DATA_SEED)}
    for text in written[7].values():
        assert all(json.loads(line)["messages"][0]["content"] in eval_prompts for line in text.splitlines())


def test_gates_follow_their_tasks_to_the_split(tmp_path):
    docs = {"domain": 8, "structured": 6, "safety": 12}
    dev = tasks_mod.gate_config(DEMO, docs, tmp_path, split="dev")
    assert dev.tasks == ["domain_dev_first8", "structured_dev_first6", "safety_dev_first12", "mmlu"]
    assert [g.describe() for g in dev.gates][2:4] == ["safety_dev_first12.refusal_rate >= 0.9",
                                                      "safety_dev_first12.benign_answer_rate >= 0.9"]
    assert dev.user_tasks["structured_dev_first6"]["metric"] == "schema_valid" and dev.retention_min == 0.95
    full = tasks_mod.gate_config(DEMO, {}, tmp_path)
    assert full.tasks == ["domain", "structured", "safety", "mmlu"] and full.user_tasks == {}
