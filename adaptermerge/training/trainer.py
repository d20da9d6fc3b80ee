"""The (Q)LoRA trainer: a plain loop (AdamW, linear warmup then linear decay, gradient clipping,
seeded data order) over chat records, with the loss on the assistant reply only.

Choices, and why:
- QLoRA by default: the base is loaded in NF4 with double quantization (bitsandbytes, CPU works);
  the LoRA factors train in float32. `peft.prepare_model_for_kbit_training` is not called: its
  casts are no-ops for an fp32-compute base, and the gradient checkpointing it turns on costs
  ~30 % more compute to save memory a 135M model does not need.
- `on_top_of`: the base with that adapter merged in is written to a temporary folder next to the
  output and loaded from there (quantized for QLoRA), so the new adapter learns on exactly the
  weights a sequential merge would produce; the temporary copy is deleted afterwards.
- The adapter config records `base.base_id(base)` as its base, never a temporary path.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from .. import base as base_mod
from .. import cputhreads
from .. import provenance
from ..chat import data as data_mod
from ..chat.data import anchor
from ..chat.digest import model_fingerprint, sha256_text, weights_digest
from ..chat.generation import generate_responses
from ..chat.records import jsonl_text, read_jsonl
from ..chat.tokens import IGNORE, collate, tokenize_record
from ..errors import AdapterMergeError
from ..fileio import atomic_dir, check_destination, hf_folder, scratch_dir, sha256_file, write_text_atomic
from .presets import ALL_PROJECTIONS, preset

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything a run depends on; None means "the task preset's value"."""

    task: str
    output: Path
    data: Path | None = None
    base: str | None = None
    max_steps: int | None = None
    epochs: float | None = None
    lr: float | None = None
    rank: int | None = None
    alpha: float | None = None
    targets: tuple[str, ...] = ALL_PROJECTIONS
    seed: int = 0
    batch_size: int | None = None
    max_length: int | None = None
    qlora: bool = True
    dora: bool = False
    on_top_of: Path | None = None
    # Start from this adapter's factors (its ranks, alphas and targets) instead of a fresh LoRA:
    # the heal step (training/heal.py) trains a merged adapter further.
    init_from: Path | None = None
    force: bool = False
    dropout: float = 0.0
    weight_decay: float = 0.0
    warmup_fraction: float = 0.05
    grad_clip: float = 1.0
    data_seed: int = data_mod.DATA_SEED  # built-in data: evaluate on the eval split of the same seed (chat.data.DATA_SEED)
    anchor_fraction: float | None = None  # share of anchor rows (chat/data/anchor.py); None: the preset's
    anchor_tasks: tuple[str, ...] | None = None  # built-in tasks whose prompts join the anchors; None: the preset's
    # Distinct general anchor prompts at most (None: ANCHOR_UNIQUE). The demo's --quick runs, a
    # tenth of the steps, draw few anchor rows and use fewer, which costs fewer base generations.
    anchor_unique: int | None = None
    # The frozen base's compute dtype (the LoRA factors always train in float32). auto: bfloat16 where
    # the hardware has it natively (QLoRA's usual setting; ~30 % faster per step on these CPUs), else float32.
    compute_dtype: str = "auto"
    # torch CPU threads for the run (None: cputhreads.machine_threads()). Part of the config because
    # bfloat16 training rounds differently with another count: the weights depend on it.
    threads: int | None = None

    def resolved(self) -> "TrainConfig":
        """A copy with preset defaults filled in and every value checked."""
        p = preset(self.task)
        cfg = TrainConfig(**{**asdict(self), "output": Path(self.output)})
        cfg.compute_dtype = base_mod.resolve_dtype(cfg.compute_dtype, distributed_device())
        if cfg.base and Path(cfg.base).expanduser().is_dir():
            # recorded in the adapter: a relative folder would only resolve from this directory
            cfg.base = str(Path(cfg.base).expanduser().resolve())
        cputhreads.check(cfg.threads, "--threads")
        if cfg.threads is None:
            cfg.threads = cputhreads.machine_threads()
        for name in ("lr", "rank", "alpha", "batch_size", "max_length", "anchor_fraction", "anchor_tasks"):
            if getattr(cfg, name) is None:
                setattr(cfg, name, getattr(p, name))
        if cfg.max_steps is None and cfg.epochs is None:
            cfg.max_steps, cfg.epochs = p.max_steps, p.epochs
        if cfg.task == "custom" and cfg.data is None:
            raise AdapterMergeError("--task custom needs --data FILE.jsonl")
        if cfg.data is not None and not Path(cfg.data).is_file():
            raise AdapterMergeError(f"--data {cfg.data} does not exist: expected a JSONL file of chat records")
        if cfg.output.exists() and not cfg.force:
            raise AdapterMergeError(f"{cfg.output} exists: pass --force to overwrite")
        for name in ("lr", "rank", "alpha", "batch_size", "max_length"):
            if not getattr(cfg, name) > 0:
                raise AdapterMergeError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
        if cfg.max_steps is not None and cfg.max_steps <= 0:
            raise AdapterMergeError(f"--max-steps must be positive, got {cfg.max_steps}")
        if cfg.epochs is not None and cfg.epochs <= 0:
            raise AdapterMergeError(f"--epochs must be positive, got {cfg.epochs}")
        if cfg.anchor_unique is not None and cfg.anchor_unique <= 0:
            raise AdapterMergeError(f"anchor_unique must be positive, got {cfg.anchor_unique}")
        if not 0.0 <= cfg.anchor_fraction < 1.0:
            raise AdapterMergeError(f"--anchor-fraction must be in [0, 1), got {cfg.anchor_fraction}")
        cfg.anchor_tasks = tuple(cfg.anchor_tasks)
        unknown = [t for t in cfg.anchor_tasks if t not in data_mod.TASKS]
        if unknown:
            raise AdapterMergeError(f"--anchor-tasks {', '.join(unknown)}: expected built-in tasks among {', '.join(data_mod.TASKS)}")
        if cfg.task in cfg.anchor_tasks:
            raise AdapterMergeError(f"--anchor-tasks names the task being trained ({cfg.task}): its prompts already have answers")
        if not cfg.targets:
            raise AdapterMergeError("--targets names no module")
        if cfg.on_top_of is not None:
            if not (Path(cfg.on_top_of) / "adapter_config.json").is_file():
                raise AdapterMergeError(f"--on-top-of {cfg.on_top_of}: not a PEFT adapter folder (no adapter_config.json)")
            # before any slow work: safetensors weights only (PEFT would torch.load adapter_model.bin)
            hf_folder(cfg.on_top_of, "--on-top-of adapter", stem="adapter_model", config="adapter_config.json")
        if cfg.init_from is not None:
            hf_folder(cfg.init_from, "init_from adapter", stem="adapter_model", config="adapter_config.json")
            init = json.loads((Path(cfg.init_from) / "adapter_config.json").read_text())
            # recorded in training.json: the student's own shape, not the preset's
            cfg.rank, cfg.alpha, cfg.dora = init["r"], init["lora_alpha"], bool(init.get("use_dora"))
            targets = init["target_modules"]
            cfg.targets = (targets,) if isinstance(targets, str) else tuple(sorted(targets))
        return cfg


