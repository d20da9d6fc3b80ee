"""Calibration statistics for activation-aware merges (RegMean): each module's input Gram matrix.

For a linear layer `y = W x`, adapter i's Gram at that layer is `G_i = mean over tokens of x x^T`
[in, in], with x the layer's inputs while the model *with adapter i folded in* reads adapter i's
calibration records (the whole chat, prompt and reply, teacher-forced; padding excluded). The mean
(not the sum) makes every adapter count the same whatever its records' lengths.

Calibration records come from, per adapter: a JSONL file of chat records given by the user, else
the training data its `training.json` records (a built-in task's training split, or the user
file it was trained on). `size` records are drawn from them (seeded). Grams of an adapter stored
in a file are cached under `cache_dir()/grams/`, keyed by the base, the adapter's weights, the
records and the settings, so a sweep over weights computes them once.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import random
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from . import base as base_mod
from .adapter import Adapter
from .chat.data import DATA_SEED, build_records
from .chat.digest import model_fingerprint, sha256_text, weights_digest
from .chat.records import jsonl_text, read_jsonl
from .chat.tokens import collate, tokenize_record
from .errors import AdapterMergeError
from .fileio import atomic_file, read_json_object, sha256_file

log = logging.getLogger(__name__)

GRAMS_VERSION = 2  # bump when what a cached Gram file holds changes
BATCH_ROWS = 8
PROGRESS_LABEL = "calibration Grams"  # gram_store's progress labels start with it (the demo shows them on their own bar)


@dataclass(frozen=True)
class Calibration:
    """One adapter's calibration records and where they came from."""

    records: list[dict]
    source: str  # a file path, or "built-in <task> train split (seed S)"
    sha256: str


def _sample(records: list[dict], size: int, seed: int, label: str) -> list[dict]:
    if size < 1:
        raise AdapterMergeError(f"calib_size must be a positive integer, got {size}")
    if len(records) <= size:
        return records
    pick = sorted(random.Random(f"calibration:{seed}:{label}").sample(range(len(records)), size))
    return [records[i] for i in pick]


def _described(records: list[dict], source: str) -> Calibration:
    if not records:
        raise AdapterMergeError(f"calibration data {source}: no records")
    return Calibration(records, source, sha256_text(jsonl_text(records)))


def from_file(path: str | Path, size: int, seed: int) -> Calibration:
    """`size` records of a JSONL file of chat records ({"messages": [...]} per line)."""
    records = read_jsonl(path)
    return _described(_sample(records, size, seed, str(path)), str(Path(path).resolve()))


def from_training(adapter: Adapter, size: int, seed: int) -> Calibration:
    """`size` records of the data the adapter was trained on, as its training.json records it."""
    summary = None
    if adapter.source is not None:
        summary = (adapter.source if adapter.source.is_dir() else adapter.source.parent) / "training.json"
    hint = "pass calibration data for it (--calib FILE.jsonl: chat records like its training data)"
    if summary is None or not (summary.exists() or summary.is_symlink()):
        raise AdapterMergeError(f"adapter {adapter.name}: no training.json beside it naming its training data; {hint}")
    data = read_json_object(summary, "training summary").get("data")
    if not isinstance(data, dict) or not isinstance(data.get("path") or data.get("task"), str):
        raise AdapterMergeError(f"{summary}: expected adaptermerge's training summary with a 'data' entry; {hint}")
    if data.get("built_in"):
        records = build_records(data["task"], data.get("split", "train"), data.get("seed", 0))
        source = f"built-in {data['task']} {data.get('split', 'train')} split (seed {data.get('seed', 0)})"
        return _described(_sample(records, size, seed, source), source)
    path = Path(data.get("path") or "")
    if not path.is_file():
        raise AdapterMergeError(f"adapter {adapter.name}: its training data {path} (from {summary}) is not here; {hint}")
    return from_file(path, size, seed)


def from_task(task: str, size: int, seed: int) -> Calibration:
    """`size` records of a built-in task's train split: the records `from_training` draws for an
    adapter trained on that task's built-in data (so the Grams cached for one serve the other)."""
    source = f"built-in {task} train split (seed {DATA_SEED})"
    return _described(_sample(build_records(task, "train", DATA_SEED), size, seed, source), source)


def resolve(adapters: list[Adapter], files: list[str | None] | None, size: int, seed: int) -> list[Calibration]:
    """Each adapter's calibration: its file in `files` (None or "" = its training data)."""
    files = list(files) if files else [None] * len(adapters)
    if len(files) != len(adapters):
        raise AdapterMergeError(f"calib: got {len(files)} files for {len(adapters)} adapters; give one per adapter (an empty entry uses that adapter's training data)")
    return [from_file(f, size, seed) if f else from_training(a, size, seed) for a, f in zip(adapters, files)]


