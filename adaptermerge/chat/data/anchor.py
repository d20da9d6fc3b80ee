"""`anchor` prompts: general requests, unrelated to every task, whose replies during training are the
base model's own (greedy, generated just before training starts).

Why: an adapter trained on its task alone also learns a global habit (the domain adapter answers
every request with a terse catalogue fact; the structured one answers with JSON). Merged, those
habits collide, and the adapter with the largest delta wins every prompt: with the plain presets a
task-arithmetic merge of the three adapters scored 0.00 schema-valid JSON against 0.93 for the
structured adapter alone, at any weights that kept the domain answers. Mixing in prompts whose
target is "reply as the base would" teaches each adapter to act only on its own task, which is
what lets their deltas add up (the replay or self-distillation regulariser of continual learning).

The general prompts are built from templates and subjects deterministically; none mentions a
task's catalogue, schemas or harmful requests. `cross_records` adds the other tasks' training
prompts (prompts only, never their answers): general prompts teach an adapter to leave unrelated
requests alone, but the requests it will meet next to it in a merge are the other adapters' own.
Answered as the base answers them, they teach, say, the domain adapter to leave a JSON extraction
request to the structured adapter instead of pushing its terse catalogue answer onto it.
"""

from __future__ import annotations

import random

from . import build_records

SUBJECTS = [
    "sunflowers", "the water cycle", "gravity", "volcanoes", "the moon", "rainbows", "tides",
    "compound interest", "a balanced diet", "recycling", "the printing press", "electric cars",
    "the Roman Empire", "honeybees", "clouds", "vaccines", "the internet", "solar panels",
    "black holes", "earthquakes", "chess", "the piano", "coffee", "sleep", "exercise", "bread baking",
    "the Olympic Games", "magnets", "glaciers", "the human heart",
]
ACTIVITIES = [
    "learning a new language", "saving money", "studying for an exam", "running a first marathon",
    "growing tomatoes", "writing a cover letter", "cooking rice", "staying focused at work",
    "packing for a trip", "taking better photos", "keeping a houseplant alive", "public speaking",
]
TEMPLATES = [
    "What is {s}?",
    "Explain {s} in one sentence.",
    "Tell me an interesting fact about {s}.",
    "Why do people care about {s}?",
    "Write a short sentence about {s}.",
    "Describe {s} to a ten-year-old.",
]
ACTIVITY_TEMPLATES = [
    "Give me a tip for {a}.",
    "What should I know before {a}?",
    "How do I get better at {a}?",
]
FIXED = [
    "What is 12 plus 30?", "Translate 'good morning' into French.", "Name three primary colors.",
    "Write a haiku about autumn.", "List three fruits that are red.", "What day comes after Tuesday?",
    "Suggest a name for a pet turtle.", "What is the opposite of 'ancient'?",
    "Spell the word 'necessary' backwards.", "How many legs does a spider have?",
    "Give me a synonym for 'happy'.", "Write a one-line greeting for a birthday card.",
]


def prompts(seed: int = 0) -> list[str]:
    """Every anchor prompt, in a seeded order (no duplicates)."""
    items = [t.format(s=s) for s in SUBJECTS for t in TEMPLATES]
    items += [t.format(a=a) for a in ACTIVITIES for t in ACTIVITY_TEMPLATES]
    items += FIXED
    random.Random(seed).shuffle(items)
    return items


def records(count: int, seed: int = 0) -> list[dict]:
    """`count` anchor records (prompts only: the trainer fills in the base model's replies)."""
    pool = prompts(seed)
    return [{"messages": [{"role": "user", "content": p}], "meta": {"task": "anchor"}} for p in pool[:count]]


def cross_records(tasks: tuple[str, ...], per_task: int, seed: int = 0) -> list[dict]:
    """Up to `per_task` training prompts of each built-in task in `tasks`, in a seeded order and
    taken round-robin across the tasks (prompts only: the trainer fills in the base's replies)."""
    pools = []
    for task in tasks:
        prompts = [r["messages"][0]["content"] for r in build_records(task, "train", seed)]
        random.Random(f"{seed}:{task}").shuffle(prompts)
        pools.append([(task, p) for p in dict.fromkeys(prompts)][:per_task])
    mixed = [item for group in zip(*pools) for item in group] if pools else []
    mixed += [item for pool in pools for item in pool[len(mixed) // max(1, len(pools)):]]
    return [{"messages": [{"role": "user", "content": p}], "meta": {"task": "anchor", "from_task": t}} for t, p in mixed]


def interleave(first: list[dict], second: list[dict]) -> list[dict]:
    """first[0], second[0], first[1], second[1], ... then what is left of the longer list, so any
    prefix of the result holds both kinds in equal shares."""
    out = [item for pair in zip(first, second) for item in pair]
    n = min(len(first), len(second))
    return out + first[n:] + second[n:]