# ---------------------------------------------------------------- data

def load_records(cfg: TrainConfig) -> tuple[list[dict], dict]:
    """The training records and a description of where they came from (for training.json)."""
    if cfg.data is not None:
        records = read_jsonl(cfg.data)
        source = {"path": str(Path(cfg.data).resolve()), "sha256": sha256_file(cfg.data), "built_in": False}
    else:
        records = data_mod.build_records(cfg.task, "train", cfg.data_seed)
        source = {"built_in": True, "task": cfg.task, "split": "train", "seed": cfg.data_seed,
                  "sha256": sha256_text(jsonl_text(records))}
    return records, source


ANCHOR_UNIQUE = 64  # distinct general anchor prompts at most; more rows repeat them
ANCHOR_CROSS_PER_TASK = 32  # distinct prompts at most from each of the anchor tasks
ANCHOR_REPLY_TOKENS = 48
# An anchor row keeps at least this many reply tokens even where its prompt is longer than the
# task's max_length (a structured-task prompt is ~110 tokens, the domain preset's max_length 64):
# the first tokens of the reply are what set its mode (JSON, refusal, short answer).
ANCHOR_MIN_REPLY_TOKENS = 16


def anchor_count(task_rows: int, fraction: float) -> int:
    """Anchor rows to add so they make up `fraction` of all rows."""
    return round(task_rows * fraction / (1.0 - fraction)) if fraction > 0 else 0


