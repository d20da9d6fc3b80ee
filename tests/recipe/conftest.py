"""A tiny random Llama (hidden 64: bitsandbytes' CPU NF4 matmul needs in_features >= its block of 64; 2 layers) with the embedded base's tokenizer, a private
adaptermerge cache (so a recipe trains its adapters for real) and one torch thread."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import save_tiny_chat_model


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    return save_tiny_chat_model(tmp_path_factory.mktemp("tiny_recipe_base"), hidden=64, intermediate=128)


