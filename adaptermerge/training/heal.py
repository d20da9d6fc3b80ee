"""Heal: a short distillation after a merge, which uses training compute (not a data-free merge).

The merged adapter (the student) is trained for `steps` optimizer steps to reproduce, on each input
adapter's own training prompts, that adapter's reply, and on general anchor prompts the base's
reply. No labels are read: only prompts, the base and the adapters.

- Teacher for prompt p of task i: the full-precision base with adapter i folded in, its greedy
  reply (max_new_tokens of task i's preset, else 64), generated once and cached under
  cache_dir()/heal/ by base, adapter weights, prompts and length. Anchor prompts' teacher: the base
  itself (chat/data/anchor.py), so the heal keeps general behaviour, as the presets' anchors do.
- Hard labels (the teacher's greedy reply, sequence-level distillation) rather than a KL to the
  teacher's token distributions: the replies are generated once and the heal is then exactly the
  trainer's reply loss on chat records, with its batching, schedule, optimizer and accelerate path;
  a KL would need a teacher forward per adapter in every step (or a [tokens, 49k] cache per reply)
  and a second loss path. The tasks are scored on greedy replies, which is what is matched here.
- The student starts from the merge's factors (its ranks and alphas; TrainConfig.init_from) and
  trains in the trainer (QLoRA by default, as the presets train), so a heal is a short fine-tune
  of the merge, recorded as such: `metadata["heal"]` says steps, prompts, teacher and loss.
- Prompts come from where each adapter was trained (its training.json: a built-in task's train
  split, or the JSONL file it names), or from an explicit JSONL per adapter; an adapter with
  neither is refused before the merge runs.

Steps 0 returns the merge unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import base as base_mod
from .. import validate
from ..adapter import Adapter, LoraFactors, load_adapter
from ..calibration import fold_adapter
from ..chat.data import DATA_SEED, TASKS, build_records
from ..chat.data import anchor
from ..chat.digest import model_fingerprint, sha256_text
from ..chat.generation import DEFAULT_MAX_NEW_TOKENS, generate_responses, prompt_messages
from ..chat.records import jsonl_text, read_jsonl, write_jsonl
from ..errors import AdapterMergeError
from ..fileio import read_json_object, write_text_atomic
from .presets import PRESETS

log = logging.getLogger(__name__)

PROMPTS_PER_TASK = 64  # distinct prompts per adapter at most (seeded draw)
ANCHOR_PROMPTS = 32  # general prompts answered as the base answers them
ANCHOR_REPLY_TOKENS = 48
HINT = "pass --heal-prompts NAME=FILE.jsonl (chat records; only their prompts are read)"


@dataclass
class HealConfig:
    """The heal's settings. `prompts`: adapter name (or the task its training.json names) -> JSONL
    file of chat records whose prompts replace the adapter's training prompts."""

    steps: int
    prompts: dict[str, Path] = field(default_factory=dict)
    prompts_per_task: int = PROMPTS_PER_TASK
    anchor_prompts: int = ANCHOR_PROMPTS
    lr: float = 1e-3
    batch_size: int = 8
    max_length: int = 256
    seed: int = 0
    qlora: bool = True
    threads: int | None = None


def check_steps(steps, what: str = "--heal") -> int:
    """STEPS as an integer >= 0 (0: no heal)."""
    return validate.integer(steps, what, minimum=0, maximum=2**31 - 1)


@dataclass(frozen=True)
class TaskPrompts:
    """One adapter's heal prompts: records whose last assistant turn (if any) is dropped."""

    adapter: str
    records: list[dict]
    source: str
    max_new_tokens: int


def _training_summary(adapter: Adapter) -> dict | None:
    if adapter.source is None:
        return None
    path = (adapter.source if adapter.source.is_dir() else adapter.source.parent) / "training.json"
    return read_json_object(path, "training summary") if path.is_file() else None


def _sample(records: list[dict], size: int, seed: int, label: str) -> list[dict]:
    if len(records) <= size:
        return records
    pick = sorted(random.Random(f"heal:{seed}:{label}").sample(range(len(records)), size))
    return [records[i] for i in pick]


