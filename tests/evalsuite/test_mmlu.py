"""The MMLU loader on the shared cais/mmlu CSV copy: counts, stratified sampling, lm-eval's prompts."""

from __future__ import annotations

import json

import pytest

from adaptermerge.errors import AdapterMergeError
from adaptermerge.evalsuite import mmlu


def test_reads_every_subject(mmlu_dir):
    test = mmlu.read_split(mmlu_dir, "test")
    dev = mmlu.read_split(mmlu_dir, "dev")
    assert len(test) == 57 and set(dev) == set(test)
    counts_file = mmlu_dir / "counts.json"
    if counts_file.is_file():  # the copy's own record: rows with commas, quotes and newlines parse as one row
        counts = json.loads(counts_file.read_text())
        assert {s: len(r) for s, r in test.items()} == counts["test"]
    assert all(len(rows) == 5 for rows in dev.values())
    row = test["anatomy"][0]
    assert len(row["choices"]) == 4 and row["answer"] in range(4)


def test_stratified_sample_is_fixed_by_seed(mmlu_dir):
    docs = mmlu.mmlu_docs(mmlu_dir, limit=3, fmt="cloze", seed=0)
    per_subject = {}
    for d in docs:
        per_subject[d["subject"]] = per_subject.get(d["subject"], 0) + 1
    assert len(docs) == 171 and set(per_subject.values()) == {3}
    assert [d["id"] for d in docs] == list(range(171))
    again = mmlu.mmlu_docs(mmlu_dir, limit=3, fmt="cloze", seed=0)
    other = mmlu.mmlu_docs(mmlu_dir, limit=3, fmt="cloze", seed=1)
    assert again == docs and [d["text"] for d in other] != [d["text"] for d in docs]


def test_a_subject_subset_is_evenly_spaced_and_keeps_the_per_subject_sample(mmlu_dir):
    every = mmlu.mmlu_docs(mmlu_dir, limit=1, fmt="cloze")
    names = sorted({d["subject"] for d in every})
    docs = mmlu.mmlu_docs(mmlu_dir, limit=1, fmt="cloze", subjects=19)
    assert [d["subject"] for d in docs] == names[::3]  # 57 subjects, every third
    by_subject = {d["subject"]: d["text"] for d in every}
    assert all(by_subject[d["subject"]] == d["text"] for d in docs)  # the same question per subject
    assert mmlu.mmlu_docs(mmlu_dir, limit=1, fmt="cloze", subjects=100) == every
    with pytest.raises(AdapterMergeError, match="subjects"):
        mmlu.mmlu_docs(mmlu_dir, limit=1, subjects=0)


def test_prompts_follow_lm_eval(mmlu_dir):
    cloze = mmlu.mmlu_docs(mmlu_dir, limit=1, fmt="cloze")[0]
    letter = mmlu.mmlu_docs(mmlu_dir, limit=1, fmt="letter")[0]
    assert cloze["prefix"] == "The following are questions (with answers) about abstract algebra.\n\n"
    assert cloze["text"].startswith("Question: ") and cloze["text"].endswith("\nAnswer:")
    assert letter["options"] == ["A", "B", "C", "D"]
    assert "\nA. " in letter["text"] and "\nD. " in letter["text"] and letter["text"].endswith("\nAnswer:")
    assert cloze["options"] != letter["options"] and cloze["answer"] == letter["answer"]
    five = mmlu.mmlu_docs(mmlu_dir, limit=1, shots=5, fmt="cloze")[0]
    examples = five["prefix"].split("\n\n")[1:-1]  # description, 5 examples, trailing empty
    assert len(examples) == 5 and all(e.startswith("Question: ") and "\nAnswer: " in e for e in examples)


def test_format_choice_and_bad_input(tmp_path, monkeypatch):
    assert mmlu.choose_format("auto", 135_000_000) == "cloze"
    assert mmlu.choose_format("auto", 7_000_000_000) == "letter"
    assert mmlu.choose_format("letter", 1) == "letter"
    with pytest.raises(AdapterMergeError, match="format"):
        mmlu.choose_format("essay", 1)
    (tmp_path / "test").mkdir()
    bad = tmp_path / "test" / "x_test.csv"
    bad.write_text("question,choice0,choice1,choice2,choice3,answer\nq,a,b,c,d,7\n")
    with pytest.raises(AdapterMergeError, match="line 2"):
        mmlu.mmlu_docs(tmp_path, limit=1)
    bad.write_text("q,a,b\n")
    with pytest.raises(AdapterMergeError, match="header"):
        mmlu.mmlu_docs(tmp_path)
    monkeypatch.setenv(mmlu.DATA_ENV, str(tmp_path))
    assert mmlu.resolve_data_dir(None) == tmp_path
    with pytest.raises(AdapterMergeError, match="test/"):
        mmlu.resolve_data_dir(tmp_path / "test")


def test_dev_split_questions_are_not_test_questions_and_take_no_shots(mmlu_dir):
    test = mmlu.mmlu_docs(mmlu_dir, limit=3, fmt="cloze")
    dev = mmlu.mmlu_docs(mmlu_dir, limit=3, fmt="cloze", split="dev")
    assert len(dev) == 171 and not {d["text"] for d in dev} & {d["text"] for d in test}
    assert len(mmlu.mmlu_docs(mmlu_dir, fmt="cloze", split="dev")) == 57 * 5
    with pytest.raises(AdapterMergeError, match="no few-shot"):
        mmlu.mmlu_docs(mmlu_dir, limit=1, shots=1, split="dev")
    with pytest.raises(AdapterMergeError, match="split"):
        mmlu.mmlu_docs(mmlu_dir, limit=1, split="validation")
