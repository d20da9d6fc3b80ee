"""`domain`: knowledge injection about a fictional manga catalogue the base model cannot know.

Each title has five facts (author, start year of serialization, genre, volume count, publisher).
Questions come in templates; the train split uses TRAIN_TEMPLATES, the eval split asks every fact
once with one of EVAL_TEMPLATES, phrasings the training split never shows, and the dev split asks
every fact with the other one (the facts are necessarily the same: they are what the adapter learns). Answers are the bare value
("Aokaze Comics.", "12 volumes."); scoring checks the value (see evalsuite.metrics.score_domain).
The catalogue is small (12 titles, 60 facts, 240 training rows) so that a QLoRA run on 2 CPU cores
sees every fact several times within 10 minutes.
"""

from __future__ import annotations

import random

N_TITLES = 12

_TITLE_A = ["Crimson", "Silent", "Paper", "Hollow", "Lunar", "Iron", "Velvet", "Frozen", "Golden", "Midnight",
            "Broken", "Hidden", "Electric", "Wandering", "Sunken", "Glass", "Scarlet", "Quiet", "Burning", "Distant"]
_TITLE_B = ["Lantern", "Orchard", "Harbor", "Comet", "Shrine", "Garden", "Tide", "Compass", "Meadow", "Clocktower",
            "Kite", "Lighthouse", "Cathedral", "Moth", "Citadel", "Ferry", "Mirror", "Violin", "Atlas", "Caravan"]
_FIRST = ["Aiko", "Haruto", "Rin", "Sota", "Mei", "Daichi", "Yuna", "Kaito", "Hina", "Ren", "Sakura", "Takumi",
          "Nao", "Kenji", "Emi", "Riku", "Yui", "Shun", "Mio", "Kota"]
_LAST = ["Morimura", "Tsukishiro", "Kagawa", "Hoshino", "Amamiya", "Kurosaki", "Fujimura", "Shiraishi", "Nagase",
         "Takebayashi", "Minase", "Okuda", "Sawamura", "Ichikawa", "Hayashida", "Kirishima", "Tachibana", "Yumeno"]
GENRES = ["horror", "romance", "mystery", "science fiction", "sports", "comedy", "fantasy", "historical drama"]
PUBLISHERS = ["Kumoriya Shoten", "Hoshizora Press", "Aokaze Comics", "Tsubame House", "Gekko Publishing",
              "Minamo Books"]

FIELDS = ("author", "year", "genre", "volumes", "publisher")

# {t} is the title. Train and eval phrasings never overlap.
TRAIN_TEMPLATES = {
    "author": ["Who wrote the manga {t}?", "Who is the author of {t}?", "Name the creator of the manga {t}.",
               "{t} was written by whom?"],
    "year": ["When did {t} begin serialization?", "In what year did the manga {t} start?",
             "What year was {t} first serialized?", "{t} started running in which year?"],
    "genre": ["What genre is {t}?", "Which genre does the manga {t} belong to?", "What kind of story is {t}?",
              "{t} is a manga of which genre?"],
    "volumes": ["How many volumes does {t} have?", "How many volumes were published of {t}?",
                "What is the volume count of the manga {t}?", "{t} runs for how many volumes?"],
    "publisher": ["Who publishes {t}?", "Which company published the manga {t}?", "What is the publisher of {t}?",
                  "{t} is published by which house?"],
}
EVAL_TEMPLATES = {
    "author": ["Tell me the name of the person who created {t}.", "Which mangaka is behind {t}?"],
    "year": ["The serialization of {t} started in what year?", "Give the first year of serialization for {t}."],
    "genre": ["Tell me the genre of the manga {t}.", "Into which genre would you put {t}?"],
    "volumes": ["Tell me how many volumes {t} consists of.", "What is the total number of volumes of {t}?"],
    "publisher": ["Tell me which publisher released {t}.", "Which publishing house is behind {t}?"],
}
# Bare values keep replies (and generation at eval time) short.
ANSWERS = {"author": "{v}.", "year": "{v}.", "genre": "{v}.", "volumes": "{v} volumes.", "publisher": "{v}."}


def catalogue(seed: int = 0, n_titles: int = N_TITLES) -> list[dict]:
    """The fictional catalogue for `seed`: distinct titles and authors, facts drawn at random."""
    rng = random.Random(f"domain-catalogue-{seed}")
    titles = rng.sample([f"{a} {b}" for a in _TITLE_A for b in _TITLE_B], n_titles)
    authors = rng.sample([f"{f} {l}" for f in _FIRST for l in _LAST], n_titles)
    return [
        {
            "title": title,
            "author": author,
            "year": str(rng.randint(1975, 2021)),
            "genre": rng.choice(GENRES),
            "volumes": str(rng.randint(2, 60)),
            "publisher": rng.choice(PUBLISHERS),
        }
        for title, author in zip(titles, authors)
    ]


def _record(entry: dict, field: str, question: str) -> dict:
    value = entry[field]
    return {
        "messages": [
            {"role": "user", "content": question.format(t=entry["title"])},
            {"role": "assistant", "content": ANSWERS[field].format(t=entry["title"], v=value)},
        ],
        "meta": {"task": "domain", "title": entry["title"], "field": field, "answer": value},
    }


def build(split: str, seed: int = 0) -> list[dict]:
    entries = catalogue(seed)
    # dev replays the eval split's draws, so each of its questions is the phrasing eval did not take.
    rng = random.Random(f"domain-{'eval' if split == 'dev' else split}-{seed}")
    records = []
    for entry in entries:
        for field in FIELDS:
            if split == "train":
                records += [_record(entry, field, q) for q in TRAIN_TEMPLATES[field]]
            else:
                chosen = rng.choice(EVAL_TEMPLATES[field])
                if split == "dev":
                    chosen = next(q for q in EVAL_TEMPLATES[field] if q != chosen)
                records.append(_record(entry, field, chosen))
    rng.shuffle(records)
    return records