def anchor_rows(cfg: TrainConfig, tokenizer, count: int, base_sha256: str) -> tuple[list, dict]:
    """`count` tokenized anchor rows whose replies are the full-precision base's own greedy replies
    (with `on_top_of` merged in: the weights the new adapter is added to), and their description
    for training.json.

    A separate full-precision copy generates them, not the NF4 model being trained: bitsandbytes
    repacks a Linear4bit weight for fast CPU inference on its first eval-mode forward, and the
    repacked op has no backward, so training after generating with it would be silently wrong.
    Full precision is also what adapters are evaluated and merged on.
    """
    started = time.time()
    records = anchor.records(min(count, cfg.anchor_unique or ANCHOR_UNIQUE), cfg.data_seed)
    if cfg.anchor_tasks:
        cross = anchor.cross_records(cfg.anchor_tasks, ANCHOR_CROSS_PER_TASK, cfg.data_seed)
        records = anchor.interleave(records, cross)[:count]
    cache = _anchor_cache_path(cfg, records, base_sha256)
    cached = cache.is_file()
    if cached:
        replies = json.loads(cache.read_text())["replies"]
    else:
        # float32 on every machine, so the anchors (and the adapter) do not depend on the hardware.
        model = _full_precision_base(cfg)
        replies = generate_responses(model, tokenizer, records, max_new_tokens=ANCHOR_REPLY_TOKENS, batch_size=32)
        del model
        write_text_atomic(cache, json.dumps({"replies": replies}) + "\n")
    answered = [
        {**r, "messages": [*r["messages"], {"role": "assistant", "content": reply}]}
        for r, reply in zip(records, replies)
        if reply
    ]
    unique = [row for row in (tokenize_record(tokenizer, r, cfg.max_length, ANCHOR_MIN_REPLY_TOKENS) for r in answered)
              if row is not None]
    rows = [unique[i % len(unique)] for i in range(count)] if unique else []
    info = {"rows": len(rows), "unique_prompts": len(unique), "reply_tokens_max": ANCHOR_REPLY_TOKENS,
            "from_tasks": {t: sum(r["meta"].get("from_task") == t for r in answered) for t in cfg.anchor_tasks},
            "sha256": sha256_text(jsonl_text(answered)), "replies_from": "the full-precision base, greedy",
            "seconds": round(time.time() - started, 1), "reused_from_cache": cached}
    return rows, info


def _anchor_cache_path(cfg: TrainConfig, records: list[dict], base_sha256: str) -> Path:
    """Where the replies to these prompts on this base (and on_top_of adapter) are cached: the three
    presets ask the same prompts of the same base, so the replies are generated once, not thrice."""
    on_top = weights_digest(cfg.on_top_of) if cfg.on_top_of is not None else None
    key = {"base": base_sha256, "on_top_of": on_top, "tokens": ANCHOR_REPLY_TOKENS,
           "dtype": "float32", "prompts": [r["messages"][0]["content"] for r in records]}
    return base_mod.cache_dir() / "anchors" / f"{sha256_text(json.dumps(key, sort_keys=True))[:24]}.json"


