"""A tiny random Llama (hidden 32, 2 layers) saved with the embedded base's tokenizer, so the
trainer's chat-template path runs for real in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import save_tiny_chat_model


@pytest.fixture(scope="session")
def tiny_chat_base(tmp_path_factory) -> Path:
    return save_tiny_chat_model(tmp_path_factory.mktemp("tiny_chat_base"), max_positions=256)
