"""Lazy access to a base model's weights, one tensor at a time (safe_open), across shards.

The folder is checked when it is opened, with one-line errors naming the file and key: config.json
a JSON object (and not quantized), the index's weight_map a mapping of tensor names to shard files
in the folder, every shard a regular file with a readable header that holds what the index says.
A weight a merge adds a delta to must be floating point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open

from . import validate
from .errors import AdapterMergeError
from .fileio import folder as checked_folder
from .fileio import read_json_object, regular_file

INDEX_NAME = "model.safetensors.index.json"
# safetensors dtypes a merged weight may have (the delta is added in float32 and cast back)
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


def _short(text) -> str:
    return validate.quote(text)[1:-1] if isinstance(text, str) else validate.quote(text)


class BaseWeights:
    """The safetensors weights of a base model folder, indexed but not loaded.

    `transform` (optional) maps a weight before it is returned, e.g. to dequant(NF4(W)) for
    merging QLoRA adapters onto the weights they were trained against.
    """

    def __init__(self, folder: str | Path, transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None):
        self.folder = checked_folder(Path(folder), "base model folder")
        self.transform = transform
        self.config = self._config()
        self._refuse_quantized()
        index = self.folder / INDEX_NAME
        if index.exists() or index.is_symlink():
            weight_map = self._weight_map(index)
            self.shards = sorted(set(weight_map.values()))
        else:
            weight_map = {}
            self.shards = sorted(p.name for p in self.folder.glob("*.safetensors"))
            if not self.shards:
                pickled = any(self.folder.glob("*.bin")) or any(self.folder.glob("*.pt"))
                hint = " (only pickled .bin weights: never read; convert the model to safetensors)" if pickled else ""
                raise AdapterMergeError(f"base model {self.folder}: no .safetensors weights{hint}")
        # Every shard's header, read once: (key, dtype, shape) in file order.
        self._layouts = {shard: self._header(shard) for shard in self.shards}
        self.location: dict[str, str] = {}
        for shard, layout in self._layouts.items():
            for key, _, _ in layout:
                self.location.setdefault(key, shard)
        self._dtypes = {key: dtype for layout in self._layouts.values() for key, dtype, _ in layout}
        held = {shard: {key for key, _, _ in layout} for shard, layout in self._layouts.items()}
        for key, shard in weight_map.items():
            if key not in held[shard]:
                raise AdapterMergeError(f"{index}: weight_map puts tensor {_short(key)} in {shard}, which does not hold it")
            self.location[key] = shard  # the index decides where a key stored twice is read

    # -- checks ----------------------------------------------------------------------------
    def _config(self) -> dict:
        path = self.folder / "config.json"
        if not (path.exists() or path.is_symlink()):
            return {}
        return read_json_object(path, "base model config")

    def _refuse_quantized(self) -> None:
        quant = self.config.get("quantization_config")
        if not quant:
            return
        method = quant.get("quant_method", "?") if isinstance(quant, dict) else None
        what = _short(method) if method is not None else f"quantization_config {validate.quote(quant)}"
        raise AdapterMergeError(
            f"base model {self.folder} is already quantized ({what}, config.json): "
            "merging reads full-precision weights (W0 for --merge-onto original, NF4 is redone for dequantized); "
            "pass the full-precision base with --base"
        )

    def _weight_map(self, index: Path) -> dict[str, str]:
        """The index's weight_map: tensor names to .safetensors files inside the folder."""
        data = read_json_object(index, "base model index")
        weight_map = data.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise AdapterMergeError(f"{index}: weight_map must be a non-empty mapping of tensor names to shard files, "
                                    f"got {validate.quote(weight_map)}")
        for key, shard in weight_map.items():
            if not isinstance(shard, str) or not shard.endswith(".safetensors") or "/" in shard or "\\" in shard or shard.startswith("."):
                raise AdapterMergeError(f"{index}: weight_map[{validate.quote(key)}] must name a .safetensors file in the folder, "
                                        f"got {validate.quote(shard)}")
        return weight_map

    def _header(self, shard: str) -> list[tuple[str, str, list[int]]]:
        path = regular_file(self.folder / shard, "base model shard")  # before safe_open: a FIFO would block it
        try:
            with safe_open(str(path), framework="pt") as f:
                return [(key, f.get_slice(key).get_dtype(), list(f.get_slice(key).get_shape())) for key in f.keys()]
        except (SafetensorError, OSError, ValueError, TypeError) as exc:
            raise AdapterMergeError(f"base model {path}: not a readable safetensors file ({_short(str(exc))})") from None

    # -- access ----------------------------------------------------------------------------
    def key_for(self, module: str) -> str:
        """The tensor holding `module`'s weight, which a merge adds a delta to: it must be floating point."""
        key = f"{module}.weight"
        if key not in self.location:
            raise AdapterMergeError(f"base model {self.folder} has no weight for module {module} (expected tensor {key})")
        if self._dtypes[key] not in FLOAT_DTYPES:
            raise AdapterMergeError(f"base model {self.folder / self.location[key]}: tensor {key} has dtype {_short(self._dtypes[key])}; "
                                    f"merging needs a floating-point weight ({', '.join(FLOAT_DTYPES)})")
        return key

    def shape(self, module: str) -> tuple[int, ...]:
        key = self.key_for(module)
        return next(tuple(shape) for k, _, shape in self._layouts[self.location[key]] if k == key)

    def weight(self, module: str, device: str | torch.device = "cpu") -> torch.Tensor:
        w = self.tensor(self.key_for(module))
        if self.transform is not None:
            w = self.transform(module, w)
        return w.to(device)

    def shard_layout(self, shard: str) -> list[tuple[str, str, list[int]]]:
        """(key, safetensors dtype such as "F32", shape) of each tensor of one shard, in file order."""
        return list(self._layouts[shard])

    def tensor(self, key: str) -> torch.Tensor:
        """One stored tensor as it is on disk (no transform).

        The file is opened per tensor: safe_open maps the whole shard, and pages read through a
        mapping held open for a whole shard stay in the process's resident memory.
        """
        path = self.folder / self.location[key]
        try:
            with safe_open(str(path), framework="pt") as f:
                return f.get_tensor(key)
        except (SafetensorError, OSError) as exc:  # data cut short past a valid header, a file changed since
            raise AdapterMergeError(f"base model {path}: cannot read tensor {_short(key)} ({_short(str(exc))})") from None

    def shard_tensors(self, shard: str):
        """Yield (key, tensor) of one shard in file order, one tensor at a time."""
        for key, _, _ in self.shard_layout(shard):
            yield key, self.tensor(key)
