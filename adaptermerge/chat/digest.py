"""Content hashes that identify data and weights in training.json and in cache keys."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import AdapterMergeError
from ..fileio import sha256_file


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def weights_digest(folder: str | Path) -> str:
    """sha256 over an adapter folder's safetensors files (name and digest of each, in name order)."""
    h = hashlib.sha256()
    for f in sorted(Path(folder).glob("*.safetensors")):
        h.update(f"{f.name}:{sha256_file(f)}\n".encode())
    return h.hexdigest()


def model_fingerprint(folder: str | Path) -> dict:
    """How a base model folder is identified: its recorded GGUF sha256 for the embedded base, else
    the sha256 of its safetensors file (of the per-file digests in name order when sharded)."""
    folder = Path(folder)
    meta = folder / "adaptermerge_base.json"
    if meta.is_file():
        recorded = json.loads(meta.read_text())
        return {"sha256": recorded["gguf_sha256"], "hashed": recorded.get("gguf", "gguf")}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise AdapterMergeError(f"base model folder {folder} holds no safetensors weights")
    digests = [sha256_file(f) for f in files]
    if len(files) == 1:
        return {"sha256": digests[0], "hashed": files[0].name}
    return {"sha256": sha256_text("".join(digests)), "hashed": f"{len(files)} safetensors files (digest of digests)"}
