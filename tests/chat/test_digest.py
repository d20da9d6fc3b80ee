"""The content hashes that identify training data, adapter weights and base models."""

from __future__ import annotations

import json

import pytest

from adaptermerge.chat.digest import model_fingerprint, sha256_text, weights_digest
from adaptermerge.errors import AdapterMergeError
from adaptermerge.fileio import sha256_file


def test_weights_digest_follows_the_safetensors_files_only(tmp_path):
    (tmp_path / "adapter_model.safetensors").write_bytes(b"weights")
    (tmp_path / "README.md").write_text("a card")
    before = weights_digest(tmp_path)
    (tmp_path / "README.md").write_text("another card")
    assert weights_digest(tmp_path) == before
    (tmp_path / "adapter_model.safetensors").write_bytes(b"other weights")
    assert weights_digest(tmp_path) != before


def test_model_fingerprint_of_one_file_many_files_and_the_embedded_base(tmp_path):
    with pytest.raises(AdapterMergeError, match="holds no safetensors"):
        model_fingerprint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"one")
    assert model_fingerprint(tmp_path) == {"sha256": sha256_file(tmp_path / "model.safetensors"), "hashed": "model.safetensors"}
    (tmp_path / "model-2.safetensors").write_bytes(b"two")
    digests = "".join(sha256_file(tmp_path / f) for f in ("model-2.safetensors", "model.safetensors"))
    assert model_fingerprint(tmp_path)["sha256"] == sha256_text(digests)
    (tmp_path / "adaptermerge_base.json").write_text(json.dumps({"gguf_sha256": "abc", "gguf": "base.gguf"}))
    assert model_fingerprint(tmp_path) == {"sha256": "abc", "hashed": "base.gguf"}
