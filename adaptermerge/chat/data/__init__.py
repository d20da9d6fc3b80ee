"""Built-in data sets, one builder module per task preset.

`build_records(task, split, seed)` is deterministic for a seed; the train, eval and dev splits never
share a user prompt. dev is for choosing settings (the demo's sweep picks its merge there), so that
the eval split's scores of the chosen merge are not a best-of-several on the documents reported.
Each record is `{"messages": [user, assistant], "meta": {...}}` where meta holds what scoring needs
for that task (`chat.records.META_KEYS`).
"""

from __future__ import annotations

from ...errors import AdapterMergeError
from . import domain, safety, structured

TASKS = ("domain", "structured", "safety")
# The seed the built-in data sets are generated with. It decides which items fall in the train and
# which in the eval split (and, for domain, the facts themselves), so an adapter must be evaluated on
# the eval split of the seed it was trained with: another seed's split shares safety prompts with
# this one's training split and asks domain facts it never saw. Training and evaluation default to it.
DATA_SEED = 0
SPLITS = ("train", "eval", "dev")
_BUILDERS = {"domain": domain.build, "structured": structured.build, "safety": safety.build}


def build_records(task: str, split: str = "train", seed: int = DATA_SEED) -> list[dict]:
    """The `split` ("train", "eval" or "dev") of the built-in data set for `task`, generated from `seed`."""
    if task not in _BUILDERS:
        raise AdapterMergeError(f"unknown task {task!r}: expected one of {', '.join(TASKS)}")
    if split not in SPLITS:
        raise AdapterMergeError(f"unknown split {split!r}: expected train, eval or dev")
    return _BUILDERS[task](split, seed)
