"""Lazy access to a base model's weights, one tensor at a time (safe_open), across shards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open

from .errors import AdapterMergeError


class BaseWeights:
    """The safetensors weights of a base model folder, indexed but not loaded.

    `transform` (optional) maps a weight before it is returned, e.g. to dequant(NF4(W)) for
    merging QLoRA adapters onto the weights they were trained against.
    """

    def __init__(self, folder: str | Path, transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None):
        self.folder = Path(folder)
        self.transform = transform
        self.config = self._config()
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.shards = sorted(set(weight_map.values()))
            self.location = dict(weight_map)
        else:
            shards = sorted(p.name for p in self.folder.glob("*.safetensors"))
            if not shards:
                pickled = any(self.folder.glob("*.bin")) or any(self.folder.glob("*.pt"))
                hint = " (only pickled .bin weights: never read; convert the model to safetensors)" if pickled else ""
                raise AdapterMergeError(f"base model {self.folder}: no .safetensors weights{hint}")
            self.shards, self.location = shards, {}
            for shard in shards:
                for key in self._keys(shard):
                    self.location[key] = shard
        if self.config.get("quantization_config"):
            raise AdapterMergeError(
                f"base model {self.folder} is already quantized ({self.config['quantization_config'].get('quant_method', '?')}): "
                "merging reads full-precision weights (W0 for --merge-onto original, NF4 is redone for dequantized); "
                "pass the full-precision base with --base"
            )

    def _config(self) -> dict:
        path = self.folder / "config.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def _keys(self, shard: str) -> list[str]:
        try:
            with safe_open(str(self.folder / shard), framework="pt") as f:
                return list(f.keys())
        except (SafetensorError, OSError) as exc:
            raise AdapterMergeError(f"base model {self.folder / shard}: not a readable safetensors file ({exc})") from None

    def key_for(self, module: str) -> str:
        key = f"{module}.weight"
        if key in self.location:
            return key
        raise AdapterMergeError(f"base model {self.folder} has no weight for module {module} (expected tensor {key})")

    def shape(self, module: str) -> tuple[int, ...]:
        key = self.key_for(module)
        with safe_open(str(self.folder / self.location[key]), framework="pt") as f:
            return tuple(f.get_slice(key).get_shape())

    def weight(self, module: str, device: str | torch.device = "cpu") -> torch.Tensor:
        key = self.key_for(module)
        with safe_open(str(self.folder / self.location[key]), framework="pt") as f:
            w = f.get_tensor(key)
        if self.transform is not None:
            w = self.transform(module, w)
        return w.to(device)

    def shard_layout(self, shard: str) -> list[tuple[str, str, list[int]]]:
        """(key, safetensors dtype such as "F32", shape) of each tensor of one shard, in file order."""
        with safe_open(str(self.folder / shard), framework="pt") as f:
            return [(key, f.get_slice(key).get_dtype(), list(f.get_slice(key).get_shape())) for key in f.keys()]

    def tensor(self, key: str) -> torch.Tensor:
        """One stored tensor as it is on disk (no transform).

        The file is opened per tensor: safe_open maps the whole shard, and pages read through a
        mapping held open for a whole shard stay in the process's resident memory.
        """
        with safe_open(str(self.folder / self.location[key]), framework="pt") as f:
            return f.get_tensor(key)

    def shard_tensors(self, shard: str):
        """Yield (key, tensor) of one shard in file order, one tensor at a time."""
        for key, _, _ in self.shard_layout(shard):
            yield key, self.tensor(key)