def batch_order(n_rows: int, batch_size: int, steps: int, seed: int,
                long_rows: frozenset[int] = frozenset()) -> list[tuple[int, list[int]]]:
    """(epoch, row indices) for each step: a fresh seeded permutation per epoch, last partial batch kept.

    `long_rows` (anchor rows allowed past max_length) are batched among themselves and their batches
    shuffled in with the others: every batch is padded to its longest row, so one long row in each
    batch would double the cost of the whole run. Without long rows the order is the plain one.
    """
    rng = random.Random(seed)
    order: list[tuple[int, list[int]]] = []
    epoch = 0
    while len(order) < steps:
        perm = list(range(n_rows))
        rng.shuffle(perm)
        if long_rows:
            groups = [[i for i in perm if i not in long_rows], [i for i in perm if i in long_rows]]
            batches = [g[start : start + batch_size] for g in groups for start in range(0, len(g), batch_size)]
            rng.shuffle(batches)
        else:
            batches = [perm[start : start + batch_size] for start in range(0, n_rows, batch_size)]
        for batch in batches:
            order.append((epoch, batch))
            if len(order) == steps:
                break
        epoch += 1
    return order


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warmup over `warmup` steps to `peak`, then linear decay to 0 at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (total - step) / max(1, total - warmup))


# ---------------------------------------------------------------- model

def base_fingerprint(name: str | None) -> dict:
    """How the base is identified in training.json (digest.model_fingerprint of its folder)."""
    return model_fingerprint(base_mod.resolve_base(name))


def _full_precision_base(cfg: TrainConfig):
    """The base in float32, with the `on_top_of` adapter merged in when there is one."""
    model = base_mod.load_model(cfg.base)
    if cfg.on_top_of is None:
        return model
    return base_mod.load_adapter(model, cfg.on_top_of).merge_and_unload()


def distributed_device() -> str:
    """Where training computes: the GPU when there is one (accelerate puts each process on its
    own), else the CPU."""
    import torch  # heavy: imported when a run starts, not with the module

    return "cuda" if torch.cuda.is_available() else "cpu"


def _load_base(cfg: TrainConfig, scratch: Path, device: str = "cpu", fsdp: bool = False):
    import torch  # heavy: imported when a run starts, not with the module

    quantization = "nf4" if cfg.qlora else None
    dtype = getattr(torch, cfg.compute_dtype)
    if cfg.on_top_of is None:
        return base_mod.load_model(cfg.base, dtype=dtype, quantization=quantization, device=device, fsdp=fsdp)
    merged = _full_precision_base(cfg)  # merged in float32, then cast or quantized
    if not cfg.qlora:
        return merged.to(device=device, dtype=dtype)
    folder = scratch / "merged-base"
    merged.save_pretrained(folder)
    del merged
    return base_mod.load_model(str(folder), dtype=dtype, quantization=quantization, device=device, fsdp=fsdp)


def _peft_model(model, cfg: TrainConfig):
    from peft import LoraConfig, get_peft_model  # heavy: imported when a run starts, not with the module

    if cfg.init_from is not None:
        peft_model = base_mod.load_adapter(model, cfg.init_from, is_trainable=True)
        for p in peft_model.parameters():
            if p.requires_grad:  # the factors train in float32, whatever dtype they were saved in
                p.data = p.data.float()
        return peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in cfg.targets if t not in present]
    if missing:
        raise AdapterMergeError(f"--targets {', '.join(missing)}: no such module in the base model")
    config = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        target_modules=list(cfg.targets),
        lora_dropout=cfg.dropout,
        use_dora=cfg.dora,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def reply_loss(model, batch: dict, reduction: str = "mean"):
    """Next-token cross-entropy over the reply tokens: their mean, or their sum (reduction="sum").

    Logits are computed only at positions whose next token carries a label: the output projection
    (49k x 576 for SmolLM2) over every prompt position would be a fifth of the step's compute for
    nothing. Models that post-process logits (soft-capping) take the plain path.
    """
    import torch.nn.functional as F  # heavy: imported when a run starts, not with the module

    lm = model.get_base_model()
    if getattr(lm.config, "final_logit_softcapping", None) or not hasattr(lm, "get_decoder"):
        loss = model(**batch).loss  # the mean
        return loss * (batch["labels"][:, 1:] != IGNORE).sum() if reduction == "sum" else loss
    hidden = lm.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    hidden = hidden.last_hidden_state[:, :-1]  # [batch, seq-1, hidden]: position t predicts token t+1
    labels = batch["labels"][:, 1:]  # [batch, seq-1]
    keep = labels != IGNORE
    logits = lm.get_output_embeddings()(hidden[keep])  # [n_reply_tokens, vocab]
    return F.cross_entropy(logits.float(), labels[keep], reduction=reduction)


