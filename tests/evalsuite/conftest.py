"""Fixtures for the evaluation suite: a tiny random Llama with the embedded base's tokenizer (so chat
templates and lm-eval's tokenization run for real in seconds), a real PEFT adapter on it, and one
torch thread (the tests share two cores with other work; two threads there run many times slower)."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import SHARED_MMLU, make_adapter, save_tiny_chat_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_chat_model(tmp_path_factory.mktemp("tiny_eval_base"))


@pytest.fixture(scope="session")
def tiny_adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("tiny_eval_adapters") / "domain", seed=3, r=4, alpha=8)


@pytest.fixture(scope="session")
def mmlu_dir() -> Path:
    if not (SHARED_MMLU / "test").is_dir():
        pytest.skip(f"the shared MMLU copy is absent (expected {SHARED_MMLU}/test/<subject>_test.csv)")
    return SHARED_MMLU
