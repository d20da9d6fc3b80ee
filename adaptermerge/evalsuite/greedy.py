"""Greedy generation for many requests at once, each with its own length limit and stop strings.

lm-eval's HFLM generates one batch per distinct set of generation settings, and HF `generate`
runs a batch until its slowest row is done, computing the finished rows too. For a small model on
the CPU a decoding step of a few rows costs far more than their share (every step reads all the
weights; the vocabulary projection alone is memory-bound), so fewer, fuller steps and no work on
finished rows is what saves time. Here rows from different tasks share batches, and a row leaves
its batch (and its KV cache) as soon as it is done: eos, its own `max_new` tokens, or one of its
stop strings in the decoded text. The text each row ends with is the one HF `generate` gives after lm-eval cuts it
at the first stop string: a row only ever stops at or before the point HF would, and never
before its text holds a stop string, eos or the limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .kvcache import cache_kwargs, returned_cache

# A prompt (or an MMLU context or choice, fastlm.py) shorter than this fraction of its bucket's
# longest starts a bucket of its own: a bucket is padded to its longest.
PAD_FILL = 0.75


@dataclass
class Row:
    """One request: its prompt token ids, the most tokens to generate, and its stop strings."""

    ids: list[int]
    max_new: int
    stops: list[str]


def batches(rows: list[Row], size: int) -> list[list[int]]:
    """Row indices in batches of at most `size`, longest prompt first."""
    order = sorted(range(len(rows)), key=lambda i: (-len(rows[i].ids), i))
    return [order[start : start + size] for start in range(0, len(order), size)]


def buckets(lengths: list[int]) -> list[list[int]]:
    """Positions in `lengths` (longest first) cut where a prompt is shorter than PAD_FILL of its
    bucket's longest: each bucket's prompt pass costs rows x its longest prompt."""
    out: list[list[int]] = []
    for i, n in enumerate(lengths):
        if out and n >= PAD_FILL * lengths[out[-1][0]]:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def is_done(tokens: list[int], row: Row, eos: set[int], decode: Callable[[list[int]], str]) -> bool:
    """Whether a row with `tokens` generated so far stops here."""
    if tokens[-1] in eos or len(tokens) >= row.max_new:
        return True
    stops = [s for s in row.stops if s]
    if not stops:
        return False
    text = decode(tokens)
    return any(s in text for s in stops)


@torch.no_grad()
def generate(model, rows: list[Row], *, batch_size: int, pad_id: int, eos: set[int],
             decode: Callable[[list[int]], str], logits_to_keep: bool = True,
             on_batch: Callable[[int], None] | None = None) -> list[list[int]]:
    """The greedy continuation (token ids, eos included when reached) of every row, in input order."""
    out: list[list[int]] = [[] for _ in rows]
    for idx in batches(rows, batch_size):
        for i, tokens in zip(idx, _generate_batch(model, [rows[i] for i in idx], pad_id, eos, decode, logits_to_keep)):
            out[i] = tokens
        if on_batch is not None:
            on_batch(len(idx))
    return out


def _prefill(model, prompts: list[list[int]], pad_id: int, logits_to_keep: bool):
    """One left-padded prompt pass: (cache, attention mask, last positions [B, 1], last logits [B, V])."""
    device = model.device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, prompt in enumerate(prompts):  # every prompt ends at the last column
        ids[b, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[b, width - len(prompt):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    keep = {"logits_to_keep": 1} if logits_to_keep else {}
    result = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                   use_cache=True, **keep)
    return returned_cache(result), mask.to(device), positions[:, -1:].to(device), result.logits[:, -1]


def _joinable(cache) -> bool:
    from transformers.cache_utils import DynamicCache, DynamicLayer  # heavy: this module loads without transformers

    return type(cache) is DynamicCache and all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None]))


def _join(parts):
    """The prompt passes of several buckets as one batch: each cache is left-padded with masked
    (zero) positions to the widest, which is what left padding of its prompts would have given."""
    caches, masks, lasts, logits = zip(*parts)
    width = max(m.shape[1] for m in masks)
    joined = caches[0]
    for layer, *others in zip(joined.layers, *(c.layers for c in caches[1:])):
        group = [layer, *others]
        pads = [width - m.shape[1] for m in masks]
        layer.keys = torch.cat([F.pad(l.keys, (0, 0, p, 0)) for l, p in zip(group, pads)])
        layer.values = torch.cat([F.pad(l.values, (0, 0, p, 0)) for l, p in zip(group, pads)])
    mask = torch.cat([F.pad(m, (width - m.shape[1], 0)) for m in masks])
    return joined, mask, torch.cat(lasts), torch.cat(logits)


def _generate_batch(model, rows: list[Row], pad_id: int, eos: set[int], decode, logits_to_keep: bool) -> list[list[int]]:
    device = model.device
    parts = [_prefill(model, [rows[i].ids for i in b], pad_id, logits_to_keep) for b in buckets([len(r.ids) for r in rows])]
    if len(parts) > 1 and not all(_joinable(p[0]) for p in parts):
        parts = [_prefill(model, [r.ids for r in rows], pad_id, logits_to_keep)]  # a cache type not known here
    cache, mask, last, logits = parts[0] if len(parts) == 1 else _join(parts)
    generated: list[list[int]] = [[] for _ in rows]
    active = [b for b, row in enumerate(rows) if row.max_new > 0]
    if len(active) < len(rows):
        sel = torch.tensor(active, device=device)
        cache.batch_select_indices(sel)
        mask, last, logits = mask[sel], last[sel], logits[sel]
    while active:
        # float32 argmax, as HF's greedy search does
        chosen = logits.float().argmax(-1)
        still = []
        for j, (b, token) in enumerate(zip(active, chosen.tolist())):
            generated[b].append(token)
            if not is_done(generated[b], rows[b], eos, decode):
                still.append(j)
        if not still:
            break
        if len(still) < len(active):
            sel = torch.tensor(still, device=device)
            cache.batch_select_indices(sel)
            mask, last, chosen = mask[sel], last[sel], chosen[sel]
            active = [active[j] for j in still]
        mask = torch.cat([mask, mask.new_ones((len(active), 1))], 1)
        last = last + 1
        result = model(input_ids=chosen.unsqueeze(1), attention_mask=mask, position_ids=last,
                       use_cache=True, **cache_kwargs(cache))
        cache, logits = returned_cache(result), result.logits[:, -1]
    return generated
