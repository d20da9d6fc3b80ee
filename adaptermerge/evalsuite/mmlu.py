"""MMLU documents from a local copy in the `cais/mmlu` CSV layout, or from the hub when online.

Layout: DIR/test/<subject>_test.csv and DIR/dev/<subject>_dev.csv, header
`question,choice0,choice1,choice2,choice3,answer` with `answer` the 0-3 index of the right choice.

The prompts are lm-eval's MMLU prompts: per subject the description "The following are questions
(with answers) about <subject>.\n\n", then `shots` dev examples, then the question; `cloze` is
lm-eval's `mmlu_continuation` (the choices' texts are scored), `letter` is its `mmlu` (the letters
A-D are scored). All subjects go into one lm-eval task, so the description and the few-shot
examples of each question's own subject are precomputed into the document's `prefix` field.
"""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

from ..errors import AdapterMergeError

DATA_ENV = "ADAPTERMERGE_MMLU_DATA"
HUB_ID = "cais/mmlu"
FORMATS = ("cloze", "letter")
LETTERS = ("A", "B", "C", "D")
HEADER = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]
# Below this many parameters a model answers letter-format MMLU at chance ("A" every time).
CLOZE_BELOW_PARAMS = 1_000_000_000


def resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    """The local MMLU folder: the argument, else $ADAPTERMERGE_MMLU_DATA, else None (the hub)."""
    value = data_dir or os.environ.get(DATA_ENV)
    if not value:
        return None
    path = Path(value).expanduser()
    if not (path / "test").is_dir():
        raise AdapterMergeError(f"MMLU data folder {path} has no test/ subfolder (expected the cais/mmlu CSV layout)")
    return path


def choose_format(fmt: str, n_params: int) -> str:
    """`auto` gives cloze for models under CLOZE_BELOW_PARAMS parameters, letter above."""
    if fmt == "auto":
        return "cloze" if n_params < CLOZE_BELOW_PARAMS else "letter"
    if fmt not in FORMATS:
        raise AdapterMergeError(f"unknown MMLU format {fmt!r}: expected auto, cloze or letter")
    return fmt


def read_csv(path: Path) -> list[dict]:
    """Rows of one subject file as {question, choices[4], answer:int}; a bad row names its line."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != HEADER:
            raise AdapterMergeError(f"{path}: header {reader.fieldnames} is not {','.join(HEADER)}")
        for row in reader:
            try:
                answer = int(row["answer"])
            except (TypeError, ValueError):
                answer = -1
            if answer not in range(4):
                raise AdapterMergeError(f"{path} line {reader.line_num}: answer must be 0-3, got {row['answer']!r}")
            rows.append({"question": row["question"], "choices": [row[f"choice{i}"] for i in range(4)], "answer": answer})
    return rows


def read_split(data_dir: Path, split: str) -> dict[str, list[dict]]:
    """{subject: rows} of the `test` or `dev` split of a local copy."""
    folder = data_dir / split
    files = sorted(folder.glob(f"*_{split}.csv"))
    if not files:
        raise AdapterMergeError(f"{folder} holds no <subject>_{split}.csv files")
    return {f.name[: -len(f"_{split}.csv")]: read_csv(f) for f in files}


def read_hub(split: str) -> dict[str, list[dict]]:
    """{subject: rows} of cais/mmlu from the hub (online only)."""
    import datasets  # heavy, and an lm-eval dependency (the eval extra)

    try:
        data = datasets.load_dataset(HUB_ID, "all", split=split)
    except Exception as exc:  # offline, or no access
        why = (str(exc).strip().splitlines() or [""])[0][:200]
        raise AdapterMergeError(f"cannot load {HUB_ID} from the hub ({type(exc).__name__}{': ' + why if why else ''}): "
                                "pass --mmlu-data DIR with a local copy") from None
    out: dict[str, list[dict]] = {}
    for row in data:
        out.setdefault(row["subject"], []).append({"question": row["question"], "choices": list(row["choices"]), "answer": int(row["answer"])})
    return out


def sample(rows: list[dict], limit: int | None, seed: int, subject: str) -> list[dict]:
    """`limit` rows of a subject chosen with a fixed seed, in file order (all rows when limit is None)."""
    if limit is None or limit >= len(rows):
        return rows
    keep = sorted(random.Random(f"mmlu-{seed}-{subject}").sample(range(len(rows)), limit))
    return [rows[i] for i in keep]


def pick_subjects(names: list[str], count: int | None) -> list[str]:
    """`count` of `names`, evenly spaced (every third of 57 for 19), all when count is None or larger."""
    if count is None or count >= len(names):
        return names
    return [names[i * len(names) // count] for i in range(count)]


def question_text(row: dict, fmt: str) -> str:
    if fmt == "cloze":
        return f"Question: {row['question'].strip()}\nAnswer:"
    options = "".join(f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, row["choices"]))
    return f"{row['question'].strip()}{options}\nAnswer:"


def options(row: dict, fmt: str) -> list[str]:
    return list(row["choices"]) if fmt == "cloze" else list(LETTERS)


def description(subject: str) -> str:
    return f"The following are questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def mmlu_docs(data_dir: str | Path | None, *, limit: int | None = None, shots: int = 0, fmt: str = "cloze", seed: int = 0,
              subjects: int | None = None, split: str = "test") -> list[dict]:
    """One document per question: {id, subject, text, options, answer, prefix}.

    `split`: the questions come from "test", or from "dev" (5 per subject) for choosing settings on
    questions the reported score does not use; dev takes no few-shot examples, which come from it.

    `subjects`: only that many of the 57 subjects, evenly spaced in alphabetical order (all when None).

    `prefix` = the subject description + `shots` dev examples (lm-eval's first_n sampler), each
    "question answer\\n\\n" as lm-eval renders few-shot examples.
    """
    if fmt not in FORMATS:
        raise AdapterMergeError(f"unknown MMLU format {fmt!r}: expected cloze or letter")
    if limit is not None and limit < 1:
        raise AdapterMergeError(f"--mmlu-limit must be at least 1, got {limit}")
    if shots < 0 or shots > 5:
        raise AdapterMergeError(f"--mmlu-shots must be 0-5 (the dev split has 5 per subject), got {shots}")
    if split not in ("test", "dev"):
        raise AdapterMergeError(f"unknown MMLU split {split!r}: expected test or dev")
    if split == "dev" and shots:
        raise AdapterMergeError(f"MMLU questions from the dev split take no few-shot examples (they come from it), got {shots} shots")
    folder = resolve_data_dir(data_dir)
    test = read_split(folder, split) if folder else read_hub(split)
    dev = (read_split(folder, "dev") if folder else read_hub("dev")) if shots else {}
    if subjects is not None and subjects < 1:
        raise AdapterMergeError(f"MMLU subjects must be at least 1, got {subjects}")
    docs = []
    for subject in pick_subjects(sorted(test), subjects):
        examples = dev.get(subject, [])[:shots]
        if len(examples) < shots:
            raise AdapterMergeError(f"MMLU dev split has {len(examples)} rows for {subject}, fewer than --mmlu-shots {shots}")
        prefix = description(subject) + "".join(
            f"{question_text(ex, fmt)} {options(ex, fmt)[ex['answer']]}\n\n" for ex in examples
        )
        for row in sample(test[subject], limit, seed, subject):
            docs.append({"id": len(docs), "subject": subject, "text": question_text(row, fmt),
                         "options": options(row, fmt), "answer": row["answer"], "prefix": prefix})
    return docs
