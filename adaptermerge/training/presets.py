"""Default hyperparameters per task preset.

Each preset is sized to reach its task's target within 10 minutes on 2 CPU cores. Measured on the
embedded base (idle machine, QLoRA, bfloat16 compute; eval splits scored greedy): domain 200 steps
in 350 s, exact match 0.88; safety 120 steps at lr 3e-3 in 278 s, refusal 0.93 and benign answers
0.91. Structured takes 80 steps: at 40 (138 s) a second training seed showed it fragile, schema-valid
0.95 at seed 0 but 0.65 at seed 1 (40 x 4 rows see 160 of its 400 rows, task and anchor, once); at
80 steps seeds 0 / 1 / 2 gave 1.000 / 0.933 / 0.917 (AMX Xeon, bfloat16, 162-167 s each with the
anchor replies cached).
Anchor rows (chat/data/anchor.py) cost single-task accuracy per step: without them domain reached
1.00 at 150 steps and safety 0.98 refusal at 100, but the adapters did not compose. Safety keeps a
smaller anchor share (0.1) and a higher learning rate: at 0.25 and 130 steps its refusal rate fell
to 0.86, at 0.1 and lr 2e-3 it stayed at 0.88.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import AdapterMergeError

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Preset:
    max_steps: int | None
    epochs: float | None
    lr: float
    rank: int
    alpha: float
    batch_size: int
    max_length: int
    # Replies needed to score the task: generation stops here.
    max_new_tokens: int = 64
    # Share of training rows that are anchor prompts answered as the base answers them
    # (chat/data/anchor.py): it keeps the adapter from acting outside its task, so merges compose.
    anchor_fraction: float = 0.0
    # Built-in tasks whose training prompts join the anchor prompts (answered as the base answers
    # them), `train --anchor-tasks`. Off in the presets: tried on all three, it made the
    # sums worse (every merge evaluated kept structured 0.00; task arithmetic 0.04 without), safety
    # fell below its target (refusal 0.857) and domain trained 9 % longer (640 s against 587 s).
    anchor_tasks: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "domain": Preset(max_steps=200, epochs=None, lr=3e-3, rank=16, alpha=32, batch_size=8, max_length=64, max_new_tokens=16, anchor_fraction=0.25),
    "structured": Preset(max_steps=80, epochs=None, lr=2e-3, rank=8, alpha=16, batch_size=4, max_length=192, max_new_tokens=72, anchor_fraction=0.25),
    "safety": Preset(max_steps=120, epochs=None, lr=3e-3, rank=8, alpha=16, batch_size=8, max_length=96, max_new_tokens=40, anchor_fraction=0.1),
    # User data: one pass over it by default.
    "custom": Preset(max_steps=None, epochs=1.0, lr=1e-3, rank=16, alpha=32, batch_size=4, max_length=512, max_new_tokens=128),
}


def preset(task: str) -> Preset:
    if task not in PRESETS:
        raise AdapterMergeError(f"unknown task {task!r}: expected one of {', '.join(PRESETS)}")
    return PRESETS[task]
