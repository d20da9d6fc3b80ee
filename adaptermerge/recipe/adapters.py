"""The recipe's input adapters: trained from built-in presets (reusing ones already trained with
the same settings), or given as PEFT folders or bare .safetensors files.

A trained adapter is cached under `cache_dir()/adapters/<task>-<key>/`, where the key hashes everything
the trained weights depend on: the resolved training config (preset values filled in), the
training data's sha256, the base model's fingerprint and, for sequential training, the weights of
the adapter trained on top of.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import queue as queue_mod
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from .. import base as base_mod
from .. import cputhreads
from ..adapter import load_adapter
from ..chat.digest import weights_digest
from ..errors import AdapterMergeError
from ..evalsuite.parallel import exit_with_parent
from ..quiet import quiet_third_party
from ..training import trainer
from ..training.presets import preset
from .schema import AdapterSpec, QuickOptions

log = logging.getLogger(__name__)

TrainProgress = Callable[[int, int, float], None]
_NOT_KEYED = ("output", "force")  # where the adapter goes does not change it


def cache_key(config: trainer.TrainConfig) -> str:
    """A hash of what the trained weights depend on (see the module docstring)."""
    cfg = config.resolved()
    _, source = trainer.load_records(cfg)
    settings = {k: v for k, v in asdict(cfg).items() if k not in _NOT_KEYED}
    if settings["anchor_unique"] is None:  # the default: keys from before the field existed stay valid
        del settings["anchor_unique"]
    settings["data"] = source["sha256"]
    settings["base"] = trainer.base_fingerprint(cfg.base)["sha256"]
    if cfg.on_top_of is not None:
        settings["on_top_of"] = weights_digest(cfg.on_top_of)
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_path(config: trainer.TrainConfig) -> Path:
    return base_mod.cache_dir() / "adapters" / f"{config.task}-{cache_key(config)}"


def is_trained(folder: Path) -> bool:
    return (folder / "adapter_config.json").is_file() and (folder / "training.json").is_file()


def ensure_adapter(config: trainer.TrainConfig, progress: TrainProgress | None = None) -> tuple[Path, bool]:
    """(folder, reused): the cached adapter for `config` (its `output` is ignored), trained first if absent."""
    folder, reused = _lookup(config)
    return (folder, True) if reused else (_train_into(config, folder, progress), False)


def _lookup(config: trainer.TrainConfig) -> tuple[Path, bool]:
    """(the cache folder for `config`, whether an adapter is already trained there)."""
    folder = cache_path(config)
    reused = is_trained(folder)
    if reused:
        log.info("reusing %s", folder)
    return folder, reused


def _train_into(config: trainer.TrainConfig, folder: Path, progress: TrainProgress | None) -> Path:
    return trainer.train(trainer.TrainConfig(**{**asdict(config), "output": folder, "force": True}), progress)


def train_config(task: str, *, base: str | None, seed: int, quick: QuickOptions | None, steps: int | None = None,
                 on_top_of: Path | None = None) -> trainer.TrainConfig:
    """The training settings of a preset: the preset's own, with fewer steps in a quick run
    (`quick`: the recipe's quick options; None: a full run)."""
    if steps is None and quick is not None:
        steps = max(4, round(preset(task).max_steps * quick.step_fraction))
    return trainer.TrainConfig(task=task, output=Path("unused"), base=base, seed=seed, max_steps=steps, on_top_of=on_top_of,
                               anchor_unique=quick.anchor_unique if quick is not None else None,
                               threads=training_threads(quick is not None, on_top_of is not None))


def training_threads(quick: bool, on_top_of: bool) -> int:
    """Torch threads of a training run, from the machine and the kind of run alone, never from
    what is already cached: the weights depend on the count (cputhreads), so a run that trained an
    adapter beside another and one that trained it alone must use the same.

    Full presets train two at a time when several are missing (train_workers), and sequential
    training runs while the evaluation helper works: half the machine each. Quick runs train one
    after another (too short to pay for a second process): all of it."""
    return cputhreads.machine_threads() if quick and not on_top_of else cputhreads.share(SIDE_BY_SIDE)


def choose_config(task: str, *, base: str | None, seed: int, quick: QuickOptions | None, steps: int | None = None,
                  on_top_of: Path | None = None) -> trainer.TrainConfig:
    """A quick run reuses the full preset's adapter when one is cached, and trains a short one otherwise."""
    full = train_config(task, base=base, seed=seed, quick=None, steps=steps, on_top_of=on_top_of)
    if steps is None and quick is not None and not is_trained(cache_path(full)):
        return train_config(task, base=base, seed=seed, quick=quick, on_top_of=on_top_of)
    return full


def take_given(spec: AdapterSpec, folder: Path, base: str | None) -> Path:
    """A given adapter as a PEFT folder: a folder is used where it is; a bare .safetensors file is
    written as a PEFT folder at `folder` (evaluation, PEFT and mergekit read folders)."""
    if spec.path.is_dir():
        load_adapter(spec.path)  # reads the header only: a bad folder fails here, with its clear error
        return spec.path
    adapter = load_adapter(spec.path, alpha=spec.alpha, name=spec.name)
    if adapter.base_model is None:  # a bare file rarely names its base: the recipe's it is
        adapter.base_model = base_mod.base_id(base)
    return adapter.save(folder)


# ---------------------------------------------------------------- several at once

TasksProgress = Callable[[str, int, int, float], None]  # (task, step, steps, loss)


# Side by side only when the second-longest run trains on at least this many tokens: a process
# costs about 10 s to start, and quick runs (under 10k tokens each) took 127 s side by side
# against 105 s one after the other.
MIN_SIDE_BY_SIDE_TOKENS = 40_000
SIDE_BY_SIDE = 2  # training processes at most


def train_workers(estimates: list[int], workers: int | None = None) -> int:
    """Training processes for runs of `estimates` tokens: `workers` if given, else 2 on a
    multi-core CPU when the second-longest run is long enough to pay for a process; never more
    than the runs. Training is compute-bound (a second torch thread made each run 1.8-1.9x
    faster), so the gain is what one run at a time leaves idle: loading, anchor replies, saving."""
    if workers is None:
        long_enough = len(estimates) >= 2 and sorted(estimates)[-2] >= MIN_SIDE_BY_SIDE_TOKENS
        workers = SIDE_BY_SIDE if (os.cpu_count() or 1) >= 2 and long_enough else 1
    return max(1, min(workers, len(estimates)))


def _work_estimate(config: trainer.TrainConfig) -> int:
    """Tokens the run trains on at most (steps x batch x length): the longest runs start first."""
    cfg = config.resolved()
    return (cfg.max_steps or 0) * cfg.batch_size * cfg.max_length


def ensure_adapters(configs: dict[str, trainer.TrainConfig], progress: TasksProgress | None = None,
                    workers: int | None = None) -> dict[str, tuple[Path, bool]]:
    """{task: (folder, reused)}: `ensure_adapter` for each config. The adapters not yet cached train
    in `train_workers(...)` processes at once, longest first, each with its config's threads (so
    no more processes than the machine has threads for); the weights do not depend on how many
    run at once."""
    out, todo = {}, {}
    for task, cfg in configs.items():
        folder, reused = _lookup(cfg)
        if reused:
            out[task] = (folder, True)
        else:
            todo[task] = (cfg, folder, _work_estimate(cfg))
    n = train_workers([work for _, _, work in todo.values()], workers)
    if todo:
        n = min(n, max(1, cputhreads.machine_threads() // max(cfg.resolved().threads for cfg, _, _ in todo.values())))
    if n == 1:
        for task, (cfg, folder, _) in todo.items():
            out[task] = (_train_into(cfg, folder, progress and (lambda s, total, loss, t=task: progress(t, s, total, loss))), False)
    else:
        order = sorted(todo, key=lambda t: -todo[t][2])
        out.update({task: (path, False) for task, path in _train_processes({t: todo[t][:2] for t in order}, n, progress).items()})
    return {task: out[task] for task in configs}


def _train_processes(todo: dict[str, tuple[trainer.TrainConfig, Path]], n: int, progress: TasksProgress | None) -> dict[str, Path]:
    """Train `todo` ({task: (config, folder)}, in its order) in `n` spawned processes; the first
    failure stops the others."""
    ctx = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools mid-flight
    messages = ctx.Queue()
    quiet = logging.getLogger("transformers").getEffectiveLevel() >= logging.ERROR
    waiting, running, done = list(todo), {}, {}
    try:
        while waiting or running:
            while waiting and len(running) < n:
                task = waiting.pop(0)
                running[task] = ctx.Process(target=_train_one, args=(task, *todo[task], quiet, messages), daemon=True)
                running[task].start()
            try:
                kind, task, *rest = messages.get(timeout=1.0)
            except queue_mod.Empty:
                dead = [t for t, p in running.items() if not p.is_alive() and p.exitcode != 0]
                if dead:
                    raise AdapterMergeError(f"training {dead[0]}: its process exited with {running[dead[0]].exitcode}")
                continue
            if kind == "step" and progress is not None:
                progress(task, *rest)
            elif kind == "done":
                done[task] = Path(rest[0])
                running.pop(task).join()
            elif kind == "error":
                message, ours = rest
                raise AdapterMergeError(message) if ours else RuntimeError(f"training {task} failed: {message}")
    finally:
        for process in running.values():
            process.terminate()
            process.join(timeout=10)
    return done


def _train_one(task: str, config: trainer.TrainConfig, folder: Path, quiet: bool, messages) -> None:
    """In a training process: train into `folder`, reporting each step and the outcome on `messages`."""
    if quiet:
        quiet_third_party()
    exit_with_parent()
    try:
        path = _train_into(config, folder, lambda step, total, loss: messages.put(("step", task, step, total, loss)))
        messages.put(("done", task, str(path)))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
        messages.put(("error", task, str(exc) if isinstance(exc, AdapterMergeError) else f"{type(exc).__name__}: {exc}",
                      isinstance(exc, AdapterMergeError)))