def resolve_prompts(adapters: list[Adapter], config: HealConfig) -> list[TaskPrompts]:
    """Each adapter's prompts: its explicit file, else its training data (training.json); refuses an
    adapter with neither, and an explicit entry that names no adapter. Cheap: runs before the merge."""
    summaries = {a.name: _training_summary(a) for a in adapters}
    tasks = {a.name: (s or {}).get("task") for a, s in zip(adapters, summaries.values())}
    explicit = {}
    for key, path in (config.prompts or {}).items():
        owners = [a.name for a in adapters if key in (a.name, tasks[a.name])]
        if len(owners) != 1:
            known = ", ".join(a.name for a in adapters)
            why = "names no input adapter" if not owners else f"matches {len(owners)} adapters"
            raise AdapterMergeError(f"--heal-prompts {key}: {why}; expected one of {known} (or the task its training.json names)")
        if not Path(path).is_file():
            raise AdapterMergeError(f"--heal-prompts {key}={path}: no such file; expected a JSONL file of chat records")
        explicit[owners[0]] = Path(path)
    out = []
    for adapter in adapters:
        summary, task = summaries[adapter.name], tasks[adapter.name]
        tokens = PRESETS[task].max_new_tokens if task in PRESETS and task != "custom" else DEFAULT_MAX_NEW_TOKENS
        if adapter.name in explicit:
            path = explicit[adapter.name]
            records, source = read_jsonl(path), str(path.resolve())
        else:
            data = (summary or {}).get("data")
            if not isinstance(data, dict):
                raise AdapterMergeError(f"adapter {adapter.label()}: no training.json beside it naming its training prompts; {HINT}")
            if data.get("built_in") and data.get("task") in TASKS:
                split, seed = data.get("split", "train"), data.get("seed", DATA_SEED)
                records, source = build_records(data["task"], split, seed), f"built-in {data['task']} {split} split (seed {seed})"
            elif isinstance(data.get("path"), str) and Path(data["path"]).is_file():
                records, source = read_jsonl(data["path"]), data["path"]
            else:
                raise AdapterMergeError(f"adapter {adapter.label()}: its training data {data.get('path')!r} is not here; {HINT}")
        records = [r for r in records if prompt_messages(r)]
        if not records:
            raise AdapterMergeError(f"adapter {adapter.label()}: its heal prompts ({source}) hold no prompt; {HINT}")
        out.append(TaskPrompts(adapter.name, _sample(records, config.prompts_per_task, config.seed, adapter.name), source, tokens))
    return out


def _adapter_digest(adapter: Adapter) -> str:
    h = hashlib.sha256()
    for module in sorted(adapter.modules):
        f = adapter.factors(module)
        h.update(module.encode())
        for t in (f.A, f.B):
            h.update(t.detach().float().contiguous().numpy().tobytes())
        h.update(repr(float(f.scale)).encode())
    return h.hexdigest()


def teacher_replies(base: str | None, adapter: Adapter | None, records: list[dict], max_new_tokens: int,
                    base_sha256: str) -> tuple[list[str], bool]:
    """Greedy replies of the float32 base with `adapter` folded in (None: the base itself) to the
    records' prompts, and whether they came from the cache."""
    key = {"base": base_sha256, "adapter": _adapter_digest(adapter) if adapter is not None else None,
           "tokens": max_new_tokens, "dtype": "float32", "prompts": [prompt_messages(r) for r in records]}
    cache = base_mod.cache_dir() / "heal" / f"{sha256_text(json.dumps(key, sort_keys=True))[:24]}.json"
    if cache.is_file():
        return json.loads(cache.read_text())["replies"], True
    model = base_mod.load_model(base)
    if adapter is not None:
        fold_adapter(model, adapter)
    replies = generate_responses(model, base_mod.load_tokenizer(base), records, max_new_tokens=max_new_tokens, batch_size=32)
    write_text_atomic(cache, json.dumps({"replies": replies}) + "\n")
    return replies, False


def _answered(records: list[dict], replies: list[str], teacher: str) -> list[dict]:
    """The prompts with the teacher's replies. An empty reply is kept: the teacher ended its turn at
    once, which the student learns too (its reply tokens are the template's end of turn)."""
    return [{"messages": [*prompt_messages(r), {"role": "assistant", "content": reply}], "meta": {"teacher": teacher}}
            for r, reply in zip(records, replies)]


