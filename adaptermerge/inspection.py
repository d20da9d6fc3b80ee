"""What is in an adapter: per-module rank, alpha, scale, shape, delta norm, DoRA."""

from __future__ import annotations

import torch

from .adapter import Adapter
from .engine import natural_key


def delta_norm(factors) -> float:
    """||scale * B @ A||_F without forming the dense delta: sqrt(trace((B^T B)(A A^T))) * scale.
    For a DoRA module this is the LoRA part only: its magnitude vector also rescales the rows of
    W0 + delta, and that change depends on the base weights, which inspect does not read."""
    B, A = factors.B.double(), factors.A.double()
    gram = (B.T @ B) * (A @ A.T)
    return float(gram.sum().clamp_min(0).sqrt()) * abs(factors.scale)


def describe(adapter: Adapter) -> dict:
    rows = []
    for module in sorted(adapter.modules, key=natural_key):
        spec = adapter.specs[module]
        f = adapter.factors(module)
        rows.append(
            {
                "module": module,
                "rank": spec.rank,
                "alpha": spec.alpha,
                "scale": spec.scale,
                "shape": list(spec.shape),
                "delta_norm": delta_norm(f),
                "dora": f.is_dora,
                "magnitude_mean": float(f.magnitude.float().mean()) if f.is_dora else None,
            }
        )
    norms = torch.tensor([r["delta_norm"] for r in rows])
    return {
        "name": adapter.name,
        "source": str(adapter.source) if adapter.source else None,
        "base_model": adapter.base_model,
        "dora": adapter.is_dora,
        "rslora": bool(adapter.config.get("use_rslora")),
        "dtype": str(adapter.dtype).replace("torch.", ""),
        "modules": len(rows),
        "ranks": sorted({r["rank"] for r in rows}),
        "parameters": sum(r["rank"] * sum(r["shape"]) for r in rows),
        "total_delta_norm": float(norms.pow(2).sum().sqrt()),
        "per_module": rows,
    }
