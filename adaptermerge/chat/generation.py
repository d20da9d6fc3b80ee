"""Batched greedy generation of assistant replies for chat records (the minimal scoring loop)."""

from __future__ import annotations

from typing import Callable

from .lmhead import contiguous_head_input

DEFAULT_MAX_NEW_TOKENS = 64


def prompt_messages(record: dict) -> list[dict]:
    """The conversation up to (not including) the final assistant turn."""
    messages = record["messages"]
    return messages[:-1] if messages and messages[-1]["role"] == "assistant" else messages


def generate_responses(
    model,
    tokenizer,
    records: list[dict],
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Greedy assistant replies to `records` (their prompt turns through the chat template).

    Batches are left-padded so every prompt ends where generation starts; records are processed
    in order of prompt length to waste less padding, and the replies come back in input order.
    `progress(done, total)` is called after each batch.
    """
    import torch  # heavy: only when replies are generated

    contiguous_head_input(model)
    prompts = [
        tokenizer.apply_chat_template(prompt_messages(r), tokenize=False, add_generation_prompt=True) for r in records
    ]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    replies: list[str] = [""] * len(prompts)
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            # The chat template already holds the special tokens.
            batch = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            batch = batch.to(model.device)
            with torch.inference_mode():
                out = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            new = out[:, batch["input_ids"].shape[1] :]  # [batch, new_tokens]
            for i, tokens in zip(idx, new):
                replies[i] = tokenizer.decode(tokens, skip_special_tokens=True).strip()
            if progress is not None:
                progress(min(start + batch_size, len(order)), len(order))
    finally:
        tokenizer.padding_side, tokenizer.pad_token = side, pad
        model.train(was_training)
    return replies
