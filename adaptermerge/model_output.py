"""Full merged model output: stream the base shard by shard, add each module's merged update,
write sharded safetensors with an index, copy config and tokenizer files.

Peak memory: one output shard buffer plus one module's tensors, whatever the model's size.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from .engine import MergePlan, Progress
from .errors import AdapterMergeError
from .fileio import atomic_dir
from .provenance import provenance

_UNITS = {"KB": 1e3, "MB": 1e6, "GB": 1e9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}
_SKIP_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt"}
_SKIP_NAMES = {"model.safetensors.index.json", "adaptermerge.json", "adaptermerge_base.json"}


def parse_size(size: str | int) -> int:
    if isinstance(size, int):
        return size
    text = str(size).strip().upper()
    for unit in sorted(_UNITS, key=len, reverse=True):
        if text.endswith(unit):
            try:
                return int(float(text[: -len(unit)]) * _UNITS[unit])
            except ValueError:
                break
    try:
        return int(text)
    except ValueError:
        raise AdapterMergeError(f"--shard-size {size!r}: expected a size such as 2GB or 500MB") from None


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def write_model(plan: MergePlan, out: str | Path, *, shard_size: str | int = "2GB", force: bool = False, progress: Progress | None = None, extra_meta: dict | None = None) -> Path:
    """Write base + merged update as a full model folder (loads with AutoModelForCausalLM)."""
    if plan.base_weights is None:
        raise AdapterMergeError("model output needs the base model's weights (internal: plan built without need_base)")
    limit = parse_size(shard_size)
    base = plan.base_weights
    targets = set(plan.modules)
    start = time.time()
    done = 0
    with atomic_dir(out, force=force) as tmp:
        buffer, size, files, weight_map = {}, 0, [], {}

        def flush():
            nonlocal buffer, size
            if buffer:
                name = f"part-{len(files):05d}.safetensors"
                save_file(buffer, str(tmp / name), metadata={"format": "pt"})
                files.append((name, list(buffer)))
            buffer, size = {}, 0

        for shard in base.shards:
            for key, tensor in base.shard_tensors(shard):
                module = key[: -len(".weight")] if key.endswith(".weight") else None
                if module in targets:
                    tensor = plan.merged_weight(module).to(dtype=tensor.dtype, device="cpu")
                    done += 1
                    if progress:
                        progress(done, len(targets), module)
                if size and size + _nbytes(tensor) > limit:
                    flush()
                buffer[key] = tensor.contiguous()
                size += _nbytes(tensor)
        flush()
        total = len(files)
        for i, (name, keys) in enumerate(files):
            final = f"model-{i + 1:05d}-of-{total:05d}.safetensors"
            (tmp / name).rename(tmp / final)
            weight_map.update({k: final for k in keys})
        total_size = sum((tmp / f).stat().st_size for f in set(weight_map.values()))
        (tmp / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total_size}, "weight_map": weight_map}, indent=2)
        )
        for item in base.folder.iterdir():
            if item.is_file() and item.suffix not in _SKIP_SUFFIXES and item.name not in _SKIP_NAMES:
                shutil.copy2(item, tmp / item.name)
        meta = provenance(plan, output="model", wall_s=time.time() - start, shards=total, **(extra_meta or {}))
        (tmp / "adaptermerge.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return Path(out)
