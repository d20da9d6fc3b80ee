"""The proxy weight search: per-adapter weights for task arithmetic, found from a cheap proxy
before any full evaluation (the recipe's `select: {weight_search: true}`).

A full evaluation of one merge (greedy generation on three eval splits, plus MMLU) costs minutes
on a CPU; the proxy costs seconds, and never looks at the eval splits the report scores:

- per task t, the teacher-forced loss L of the task's reference replies on a few of its *training*
  records, as proxy retention  r_t = (L_base - L_merge) / (L_base - L_single)  (1: the merge fits
  the task as well as the task's own adapter; the same shape as the report's retention);
- drift: the mean KL(base || merge) of the next-token distributions over general chat prompts
  (the anchor prompts), what MMLU and every other request should not feel.

The search maximises min_t min(r_t, 1) over the weights w of `task_arithmetic` (delta = sum_i w_i
delta_i), one task's weight at a time on a multiplicative grid, keeping a move only when it raises
that minimum and its drift stays within DRIFT_SLACK times the plain sum's (w = 1). Points are cheap
because every adapter sits in one PEFT model and a point only resets the LoRA scalings (task
arithmetic of plain LoRA adapters is exactly the sum of their scaled outputs): no merge, no reload.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .. import base as base_mod
from ..adapter import load_adapter
from ..chat.data import DATA_SEED, anchor, build_records
from ..chat.tokens import collate, tokenize_record
from ..errors import AdapterMergeError
from ..training.trainer import reply_loss

PER_TASK = 12  # training records per task scored at every point
QUICK_PER_TASK = 4
GENERAL_PROMPTS = 12
FACTORS = (0.7, 0.85, 1.2, 1.45)  # multipliers tried on one task's weight
ROUNDS = 2
DRIFT_SLACK = 1.5  # a point may drift at most this many times the plain sum's KL
WEIGHT_RANGE = (0.25, 3.0)


# ---------------------------------------------------------------- pure parts

def proxy_retention(loss_base: float, loss_single: float, loss_merge: float) -> float | None:
    """(L_base - L_merge) / (L_base - L_single); None when the single adapter gains nothing."""
    gain = loss_base - loss_single
    if not gain > 1e-6:
        return None
    return (loss_base - loss_merge) / gain


@dataclass(frozen=True)
class Point:
    weights: tuple[float, ...]
    retention: dict[str, float | None]
    drift: float

    @property
    def worst(self) -> float:
        kept = [min(r, 1.0) for r in self.retention.values() if r is not None]
        return min(kept) if kept else -math.inf

    def as_dict(self) -> dict:
        return {"weights": list(self.weights), "retention": self.retention, "drift_kl": self.drift, "worst": self.worst}


@dataclass
class SearchResult:
    best: Point
    start: Point
    trace: list[Point] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"best": self.best.as_dict(), "start": self.start.as_dict(), "points": len(self.trace),
                "trace": [p.as_dict() for p in self.trace], "seconds": round(self.seconds, 1),
                "proxy": "teacher-forced reply loss on training records; KL to the base on general prompts"}


def coordinate_search(score: Callable[[tuple[float, ...]], Point], n: int, *, factors=FACTORS, rounds: int = ROUNDS,
                      slack: float = DRIFT_SLACK, bounds=WEIGHT_RANGE) -> SearchResult:
    """From w = (1, ..., 1): for each weight in turn, try it times each factor; keep the best move
    that raises the worst retention within the drift budget; repeat `rounds` times (or until no
    move helps). `score(weights)` evaluates one point."""
    start = score(tuple([1.0] * n))
    budget = max(start.drift * slack, 1e-6)
    best, trace = start, [start]
    for _ in range(rounds):
        moved = False
        for i in range(n):
            tried = []
            for f in factors:
                w = list(best.weights)
                w[i] = round(w[i] * f, 4)
                if not bounds[0] <= w[i] <= bounds[1]:
                    continue
                p = score(tuple(w))
                trace.append(p)
                if p.drift <= budget:
                    tried.append(p)
            better = [p for p in tried if p.worst > best.worst + 1e-4]
            if better:
                best = max(better, key=lambda p: (p.worst, -p.drift))
                moved = True
        if not moved:
            break
    return SearchResult(best, start, trace)


# ---------------------------------------------------------------- the model side

def training_rows(tokenizer, tasks: list[str], per_task: int, seed: int) -> dict[str, list]:
    """Tokenized (ids, labels) of `per_task` training records of each built-in task, drawn with
    `seed` from the training split the adapters were trained on (never another seed's split, which
    would hold eval items)."""
    out = {}
    for task in tasks:
        records = build_records(task, "train", DATA_SEED)
        pick = random.Random(f"weightsearch:{seed}:{task}").sample(range(len(records)), min(per_task, len(records)))
        out[task] = [row for row in (tokenize_record(tokenizer, records[i], 1024) for i in sorted(pick)) if row is not None]
    return out


def general_batch(tokenizer, count: int, seed: int):
    texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False, add_generation_prompt=True)
             for r in anchor.records(count, seed)]
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


class AdapterStack:
    """The base with every adapter loaded into one PEFT model, all active; `set_weights` scales each
    adapter's LoRA output, so the model computes task arithmetic with those weights."""

    def __init__(self, base: str | None, adapters: dict[str, Path]):
        # Slow imports, only when the search runs.
        from peft.tuners.lora import LoraLayer
        from transformers import AutoModelForCausalLM, AutoTokenizer

        for name, path in adapters.items():
            if load_adapter(path).is_dora:  # reads the header only; bad folders fail with its clear errors
                raise AdapterMergeError(f"weight search: adapter {name} ({path}) is DoRA; the search covers plain LoRA adapters")
        folder = base_mod.resolve_base(base)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.names = list(adapters)
        first, *rest = self.names
        peft = base_mod.load_adapter(model, adapters[first], adapter_name=first)
        for name in rest:
            base_mod.add_adapter(peft, adapters[name], name)
        peft.base_model.set_adapter(self.names)
        peft.eval()
        self.model = peft
        self.layers = [m for m in peft.modules() if isinstance(m, LoraLayer)]
        self._scaling = [{n: layer.scaling[n] for n in self.names if n in layer.scaling} for layer in self.layers]

    def set_weights(self, weights: dict[str, float]) -> None:
        for layer, original in zip(self.layers, self._scaling):
            for name, s in original.items():
                layer.scaling[name] = s * weights.get(name, 0.0)


