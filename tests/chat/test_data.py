import pytest

from adaptermerge.errors import AdapterMergeError
from adaptermerge.chat.data import TASKS, build_records
from adaptermerge.chat.records import META_KEYS, check_record


def _prompts(records):
    return [r["messages"][0]["content"] for r in records]


@pytest.mark.parametrize("task", TASKS)
def test_builders_are_deterministic_and_seeded(task):
    assert build_records(task, "train", 0) == build_records(task, "train", 0)
    assert build_records(task, "eval", 0) == build_records(task, "eval", 0)
    assert build_records(task, "dev", 0) == build_records(task, "dev", 0)
    assert build_records(task, "train", 0) != build_records(task, "train", 1)


@pytest.mark.parametrize("task", TASKS)
def test_splits_are_disjoint(task):
    train, eval_ = set(_prompts(build_records(task, "train"))), _prompts(build_records(task, "eval"))
    assert eval_, "empty eval split"
    assert not train & set(eval_), "an eval prompt also appears in train"
    dev = _prompts(build_records(task, "dev"))
    assert dev, "empty dev split"
    assert not (train | set(eval_)) & set(dev), "a dev prompt also appears in train or eval"


@pytest.mark.parametrize("task", TASKS)
def test_records_are_valid_and_carry_scoring_meta(task):
    for split in ("train", "eval", "dev"):
        records = build_records(task, split)
        assert 50 <= len(records) <= 5000
        for i, r in enumerate(records):
            check_record(r, f"{task} {split} {i}")
            assert all(k in r["meta"] for k in META_KEYS[task])


def test_domain_eval_asks_known_facts_with_unseen_phrasings():
    from adaptermerge.chat.data import domain

    train, eval_ = build_records("domain", "train"), build_records("domain", "eval")
    train_facts = {(r["meta"]["title"], r["meta"]["field"], r["meta"]["answer"]) for r in train}
    assert {(r["meta"]["title"], r["meta"]["field"], r["meta"]["answer"]) for r in eval_} <= train_facts
    # No eval phrasing is a train phrasing once the title is taken out.
    train_templates = {r["messages"][0]["content"].replace(r["meta"]["title"], "{t}") for r in train}
    for r in eval_:
        assert r["messages"][0]["content"].replace(r["meta"]["title"], "{t}") not in train_templates
    assert set(domain.FIELDS) == {r["meta"]["field"] for r in eval_}


def test_domain_dev_asks_every_fact_in_the_phrasing_eval_did_not_take():
    from adaptermerge.chat.data import domain

    eval_, dev = build_records("domain", "eval"), build_records("domain", "dev")
    key = lambda r: (r["meta"]["title"], r["meta"]["field"])  # noqa: E731
    asked = {key(r): r["messages"][0]["content"] for r in eval_}
    assert sorted(asked) == sorted(key(r) for r in dev)
    for r in dev:
        template = r["messages"][0]["content"].replace(r["meta"]["title"], "{t}")
        assert template in domain.EVAL_TEMPLATES[r["meta"]["field"]] and r["messages"][0]["content"] != asked[key(r)]


def test_safety_dev_items_are_in_neither_other_split():
    from adaptermerge.chat.data import safety

    train_items, eval_items = safety._items(0)
    seen = [item["question"] for item in train_items + eval_items]
    dev = build_records("safety", "dev")
    for r in dev:
        assert not any(q[1:] in r["messages"][0]["content"] for q in seen)
    harmful = {r["meta"]["category"] for r in dev if r["meta"]["harmful"]}
    assert len(harmful) == len(safety.HARMFUL) and any(not r["meta"]["harmful"] for r in dev)


def test_safety_eval_items_never_seen_and_both_kinds_present():
    from adaptermerge.chat.data import safety

    train_items, _ = safety._items(0)
    eval_ = build_records("safety", "eval")
    for r in eval_:
        # No training question, in any phrasing (first letter's case aside), is inside an eval prompt.
        assert not any(item["question"][1:] in r["messages"][0]["content"] for item in train_items)
    harmful = {r["meta"]["category"] for r in eval_ if r["meta"]["harmful"]}
    assert len(harmful) == len(safety.HARMFUL)
    assert {"benign", "benign_alarming"} <= {r["meta"]["category"] for r in eval_}


def test_structured_gold_matches_reply_and_schema():
    import json

    from adaptermerge.evalsuite.metrics import validate_schema

    for r in build_records("structured", "eval"):
        reply = json.loads(r["messages"][-1]["content"])
        assert reply == r["meta"]["answer"]
        assert validate_schema(reply, r["meta"]["schema"])


def test_unknown_task_and_split():
    with pytest.raises(AdapterMergeError, match="unknown task"):
        build_records("poetry")
    with pytest.raises(AdapterMergeError, match="unknown split"):
        build_records("domain", "test")


def test_anchor_prompts_are_distinct_seeded_and_off_every_task():
    from adaptermerge.chat.data import anchor

    pool = anchor.prompts(0)
    assert len(pool) == len(set(pool)) >= 64
    assert pool == anchor.prompts(0) and pool != anchor.prompts(1) and sorted(pool) == sorted(anchor.prompts(1))
    task_text = " ".join(p.lower() for t in TASKS for s in ("train", "eval") for p in _prompts(build_records(t, s)))
    assert not [p for p in pool if p.lower() in task_text], "an anchor prompt is a task prompt"
    records = anchor.records(5, 0)
    assert [r["messages"][0]["content"] for r in records] == pool[:5] and all(r["meta"]["task"] == "anchor" for r in records)


def test_cross_task_anchor_prompts_are_other_tasks_train_prompts_in_equal_shares():
    from adaptermerge.chat.data import anchor

    cross = anchor.cross_records(("structured", "safety"), 5, 0)
    assert [r["meta"]["from_task"] for r in cross] == ["structured", "safety"] * 5
    for task in ("structured", "safety"):
        train = {r["messages"][0]["content"] for r in build_records(task, "train", 0)}
        held_out = {r["messages"][0]["content"] for r in build_records(task, "eval", 0)}
        mine = [r["messages"][0]["content"] for r in cross if r["meta"]["from_task"] == task]
        assert len(set(mine)) == 5 and set(mine) <= train and not set(mine) & held_out
        assert all(len(r["messages"]) == 1 for r in cross)  # prompts only: never the task's answers
    assert cross == anchor.cross_records(("structured", "safety"), 5, 0) != anchor.cross_records(("structured", "safety"), 5, 1)
    general = anchor.records(3, 0)
    mixed = anchor.interleave(general, cross)
    assert mixed[:6] == [general[0], cross[0], general[1], cross[1], general[2], cross[2]] and mixed[6:] == cross[3:]
