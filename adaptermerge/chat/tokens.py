"""Chat records as token ids for a causal LM, with the loss on the assistant reply only."""

from __future__ import annotations

from ..errors import AdapterMergeError

IGNORE = -100  # label of tokens that carry no loss (prompt, padding)


def tokenize_record(tokenizer, record: dict, max_length: int, min_reply_tokens: int = 0) -> tuple[list[int], list[int]] | None:
    """input_ids and labels (IGNORE on the prompt) for one record, cut to max_length tokens, or to
    the prompt plus `min_reply_tokens` reply tokens where that is longer.

    The prompt and the reply are tokenized separately and joined, so the loss boundary falls exactly
    where the chat template opens the assistant turn. None when nothing of the reply fits.
    """
    messages = record["messages"]
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise AdapterMergeError("the chat template renders the prompt differently inside the full conversation")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    reply_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    max_length = max(max_length, len(prompt_ids) + min_reply_tokens)
    ids = (prompt_ids + reply_ids)[:max_length]
    labels = ([IGNORE] * len(prompt_ids) + reply_ids)[:max_length]
    if all(label == IGNORE for label in labels):
        return None
    return ids, labels


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int):
    """Right-padded tensors: input_ids, attention_mask, labels, each [batch, longest]."""
    import torch  # heavy: only when batches are built

    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (row_ids, row_labels) in enumerate(rows):
        ids[i, : len(row_ids)] = torch.tensor(row_ids)
        mask[i, : len(row_ids)] = 1
        labels[i, : len(row_labels)] = torch.tensor(row_labels)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
