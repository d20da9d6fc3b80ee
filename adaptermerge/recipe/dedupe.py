"""Finding identical merges: merges that are the same function, found without evaluating them.

For plain LoRA inputs several methods are one function in different factors: `sequential` and
`cat` are `sum_i delta_i`, as is task_arithmetic at its defaults; `cat` with weights `w_i` is
the weighted sum. Evaluating each copy costs a full evaluation and measures
nothing new (their scores differ only by bf16 round-off). An adapter's probe is `delta @ x` for
one fixed Gaussian x per module: two adapters with different deltas give different probes with
probability 1, so equal probes (to float32 round-off) mean the same weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..adapter import load_adapter

# Relative difference of the probes below which two adapters count as the same weights: float32
# round-off of the exact factorizations is ~1e-6, a real difference is orders larger.
TOLERANCE = 1e-4


_probes: dict[tuple, dict[str, torch.Tensor] | None] = {}


def probe(path: str | Path) -> dict[str, torch.Tensor] | None:
    """{module: delta @ x} for a plain LoRA adapter folder; None for DoRA (its magnitudes would
    need the base weights to compare). Remembered per folder and file state: the pipeline checks
    its merges for copies each time one is added."""
    folder = Path(path)
    weights = folder / "adapter_model.safetensors"
    state = weights.stat() if weights.is_file() else None
    key = (str(folder.resolve()), state.st_size if state else None, state.st_mtime_ns if state else None)
    if key not in _probes:
        _probes[key] = _probe(folder)
    return _probes[key]


def _probe(path: Path) -> dict[str, torch.Tensor] | None:
    adapter = load_adapter(path)
    if adapter.is_dora:
        return None
    out = {}
    for module in adapter.modules:
        f = adapter.factors(module)
        gen = torch.Generator().manual_seed(f.shape[1])  # the same x for every adapter of this shape
        x = torch.randn(f.shape[1], 1, generator=gen, dtype=torch.float64)
        out[module] = f.scaled_B().double() @ (f.A.double() @ x)
    return out


def difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest relative difference of two probes over their modules (inf when the modules differ)."""
    if a.keys() != b.keys():
        return float("inf")
    worst = 0.0
    for module, ya in a.items():
        yb = b[module]
        scale = max(float(ya.norm()), float(yb.norm()), 1e-30)
        worst = max(worst, float((ya - yb).norm()) / scale)
    return worst


def find_copies(named_paths: list[tuple[str, Path]]) -> dict[str, tuple[str, float]]:
    """{name: (earlier name with the same weights, probe difference)} for every later copy."""
    seen: list[tuple[str, dict]] = []
    copies: dict[str, tuple[str, float]] = {}
    for name, path in named_paths:
        mine = probe(path)
        if mine is None:
            continue
        for other, theirs in seen:
            diff = difference(mine, theirs)
            if diff < TOLERANCE:
                copies[name] = (other, diff)
                break
        else:
            seen.append((name, mine))
    return copies
