"""A tiny random Llama (hidden 32, 2 layers) saved with the embedded base's tokenizer, so the
trainer's chat-template path runs for real in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_chat_base(tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from adaptermerge import base

    tokenizer = base.load_tokenizer()
    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=len(tokenizer), max_position_embeddings=256, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_chat_base")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
