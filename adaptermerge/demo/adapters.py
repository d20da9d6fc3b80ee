"""Training the demo's adapters, reusing ones already trained with the same settings.

An adapter is cached under `cache_dir()/adapters/<task>-<key>/`, where the key hashes everything
the trained weights depend on: the resolved training config (preset values filled in), the
training data's sha256, the base model's fingerprint and, for sequential training, the weights of
the adapter trained on top of.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from .. import base as base_mod
from ..train import trainer
from ..train.presets import preset

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
        settings["on_top_of"] = trainer.weights_digest(cfg.on_top_of)
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_path(config: trainer.TrainConfig) -> Path:
    return base_mod.cache_dir() / "adapters" / f"{config.task}-{cache_key(config)}"


def is_trained(folder: Path) -> bool:
    return (folder / "adapter_config.json").is_file() and (folder / "training.json").is_file()


def ensure_adapter(config: trainer.TrainConfig, progress: TrainProgress | None = None) -> tuple[Path, bool]:
    """(folder, reused): the cached adapter for `config` (its `output` is ignored), trained first if absent."""
    folder = cache_path(config)
    if is_trained(folder):
        log.info("reusing %s", folder)
        return folder, True
    cfg = trainer.TrainConfig(**{**asdict(config), "output": folder, "force": True})
    return trainer.train(cfg, progress), False


def train_config(task: str, *, base: str | None, seed: int, quick: bool, steps: int | None = None,
                 on_top_of: Path | None = None) -> trainer.TrainConfig:
    """The demo's training settings for a task: its preset, with fewer steps for --quick."""
    from .plan import QUICK_ANCHOR_UNIQUE, QUICK_STEP_FRACTION

    if steps is None and quick:
        steps = max(4, round(preset(task).max_steps * QUICK_STEP_FRACTION))
    return trainer.TrainConfig(task=task, output=Path("unused"), base=base, seed=seed, max_steps=steps, on_top_of=on_top_of,
                               anchor_unique=QUICK_ANCHOR_UNIQUE if quick else None)


def choose_config(task: str, *, base: str | None, seed: int, quick: bool, steps: int | None = None,
                  on_top_of: Path | None = None) -> trainer.TrainConfig:
    """--quick reuses the full preset's adapter when one is cached, and trains a short one otherwise."""
    full = train_config(task, base=base, seed=seed, quick=False, steps=steps, on_top_of=on_top_of)
    if steps is None and quick and not is_trained(cache_path(full)):
        return train_config(task, base=base, seed=seed, quick=True, on_top_of=on_top_of)
    return full