# ---------------------------------------------------------------- collecting Grams

def _tokenized(tokenizer, records: list[dict], max_length: int) -> list[tuple[list[int], list[int]]]:
    rows = [row for row in (tokenize_record(tokenizer, r, max_length) for r in records) if row is not None]
    if not rows:
        raise AdapterMergeError("calibration records: none has a reply to read")
    return rows


def fold_adapter(model, adapter: Adapter) -> None:
    """Add the adapter's deltas to the model's weights in place (plain LoRA)."""
    if adapter.is_dora:
        raise AdapterMergeError(f"adapter {adapter.name} is DoRA: activation-aware merges take plain LoRA adapters")
    named = dict(model.named_modules())
    with torch.no_grad():
        for module in adapter.modules:
            if module not in named:
                raise AdapterMergeError(f"module {module} of adapter {adapter.name}: no such module in the base model")
            weight = named[module].weight
            weight += adapter.factors(module).delta().to(weight.dtype)


def _forward_kwargs(model, named: dict, modules: list[str]) -> dict:
    """Only the layers' inputs are read, not the logits: ask for the last position's logits alone
    (a full [batch, tokens, vocab] projection is a third of a small model's forward and, at 8 x 512
    tokens and SmolLM2's 49152 words, an 800 MB float32 tensor). Not when the output head is a
    module whose inputs are wanted, nor for a model whose forward has no `logits_to_keep`."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or any(named.get(m) is head for m in modules):
        return {}
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def collect_grams(model, tokenizer, records: list[dict], modules: list[str], *, max_length: int = 512,
                  progress=None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(grams, alias): `grams[key]` is mean x x^T over the records' real tokens [in, in] (float32),
    and `alias[module]` names the key of each module's Gram. Modules that read the same input
    (q/k/v, gate/up) share one Gram: stored once, computed once per batch.
    progress(done, total) follows the batches.
    """
    named = dict(model.named_modules())
    missing = [m for m in modules if m not in named]
    if missing:
        raise AdapterMergeError(f"module {missing[0]}: no such module in the base model")
    sums: dict[str, torch.Tensor] = {}
    alias: dict[str, str] = {}
    # q/k/v (and gate/up) are called one after another on the very same tensor: the last input
    # is kept (a reference, so its memory cannot be reused by another tensor meanwhile) and a
    # module called on it again shares its Gram.
    state: dict = {"mask": None, "last": None, "owner": None}

    def hook(module_name):
        def fn(_module, args):
            x = args[0]
            if x is not state["last"]:
                state.update(last=x, owner=module_name)
                rows = x[state["mask"]].to(torch.float32)  # [tokens, in]
                gram = (rows.T @ rows).double()
                sums[module_name] = gram if module_name not in sums else sums[module_name] + gram
            alias.setdefault(module_name, state["owner"])
            if alias[module_name] != state["owner"]:
                raise AdapterMergeError(f"module {module_name}: its input changed between calibration batches")
        return fn

    handles = [named[m].register_forward_pre_hook(hook(m)) for m in modules]
    tokens = 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = sorted(_tokenized(tokenizer, records, max_length), key=lambda row: len(row[0]))  # similar lengths share a batch
    extra = _forward_kwargs(model, named, modules)
    batches = range(0, len(rows), BATCH_ROWS)
    try:
        with torch.inference_mode():
            for n, i in enumerate(batches):
                batch = collate(rows[i : i + BATCH_ROWS], pad)
                mask = batch["attention_mask"].bool()
                state.update(mask=mask, last=None, owner=None)
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **extra)
                tokens += int(mask.sum())
                if progress:
                    progress(n + 1, len(batches))
    finally:
        for h in handles:
            h.remove()
    unread = [m for m in modules if m not in alias]
    if unread:
        raise AdapterMergeError(f"module {unread[0]}: the model never called it while reading the calibration records")
    return {k: (s / tokens).float() for k, s in sums.items()}, alias


