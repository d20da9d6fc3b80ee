"""Fixtures for the evaluation suite: a tiny random Llama with the embedded base's tokenizer (so chat
templates and lm-eval's tokenization run for real in seconds), a real PEFT adapter on it, and one
torch thread (the tests share two cores with other work; two threads there run many times slower)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from support import SHARED_MMLU, make_adapter


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from adaptermerge import base

    tokenizer = base.load_tokenizer()
    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=len(tokenizer), max_position_embeddings=1024, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_eval_base")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("tiny_eval_adapters") / "domain", seed=3, r=4, alpha=8)


@pytest.fixture(scope="session")
def mmlu_dir() -> Path:
    if not (SHARED_MMLU / "test").is_dir():
        pytest.skip(f"the shared MMLU copy is absent (expected {SHARED_MMLU}/test/<subject>_test.csv)")
    return SHARED_MMLU
