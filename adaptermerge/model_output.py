"""Full merged model output: stream the base shard by shard, add each module's merged update,
write sharded safetensors with an index, copy config and tokenizer files; optionally onto
dequant(NF4(W0)) (qlora) and re-quantized (quantize).

Peak memory: one module's tensors, whatever the model's or the shards' size (see stwriter.py).

engine.merge_to_model is the pipeline that uses it: check the options (ModelOutput), build the
plan, write_full_model. This module does not import the engine; a plan is whatever has the
attributes of ModelPlan.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from . import validate
from .adapter import max_abs
from .basemodel import BaseWeights
from .errors import AdapterMergeError
from .fileio import atomic_dir, check_destination
from .modelcard import model_card
from .progress import Progress, StageProgress
from .provenance import provenance
from .qlora import apply_merge_onto, check_merge_onto
from .quantization import check_compute_dtype, check_scheme, quantize_model, require_bitsandbytes
from .stwriter import DTYPES, StreamingSafetensors, nbytes

_UNITS = {"KB": 1e3, "MB": 1e6, "GB": 1e9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}
_SKIP_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt"}
_SKIP_NAMES = {"model.safetensors.index.json", "adaptermerge.json", "adaptermerge_base.json"}


# 1 PB: a shard size beyond any disk is a typo (and infGB or 1e400B no size at all)
MAX_SHARD = 10**15

# an output's `dtype` (mergekit's key): the adapter's factors, or a full model's floating-point weights
OUTPUT_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_SAFETENSORS_NAMES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}
_FLOAT_CODES = ("F64", "F32", "F16", "BF16")


def check_dtype(dtype, where: str = "dtype") -> str:
    """An output dtype name (float16, bfloat16, float32), or a one-line error naming `where`."""
    return validate.string(dtype, where, choices=tuple(OUTPUT_DTYPES))


def parse_size(size: str | int) -> int:
    """Bytes from a size such as 2GB, 500MB, 1.5GiB or a plain byte count: a positive, finite
    number up to 1 PB; anything else is a one-line error."""
    value = _size(size)
    if not 1 <= value <= MAX_SHARD:
        raise AdapterMergeError(f"--shard-size {validate.quote(size)}: expected a positive size up to 1PB, such as 2GB or 500MB")
    return value


def _size(size: str | int) -> int:
    bad = AdapterMergeError(f"--shard-size {validate.quote(size)}: expected a size such as 2GB or 500MB")
    if isinstance(size, bool) or not isinstance(size, (int, str)):
        raise bad
    if isinstance(size, int):
        return size
    text = size.strip().upper()
    number, scale = text, 1
    for unit in sorted(_UNITS, key=len, reverse=True):
        if text.endswith(unit):
            number, scale = text[: -len(unit)].strip(), _UNITS[unit]
            break
    try:
        value = float(number) * scale
    except ValueError:
        raise bad from None
    if not math.isfinite(value):  # inf, nan, 1e400
        raise bad
    return int(value)


class ModelPlan(Protocol):
    """The parts of an engine.MergePlan (built with need_base=True) that the writers use; the
    provenance they write reads its recorded fields (method, params, weights, seed...) as well."""

    adapters: list
    modules: list[str]
    base_weights: BaseWeights | None
    sources: tuple[Path, ...]  # inputs no output may overwrite
    device: torch.device
    method: object  # the merge method (its .name is recorded)

    def merged_weight(self, module: str) -> torch.Tensor: ...


@dataclass(frozen=True)
class ModelOutput:
    """Where and how a full merged model is written, checked when it is built (before any work).

    out: the folder; force: replace an existing one (never an input: see check_destination).
    shard_size: bytes, or a size such as "2GB" (kept as bytes). merge_onto: "original",
    "dequantized" or None (from the adapters' training.json; see adaptermerge.qlora).
    requantize: "nf4" or "int8" writes the model quantized with bitsandbytes; compute_dtype is then
    its matmul dtype (float32, bfloat16, float16), and must stay float32 without it.
    dtype: the floating-point weights' dtype in the shards (float16, bfloat16, float32; None: the
    base's own); not with requantize, whose compute_dtype plays that part.
    """

    out: Path
    force: bool = False
    shard_size: int | str = "2GB"
    merge_onto: str | None = None
    requantize: str | None = None
    compute_dtype: str = "float32"
    dtype: str | None = None

    def __post_init__(self):
        set_ = object.__setattr__  # frozen: normalized once, here
        set_(self, "out", Path(self.out))
        set_(self, "shard_size", parse_size(self.shard_size))
        set_(self, "merge_onto", check_merge_onto(self.merge_onto))
        if self.dtype is not None:
            check_dtype(self.dtype)
            if self.requantize is not None:
                raise AdapterMergeError(f"dtype {self.dtype} applies to an unquantized model; with --requantize the quantized "
                                        "model's compute dtype is --compute-dtype")
        if self.requantize is None:
            if self.compute_dtype != "float32":
                raise AdapterMergeError(
                    f"--compute-dtype {self.compute_dtype} applies to --requantize (the quantized model's compute dtype); "
                    "without it the model is written in float32"
                )
            return
        set_(self, "requantize", check_scheme(self.requantize))
        check_compute_dtype(self.compute_dtype)
        require_bitsandbytes()


def plan_shards(layout: list[tuple[str, str, list[int]]], limit: int) -> list[list[tuple[str, str, list[int]]]]:
    """Split (key, dtype, shape) entries, in order, into shards of at most `limit` bytes (a larger tensor alone)."""
    shards, current, size = [], [], 0
    for entry in layout:
        n = nbytes(entry[1], entry[2])
        if current and size + n > limit:
            shards.append(current)
            current, size = [], 0
        current.append(entry)
        size += n
    if current:
        shards.append(current)
    return shards


def write_model(plan: ModelPlan, out: str | Path, *, shard_size: str | int = "2GB", force: bool = False, progress: Progress | None = None,
                extra_meta: dict | None = None, dtype: str | None = None) -> Path:
    """Write base + merged update as a full model folder (loads with AutoModelForCausalLM), with
    adaptermerge.json and a model card (README.md). `dtype` (float16, bfloat16, float32) casts every
    floating-point tensor, and config.json says so; None keeps each tensor's dtype in the base.

    Every output shard's header is known from the base's headers, so tensors stream into the files
    one at a time: peak memory is a few copies of the largest weight, whatever the shard size.
    """
    if plan.base_weights is None:
        raise AdapterMergeError("model output needs the base model's weights (internal: plan built without need_base)")
    limit = parse_size(shard_size)
    base = plan.base_weights
    targets = set(plan.modules)
    start = time.time()
    done = 0
    layout = [entry for shard in base.shards for entry in base.shard_layout(shard)]
    for key, code, _ in layout:
        if code not in DTYPES:
            raise AdapterMergeError(f"base model {base.folder / base.location[key]}: tensor {validate.quote(key)} has dtype "
                                    f"{validate.quote(code)}, which the model writer does not copy ({', '.join(DTYPES)})")
    if dtype is not None:  # floating-point tensors in the dtype asked for; integer ones (if any) as they are
        wanted = _SAFETENSORS_NAMES[check_dtype(dtype)]
        layout = [(key, wanted if code in _FLOAT_CODES else code, shape) for key, code, shape in layout]
    shards = plan_shards(layout, limit)
    with atomic_dir(out, force=force, inputs=plan.sources) as tmp:
        weight_map = {}
        for i, entries in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            with StreamingSafetensors(tmp / name, entries, metadata={"format": "pt"}) as writer:
                for key, code, _ in entries:
                    module = key[: -len(".weight")] if key.endswith(".weight") else None
                    if module in targets:
                        tensor = plan.merged_weight(module).to(dtype=DTYPES[code], device="cpu")
                        if not math.isfinite(max_abs(tensor)):  # finite in float32, past a float16 base's range
                            whose = "the base's dtype" if dtype is None else "the dtype asked for"
                            raise AdapterMergeError(f"module {module}: the merged weight exceeds the range of {code}, {whose} "
                                                    f"for {key}: use smaller weights or inputs")
                        done += 1
                        if progress:
                            progress(done, len(targets), module)
                    else:
                        tensor = base.tensor(key)
                        if module is not None and base.transform is not None:
                            tensor = base.transform(module, tensor)  # e.g. dequant(NF4(W0)) for --merge-onto dequantized
                    writer.write(key, tensor.to(DTYPES[code]))
                    weight_map[key] = name
                    del tensor
        total = len(shards)
        # the tensors' bytes, as transformers writes it (the files also hold their headers)
        total_size = sum(math.prod(shape) * DTYPES[code].itemsize for _, code, shape in layout)
        (tmp / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total_size}, "weight_map": weight_map}, indent=2)
        )
        for item in base.folder.iterdir():
            if item.is_file() and item.suffix not in _SKIP_SUFFIXES and item.name not in _SKIP_NAMES:
                shutil.copy2(item, tmp / item.name)
        if dtype is not None:
            _set_config_dtype(tmp / "config.json", dtype)
        meta = provenance(plan, output="model", wall_s=time.time() - start, shards=total, **(extra_meta or {}),
                          **({"dtype": dtype} if dtype is not None else {}))
        (tmp / "adaptermerge.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
        (tmp / "README.md").write_text(model_card(meta))  # the base's own card (copied above) described another model
    return Path(out)


def _set_config_dtype(config: Path, dtype: str) -> None:
    """config.json's torch_dtype (and transformers 5's `dtype`) say what the shards hold, so that
    from_pretrained(dtype="auto") loads them as written."""
    if not config.is_file():
        return
    data = json.loads(config.read_text())
    if not isinstance(data, dict):
        return
    data["torch_dtype"] = dtype
    if "dtype" in data:
        data["dtype"] = dtype
    config.write_text(json.dumps(data, indent=2) + "\n")


def write_full_model(
    plan: ModelPlan,
    output: ModelOutput,
    *,
    progress: Progress | None = None,
    quantize_progress: StageProgress | None = None,
) -> dict:
    """Write the plan's merge as a full model as `output` says; returns adaptermerge.json's content.

    Chooses the weights the delta is added onto (qlora.apply_merge_onto, recorded in
    adaptermerge.json), then writes. With requantize the full-precision merge goes to a temp folder
    beside `out` and quantize_model moves the quantized folder in place at the end: a failure at any
    step leaves no `out` behind. quantize_progress(stage, done, total) follows the re-quantization.
    """
    out = output.out
    # here, before the minutes of writing, as well as where each folder is written
    check_destination(out, output.force, plan.sources)
    choice = apply_merge_onto(plan, output.merge_onto, output.requantize)
    extra_meta = {"merge_onto": choice}
    if output.requantize is None:
        write_model(plan, out, shard_size=output.shard_size, force=output.force, progress=progress, extra_meta=extra_meta,
                    dtype=output.dtype)
        return json.loads((out / "adaptermerge.json").read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.fp-", dir=out.parent))
    try:
        full = write_model(plan, scratch / "merged", shard_size=output.shard_size, progress=progress, extra_meta=extra_meta)
        quantize_model(full, out, output.requantize, compute_dtype=output.compute_dtype, device=str(plan.device), force=output.force,
                       progress=quantize_progress, source=f"merge ({plan.method.name}) before quantization", inputs=plan.sources)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return json.loads((out / "adaptermerge.json").read_text())