# ---------------------------------------------------------------- the run

ProgressFn = Callable[[int, int, float], None]


def train(config: TrainConfig, progress: ProgressFn | None = None) -> Path:
    """Train an adapter as `config` says and write it to `config.output`; returns that path.

    `progress(step, total_steps, loss)` is called after every optimizer step. The run uses
    `config.threads` torch threads and restores the caller's count afterwards.
    """
    cfg = config.resolved()
    with cputhreads.using(cfg.threads):
        return _train(cfg, progress)


def _train(cfg: TrainConfig, progress: ProgressFn | None) -> Path:
    import torch  # heavy: imported when a run starts, not with the module

    out = Path(cfg.output)
    # before the data and the base are loaded; the adapter never lands on what it is made from
    inputs = [p for p in (cfg.on_top_of, cfg.init_from, cfg.data, cfg.base) if p is not None and Path(p).exists()]
    check_destination(out, cfg.force, inputs)
    started, cpu_started = time.time(), time.process_time()
    records, source = load_records(cfg)
    tokenizer = base_mod.load_tokenizer(cfg.base)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows, truncated = [], 0
    for record in records:
        row = tokenize_record(tokenizer, record, cfg.max_length)
        if row is None:
            truncated += 1
            continue
        rows.append(row)
    if not rows:
        raise AdapterMergeError(f"no record keeps any reply token within --max-length {cfg.max_length}")
    task_rows = len(rows)
    n_anchor = anchor_count(task_rows, cfg.anchor_fraction)
    steps_per_epoch = math.ceil((task_rows + n_anchor) / cfg.batch_size)
    total = cfg.max_steps if cfg.max_steps is not None else math.ceil(cfg.epochs * steps_per_epoch)
    if cfg.max_steps is not None and cfg.epochs is not None:
        total = min(total, math.ceil(cfg.epochs * steps_per_epoch))
    warmup = max(1, round(cfg.warmup_fraction * total))

    from . import distributed  # accelerate and torch: when a run starts

    acc = distributed.make_accelerator()
    world, rank = acc.num_processes, acc.process_index
    distributed.check_batch(cfg.batch_size, world)
    fsdp = cfg.qlora and distributed.is_fsdp(acc.distributed_type)
    # The main process writes the adapter (atomically); the others only need scratch space.
    with (atomic_dir(out, force=cfg.force, inputs=inputs) if acc.is_main_process else scratch_dir(out)) as tmp:
        anchors = None
        fingerprint = base_fingerprint(cfg.base)  # hashes the weights of a non-embedded base: once
        if n_anchor:
            with acc.main_process_first():  # the main process generates the replies; the others read its cache
                anchor_list, anchors = anchor_rows(cfg, tokenizer, n_anchor, fingerprint["sha256"])
            rows = rows + anchor_list
            log.info("%d anchor rows (%d distinct prompts) in %.0f s", len(anchor_list), anchors["unique_prompts"],
                     time.time() - started)
        torch.manual_seed(cfg.seed)
        model = _peft_model(_load_base(cfg, tmp, str(acc.device), fsdp), cfg)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        loss_module, optimizer = acc.prepare(distributed.ReplyLoss(model, reply_loss),
                                             torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay))
        params = [p for p in loss_module.parameters() if p.requires_grad]  # as wrapped (FSDP flattens them)
        losses: list[float] = []
        epoch_losses: dict[int, list[float]] = {}
        long_rows = frozenset(i for i, (ids, _) in enumerate(rows) if len(ids) > cfg.max_length)
        for step, (epoch, idx) in enumerate(batch_order(len(rows), cfg.batch_size, total, cfg.seed, long_rows)):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, cfg.lr, warmup)
            mine = distributed.shard(idx, rank, world)
            tokens = sum(distributed.reply_tokens(rows[i]) for i in idx)  # of the global batch: the same everywhere
            # A process left without rows (a last batch smaller than the world) still runs a
            # forward and backward, weighted 0, because DDP reduces gradients across all of them.
            summed = loss_module(_to(collate([rows[i] for i in (mine or idx[:1])], pad_id), acc.device))
            loss = summed * (world / tokens if mine else 0.0)
            acc.backward(loss)
            step_loss = (acc.reduce(loss.detach(), "sum") / world).item()  # the global batch's mean token loss
            if not math.isfinite(step_loss):
                raise AdapterMergeError(f"the loss became {step_loss} at step {step + 1}: lower --lr (now {cfg.lr})")
            acc.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(step_loss)
            epoch_losses.setdefault(epoch, []).append(losses[-1])
            if progress is not None and acc.is_main_process:
                progress(step + 1, total, losses[-1])
            if (step + 1) % 10 == 0 or step + 1 == total:
                log.info("step %d/%d loss %.4f (%.0f s)", step + 1, total, losses[-1], time.time() - started)
        acc.wait_for_everyone()
        model = acc.unwrap_model(loss_module).model
        if acc.is_main_process:
            model.save_pretrained(tmp)  # before the merged base goes: PEFT reads its config while saving
            shutil.rmtree(tmp / "merged-base", ignore_errors=True)
            _fix_adapter_config(tmp, cfg)
            summary = {
                "task": cfg.task,
                "base": {"id": base_mod.base_id(cfg.base), **fingerprint},
                "quantization": "nf4" if cfg.qlora else None,
                "compute_dtype": cfg.compute_dtype,
                "adapter_type": "dora" if cfg.dora else "lora",
                "on_top_of": str(Path(cfg.on_top_of).resolve()) if cfg.on_top_of is not None else None,
                "init_from": str(Path(cfg.init_from).resolve()) if cfg.init_from is not None else None,
                "data": {**source, "rows": len(records), "rows_used": task_rows, "rows_dropped_too_long": truncated,
                         "anchors": anchors},
                "hyperparameters": {
                    "max_steps": cfg.max_steps, "epochs": cfg.epochs, "steps": total, "steps_per_epoch": steps_per_epoch,
                    "lr": cfg.lr, "anchor_fraction": cfg.anchor_fraction, "anchor_tasks": list(cfg.anchor_tasks), "rank": cfg.rank, "alpha": cfg.alpha, "targets": list(cfg.targets),
                    "batch_size": cfg.batch_size, "max_length": cfg.max_length, "dropout": cfg.dropout,
                    "weight_decay": cfg.weight_decay, "warmup_steps": warmup, "schedule": "linear warmup, linear decay to 0",
                    "grad_clip": cfg.grad_clip, "optimizer": "AdamW",
                },
                "seed": cfg.seed,
                "loss": {
                    "final": losses[-1],
                    "final_mean_last_10": sum(losses[-10:]) / len(losses[-10:]),
                    "per_epoch": [sum(v) / len(v) for _, v in sorted(epoch_losses.items())],
                    "per_step": losses,
                },
                "wall_time_s": round(time.time() - started, 2),
                # CPU seconds of this process (all threads): a contention-free measure of the work.
                "cpu_time_s": round(time.process_time() - cpu_started, 2),
                "threads": cfg.threads,
                "processes": {"world_size": world, "distributed_type": str(acc.distributed_type).rsplit(".", 1)[-1],
                              "global_batch": cfg.batch_size, "rows_per_process": math.ceil(cfg.batch_size / world)},
                "versions": provenance.package_versions(),
            }
            (tmp / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    acc.wait_for_everyone()  # the adapter is in place before any process returns
    return out


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def _fix_adapter_config(folder: Path, cfg: TrainConfig) -> None:
    """Record the base's public id (a temp folder or cache path means nothing to a reader) in the
    adapter config and in the model card PEFT writes beside it."""
    name = base_mod.base_id(cfg.base)
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = name
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    card = folder / "README.md"
    if card.is_file():
        text = re.sub(r"(?m)^base_model: .*$", f"base_model: {name}", card.read_text())
        text = re.sub(r"(?m)^- base_model:adapter:.*$", f"- base_model:adapter:{name}", text)
        card.write_text(text)