class GramStore:
    """Each adapter's Grams, one safetensors file per adapter (computed once, or read from the
    cache), read one module at a time. `grams(module)` -> one [in, in] float32 tensor per adapter."""

    def __init__(self, files: list[Path], keep=None, sources: list[dict] | None = None):
        self.files = files
        self.sources = sources or []
        self._keep = keep  # a TemporaryDirectory holding files of in-memory adapters
        self._alias = [json.loads(_metadata(f)["alias"]) for f in files]
        # a merge method's per-Gram results while modules sharing the Gram still need them (regmean's systems)
        self.memo: dict = {}
        self.lock = threading.Lock()
        modules = {m for alias in self._alias for m in alias}
        self._sharing = Counter(self.key(m) for m in modules)

    def key(self, module: str) -> tuple:
        """Which Gram each adapter has at `module`: equal keys, equal Grams (q/k/v share one)."""
        return tuple(alias.get(module) for alias in self._alias)

    def sharing(self, module: str) -> int:
        """How many modules read the Grams `module` reads (3 for q/k/v)."""
        return self._sharing[self.key(module)]

    def describe(self) -> list[dict]:
        """Per adapter: where its calibration records came from (recorded in adaptermerge.json)."""
        return self.sources

    def grams(self, module: str, device: str | torch.device = "cpu") -> list[torch.Tensor]:
        out = []
        for f, alias in zip(self.files, self._alias):
            if module not in alias:
                raise AdapterMergeError(f"module {module}: no calibration Gram in {f}")
            with safe_open(str(f), framework="pt", device=str(device)) as handle:
                out.append(handle.get_tensor(alias[module]))
        return out


def _metadata(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata() or {}


def _cache_file(base_fp: str, adapter: Adapter, calib: Calibration, modules: list[str], max_length: int) -> Path | None:
    if adapter.source is None:
        return None  # an in-memory adapter: nothing stable to key on
    weights = weights_digest(adapter.source) if adapter.source.is_dir() else sha256_file(adapter.source)
    scales = {m: adapter.specs[m].scale for m in modules if m in adapter.specs}  # alpha can come from --alpha
    key = json.dumps({"v": GRAMS_VERSION, "base": base_fp, "adapter": weights, "scales": scales, "records": calib.sha256,
                      "modules": modules, "max_length": max_length}, sort_keys=True)
    return base_mod.cache_dir() / "grams" / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.safetensors"


def _save(path: Path, grams: dict, alias: dict, calib: Calibration) -> None:
    with atomic_file(path) as tmp:
        save_file({k: g.contiguous() for k, g in grams.items()}, str(tmp),
                  metadata={"alias": json.dumps(alias), "source": calib.source, "records": str(len(calib.records))})


def gram_store(adapters: list[Adapter], calibrations: list[Calibration], base: str | None, modules: list[str], *,
               max_length: int = 512, fold: Adapter | None = None, progress=None,
               label: str = PROGRESS_LABEL) -> GramStore:
    """Compute (or reuse) each adapter's Grams at `modules` on its calibration records, with the
    adapter folded into the base, or `fold` instead (a merge of them: the inputs that merge sees).
    progress(done, total, label) counts records over all adapters (reused ones count at once).
    """
    from transformers import AutoTokenizer  # heavy: only when Grams are computed

    base_fp = model_fingerprint(base_mod.resolve_base(base))["sha256"]
    tokenizer = AutoTokenizer.from_pretrained(base_mod.resolve_base(base))
    files, keep, model = [], None, None
    sources = [{"adapter": a.name, "source": c.source, "records": len(c.records), "sha256": c.sha256}
               for a, c in zip(adapters, calibrations)]
    total, done = sum(len(c.records) for c in calibrations), 0
    for i, (adapter, calib) in enumerate(zip(adapters, calibrations)):
        path = _cache_file(base_fp, fold or adapter, calib, modules, max_length)
        if path is not None and path.is_file():
            log.info("calibration Grams of %s reused from %s", adapter.name, path)
            files.append(path)
            done += len(calib.records)
            if progress:
                progress(done, total, f"{label}: {adapter.name} (cached)")
            continue
        started = time.perf_counter()
        if model is None or fold is None:  # with `fold`, every adapter's records read the same model
            model = base_mod.load_model(base)
            model.eval()
            fold_adapter(model, fold or adapter)
        def tick(batches_done, batches, before=done, n=len(calib.records), name=adapter.name):
            if progress:
                progress(before + min(n, batches_done * BATCH_ROWS), total, f"{label}: {name}")

        grams, alias = collect_grams(model, tokenizer, calib.records, modules, max_length=max_length, progress=tick)
        done += len(calib.records)
        if fold is None:
            model = None
        if path is None:
            keep = keep or tempfile.TemporaryDirectory(prefix="adaptermerge-grams-")
            path = Path(keep.name) / f"{i}.safetensors"
        _save(path, grams, alias, calib)
        log.info("calibration Grams of %s: %d records in %.1f s", adapter.name, len(calib.records), time.perf_counter() - started)
        files.append(path)
    return GramStore(files, keep, sources)
