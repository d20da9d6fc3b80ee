"""The comparison rows that do not use adaptermerge's merge engine, run on the same adapters:

- PEFT's `add_weighted_adapter`: `ties` works on the factors A and B separately, `ties_svd` on
  the dense deltas followed by a truncated SVD. PEFT's factor methods refuse adapters of different
  ranks, so lower-rank adapters are first zero-padded to the highest rank (`pad_to_rank`: the
  same delta, PEFT's own rank/alpha patterns keep each scale), which gives PEFT its best chance;
- mergekit's `ties` on `base+lora` models: each adapter is folded into a dense copy of the base
  (`--lora-merge-cache`), the dense models are merged, and the output is a full model. mergekit is
  not a dependency: the row is skipped when no `mergekit-yaml` executable is found.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import torch
import yaml

from .. import base as base_mod
from ..adapter import Adapter, LoraFactors, load_adapter
from ..fileio import atomic_dir

MERGEKIT_ENV = "ADAPTERMERGE_MERGEKIT"  # path of a mergekit-yaml executable


class Skipped(Exception):
    """The approach cannot run here (a missing optional tool); the row says why."""


def pad_to_rank(folder: Path, rank: int, out: Path) -> Path:
    """A copy of the adapter in `folder` with every module zero-padded to `rank`: the extra rows of
    A and columns of B are zero, so each delta, scale * B @ A, is unchanged."""
    adapter = load_adapter(folder)
    padded = {}
    for module in adapter.modules:
        f = adapter.factors(module)
        extra = rank - f.rank
        A = torch.cat([f.A, f.A.new_zeros(extra, f.A.shape[1])]) if extra > 0 else f.A
        B = torch.cat([f.B, f.B.new_zeros(f.B.shape[0], extra)], 1) if extra > 0 else f.B
        padded[module] = LoraFactors(A, B, alpha=f.scale * A.shape[0], scale=f.scale, magnitude=f.magnitude)
    Adapter.from_factors(adapter.name, padded, base_model=adapter.base_model, config=adapter.config).save(out)
    return out


def equal_ranks(adapters: dict[str, Path], work: Path) -> dict[str, Path]:
    """`adapters`, with those of lower rank zero-padded (in `work`) to the highest rank of any module."""
    ranks = {name: {s.rank for s in load_adapter(folder).specs.values()} for name, folder in adapters.items()}
    top = max(max(r) for r in ranks.values())
    return {name: folder if ranks[name] == {top} else pad_to_rank(folder, top, work / f"{name}-r{top}")
            for name, folder in adapters.items()}


def peft_merge(adapters: dict[str, Path], out: Path, combination_type: str, *, base: str | None,
               weights: list[float], density: float, seed: int = 0, work: Path | None = None) -> Path:
    """Merge `adapters` ({name: folder}) with PEFT's add_weighted_adapter into the PEFT folder `out`.
    PEFT's factor methods need equal ranks: with `work`, lower-rank adapters are zero-padded there."""
    torch.manual_seed(seed)
    if work is not None and not combination_type.endswith("svd"):
        adapters = equal_ranks(adapters, work)
    names = list(adapters)
    model = base_mod.load_adapter(base_mod.load_model(base), adapters[names[0]], adapter_name=names[0])
    for name in names[1:]:
        base_mod.add_adapter(model, adapters[name], name)
    model.add_weighted_adapter(names, list(weights), "merged", combination_type=combination_type, density=density)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, selected_adapters=["merged"])  # a non-default name goes to tmp/merged/
        for item in (tmp / "merged").iterdir():
            os.replace(item, tmp / item.name)
        (tmp / "merged").rmdir()
        config_path = tmp / "adapter_config.json"
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = base_mod.base_id(base)
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out


def find_mergekit(explicit: str | None = None) -> str | None:
    """The mergekit-yaml executable: `explicit`, else $ADAPTERMERGE_MERGEKIT, else on PATH."""
    candidate = explicit or os.environ.get(MERGEKIT_ENV) or shutil.which("mergekit-yaml")
    if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return None


def mergekit_config(adapters: dict[str, Path], base_dir: Path, *, weights: list[float], density: float) -> dict:
    """mergekit's `ties` over `base+lora` models, its defaults otherwise (normalize: true)."""
    return {
        "merge_method": "ties",
        "base_model": str(base_dir),
        "models": [{"model": f"{base_dir}+{Path(folder).resolve()}", "parameters": {"density": density, "weight": w}}
                   for folder, w in zip(adapters.values(), weights)],
        "dtype": "float32",
    }


def mergekit_merge(adapters: dict[str, Path], out: Path, *, base: str | None, weights: list[float], density: float,
                   work: Path, executable: str | None = None, timeout: float = 3600, threads: int | None = None) -> Path:
    """Run mergekit-yaml; `out` becomes a full model folder. Raises Skipped without mergekit.
    `threads`: its torch threads (OMP_NUM_THREADS; None: its default)."""
    exe = find_mergekit(executable)
    if exe is None:
        raise Skipped(f"mergekit-yaml not found (install mergekit, or pass --mergekit PATH or set ${MERGEKIT_ENV})")
    base_dir = base_mod.resolve_base(base)
    work.mkdir(parents=True, exist_ok=True)
    config_path = work / "mergekit_ties.yaml"
    config_path.write_text(yaml.safe_dump(mergekit_config(adapters, base_dir, weights=weights, density=density), sort_keys=False))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    with atomic_dir(out) as tmp:
        done = subprocess.run([exe, str(config_path), str(tmp), "--lora-merge-cache", str(work / "lora-merge-cache"),
                               "--copy-tokenizer"], capture_output=True, text=True, timeout=timeout, env=env)
        if done.returncode != 0:
            lines = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()]
            raise RuntimeError(f"mergekit-yaml exited with {done.returncode}: {lines[-1] if lines else 'no output'}")
    return out