class ProxyScorer:
    """Scores weight vectors on one AdapterStack (see the module docstring)."""

    def __init__(self, stack: AdapterStack, tasks: list[str], *, per_task: int = PER_TASK,
                 general: int = GENERAL_PROMPTS, seed: int = 0):
        self.stack, self.tasks = stack, tasks
        tok = stack.tokenizer
        self.batches = {t: collate(rows, tok.pad_token_id) for t, rows in training_rows(tok, tasks, per_task, seed).items()}
        self.general = general_batch(tok, general, seed)
        zero = {n: 0.0 for n in stack.names}
        self.base_loss = self._losses(zero)
        with torch.inference_mode():
            stack.set_weights(zero)
            self.base_logp = self._general_logp()
        self.single_loss = {t: self._losses({t: 1.0}, only=t)[t] for t in tasks}

    def _losses(self, weights: dict[str, float], only: str | None = None) -> dict[str, float]:
        """Mean reply loss per task at `weights` (of task `only`, when given)."""
        self.stack.set_weights(weights)
        with torch.inference_mode():
            return {t: float(reply_loss(self.stack.model, b)) for t, b in self.batches.items() if only in (None, t)}

    def _general_logp(self):
        g = self.general
        logits = self.stack.model(input_ids=g["input_ids"], attention_mask=g["attention_mask"]).logits
        return torch.log_softmax(logits.float(), -1)

    def __call__(self, weights: tuple[float, ...]) -> Point:
        named = dict(zip(self.stack.names, weights))
        losses = self._losses(named)
        with torch.inference_mode():
            logp = self._general_logp()
        mask = self.general["attention_mask"].bool()
        kl = (self.base_logp.exp() * (self.base_logp - logp)).sum(-1)[mask].mean()
        retention = {t: proxy_retention(self.base_loss[t], self.single_loss[t], losses[t]) for t in self.tasks}
        return Point(tuple(weights), retention, float(kl))


def search_weights(base: str | None, adapters: dict[str, Path], *, seed: int = 0, per_task: int = PER_TASK,
                   rounds: int = ROUNDS, progress: Callable[[int, str], None] | None = None) -> SearchResult:
    """Task-arithmetic weights for `adapters` ({task: folder}, tasks among the built-in ones),
    in the order of `adapters`."""
    started = time.perf_counter()
    stack = AdapterStack(base, adapters)
    scorer = ProxyScorer(stack, list(adapters), per_task=per_task, seed=seed)
    count = [0]

    def score(weights):
        count[0] += 1
        p = scorer(weights)
        if progress is not None:
            progress(count[0], f"w={list(weights)} worst {p.worst:.2f}")
        return p

    result = coordinate_search(score, len(adapters), rounds=rounds)
    result.seconds = time.perf_counter() - started
    return result