def distillation_records(base: str | None, adapters: list[Adapter], prompts: list[TaskPrompts], config: HealConfig,
                         base_sha256: str) -> tuple[list[dict], dict]:
    """The heal's chat records (each prompt with its teacher's reply, tasks interleaved) and their description."""
    by_name = {a.name: a for a in adapters}
    per_task, info = [], {"tasks": {}, "anchors": None}
    for tp in prompts:
        replies, cached = teacher_replies(base, by_name[tp.adapter], tp.records, tp.max_new_tokens, base_sha256)
        rows = _answered(tp.records, replies, tp.adapter)
        per_task.append(rows)
        info["tasks"][tp.adapter] = {"prompts": len(tp.records), "source": tp.source,
                                     "teacher": f"base + {tp.adapter}, greedy, {tp.max_new_tokens} tokens at most",
                                     "reused_from_cache": cached}
    if config.anchor_prompts:
        records = anchor.records(config.anchor_prompts, config.seed)
        replies, cached = teacher_replies(base, None, records, ANCHOR_REPLY_TOKENS, base_sha256)
        rows = _answered(records, replies, "base")
        per_task.append(rows)
        info["anchors"] = {"prompts": len(records), "teacher": f"the base, greedy, {ANCHOR_REPLY_TOKENS} tokens at most",
                           "reused_from_cache": cached}
    mixed = [rows[i] for i in range(max(map(len, per_task), default=0)) for rows in per_task if i < len(rows)]
    info["rows"] = len(mixed)
    info["empty_replies"] = sum(not r["messages"][-1]["content"] for r in mixed)
    info["sha256"] = sha256_text(jsonl_text(mixed))
    return mixed, info


def heal(merged: Adapter, adapters: list[Adapter], config: HealConfig, *, base: str | None = None,
         prompts: list[TaskPrompts] | None = None, progress=None) -> Adapter:
    """The merge `merged` of `adapters`, trained `config.steps` steps to reproduce each adapter's
    replies on its prompts and the base's on anchor prompts; a new in-memory Adapter whose
    metadata["heal"] records the training compute. Steps 0 returns `merged` itself.

    `prompts`: from resolve_prompts (resolved here when None). `progress(step, total, loss)`.
    """
    from .trainer import TrainConfig, train  # torch, transformers: when a heal runs

    steps = check_steps(config.steps)
    if steps == 0:
        return merged
    if merged.is_dora or any(a.is_dora for a in adapters):
        raise AdapterMergeError("--heal trains plain LoRA adapters: a DoRA input or merge is not supported")
    prompts = resolve_prompts(adapters, config) if prompts is None else prompts
    started = time.time()
    fingerprint = model_fingerprint(base_mod.resolve_base(base))
    records, info = distillation_records(base, adapters, prompts, config, fingerprint["sha256"])
    with tempfile.TemporaryDirectory(prefix="adaptermerge-heal-") as scratch:
        scratch = Path(scratch)
        start = merged.save(scratch / "merged")
        data = write_jsonl(records, scratch / "heal.jsonl")
        out = train(TrainConfig(task="custom", data=data, base=base, output=scratch / "student", max_steps=steps, epochs=None,
                                lr=config.lr, batch_size=config.batch_size, max_length=config.max_length, seed=config.seed,
                                qlora=config.qlora, init_from=start, threads=config.threads, anchor_fraction=0.0),
                    progress)
        summary = json.loads((out / "training.json").read_text())
        student = load_adapter(out)
        factors = {}
        for module in merged.modules:
            f, s = merged.factors(module), student.factors(module)  # same ranks as the merge; A and B moved
            factors[module] = LoraFactors(s.A.to(f.A.dtype).clone(), s.B.to(f.B.dtype).clone(), alpha=s.alpha, scale=s.scale)
    info.update({
        "steps": steps, "uses_training_compute": True, "init": "the merge's factors",
        "loss": "cross-entropy on the teachers' greedy reply tokens (sequence-level distillation)",
        "hyperparameters": {k: summary["hyperparameters"][k] for k in ("lr", "batch_size", "max_length", "schedule", "optimizer", "grad_clip")},
        "quantization": summary["quantization"], "compute_dtype": summary["compute_dtype"], "seed": config.seed,
        "loss_per_step": summary["loss"]["per_step"], "train_seconds": summary["wall_time_s"],
        "seconds": round(time.time() - started, 1),
    })
    metadata = {**merged.metadata, "heal": info}
    log.info("healed %s: %d steps, loss %.4f -> %.4f", merged.name, steps, info["loss_per_step"][0], info["loss_per_step"][-1])
    return Adapter.from_factors(merged.name, factors, base_model=merged.base_model, config=merged.config, metadata=metadata,
                                inputs=merged.inputs)
