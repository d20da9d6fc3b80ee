"""What gets evaluated: the base model, an adapter folder (on its base), or a merged model folder.

A candidate's identity for the results cache is a hash of its weight files (and, for an adapter,
of its base), so renaming or copying a folder does not trigger a new evaluation and changing a
single weight does. File hashes are memoized by (path, size, mtime) under the cache folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .. import base as base_mod
from ..errors import AdapterMergeError
from ..fileio import hf_folder, read_json_object, write_text_atomic
from ..validate import quote

BASE_NAMES = ("base", "embedded")


@dataclass(frozen=True)
class Candidate:
    """kind: "base" | "adapter" | "merged". `base` names the base model (adapter, base kinds);
    `task` is the task an adapter was trained for (its training.json), if known."""

    name: str
    kind: str
    path: Path | None
    base: str | None = None
    task: str | None = None
    on_top_of: Path | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "path": str(self.path) if self.path else None,
                "base": self.base, "task": self.task}


def base_candidate(base: str | None) -> Candidate:
    return Candidate("base", "base", None, base=base)


def resolve_candidate(spec: str, base: str | None = None) -> Candidate:
    """A candidate from a command-line argument: "base", an adapter folder or a merged model folder.

    An adapter is evaluated on `base` when given, else on its adapter_config's base_model_name_or_path.
    """
    if spec in BASE_NAMES:
        return base_candidate(base)
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise AdapterMergeError(f"candidate {quote(spec)} is not a folder (expected an adapter folder, a merged model folder, or 'base')")
    name = path.resolve().name
    if (path / "adapter_config.json").exists():
        # Checked before PEFT sees it: safetensors weights only (PEFT would torch.load an
        # adapter_model.bin), and no FIFO or device among the files it opens.
        hf_folder(path, "adapter folder", stem="adapter_model", config="adapter_config.json")
        config = read_json_object(path / "adapter_config.json", "adapter config")
        training = read_json_object(path / "training.json", "training record") if (path / "training.json").exists() else {}
        on_top = training.get("on_top_of")
        for key, value in (("on_top_of", on_top), ("task", training.get("task"))):
            if value is not None and not isinstance(value, str):
                raise AdapterMergeError(f"{path / 'training.json'}: \"{key}\" must be a string, got {quote(value)}")
        if base is None and not isinstance(config.get("base_model_name_or_path"), (str, type(None))):
            raise AdapterMergeError(
                f"{path / 'adapter_config.json'}: \"base_model_name_or_path\" must be a string, "
                f"got {quote(config['base_model_name_or_path'])}"
            )
        return Candidate(name, "adapter", path, base=base or config.get("base_model_name_or_path"),
                         task=training.get("task"), on_top_of=Path(on_top) if on_top else None)
    if (path / "config.json").exists():
        hf_folder(path, "merged model folder")
        return Candidate(name, "merged", path, base=base)
    raise AdapterMergeError(f"{path} holds neither adapter_config.json (an adapter) nor config.json (a merged model)")


# ---------------------------------------------------------------- identity

def _hash_memo_path() -> Path:
    return base_mod.cache_dir() / "eval" / "file_hashes.json"


def file_hash(path: Path) -> str:
    """sha256 of a file, memoized by (absolute path, size, mtime)."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    memo_path = _hash_memo_path()
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, json.JSONDecodeError):
        memo = {}
    if key not in memo:
        memo[key] = base_mod.sha256_file(path)
        write_text_atomic(memo_path, json.dumps(memo))
    return memo[key]


def _folder_hash(folder: Path, patterns: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for pattern in patterns:
        for f in sorted(folder.glob(pattern)):
            h.update(f"{f.name}:{file_hash(f)}\n".encode())
    return h.hexdigest()


_WEIGHTS = ("config.json", "*.safetensors")


def content_hash(candidate: Candidate) -> str:
    """Hash of everything that determines the candidate's outputs (weights, configs, its base)."""
    if candidate.kind == "base":
        return _folder_hash(base_mod.resolve_base(candidate.base), _WEIGHTS)[:24]
    if candidate.kind == "merged":
        return _folder_hash(candidate.path, _WEIGHTS)[:24]
    h = hashlib.sha256(_folder_hash(candidate.path, ("adapter_config.json", "*.safetensors")).encode())
    h.update(content_hash(base_candidate(candidate.base)).encode())
    if candidate.on_top_of is not None:
        h.update(content_hash(resolve_candidate(str(candidate.on_top_of), candidate.base)).encode())
    return h.hexdigest()[:24]


# ---------------------------------------------------------------- loading

def _apply_adapter(model, folder: Path):
    # Folded into the weights: the same function, and evaluation runs at the base model's speed.
    # base.load_adapter checks the folder holds safetensors weights before PEFT opens it.
    return base_mod.load_adapter(model, folder).merge_and_unload()


def load(candidate: Candidate, reference_tokenizer_from: str | None = None, dtype: str = "float32"):
    """(model, tokenizer) in eval mode; safetensors only. An adapter is folded into its base in float32
    first, then the model is cast to `dtype` (a quantized merged folder keeps its quantization)."""
    # heavy: only when a model is loaded
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if candidate.kind == "merged":
        hf_folder(candidate.path, "merged model folder")  # a Candidate built in Python skips resolve_candidate
        model = AutoModelForCausalLM.from_pretrained(candidate.path, dtype=torch.float32, use_safetensors=True)
        has_tokenizer = any((candidate.path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
        tokenizer_src = candidate.path if has_tokenizer else base_mod.resolve_base(candidate.base or reference_tokenizer_from)
    else:
        folder = base_mod.resolve_base(candidate.base)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True)
        if candidate.kind == "adapter":
            if candidate.on_top_of is not None:
                model = _apply_adapter(model, candidate.on_top_of)
            model = _apply_adapter(model, candidate.path)
        tokenizer_src = folder
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_src)
    if getattr(model, "hf_quantizer", None) is None:  # a quantized folder stays where bitsandbytes put it
        model = model.to(device=eval_device(), dtype=getattr(torch, dtype))
    model.eval()
    return model, tokenizer


def eval_device() -> str:
    """Where models are evaluated: this process's GPU when there is one (a launcher's process
    takes the one its LOCAL_RANK names), else the CPU."""
    import torch  # heavy: only when a model is loaded

    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0') or 0) % torch.cuda.device_count()}"
