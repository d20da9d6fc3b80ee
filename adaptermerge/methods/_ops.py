"""The merge math: small pure tensor functions, no I/O, no modules.

Shapes: a delta is [out, in]; a stack of k deltas is [k, out, in]; weights are [k].
"""

from __future__ import annotations

import torch

def keep_count(numel: int, density: float) -> int:
    """How many entries a top-`density` trim keeps: round(density * numel), at least 1."""
    return max(1, min(numel, round(density * numel)))


def magnitude_threshold(delta: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest |entry| of `delta`, exactly, so that `|delta| >= t` keeps k entries
    (more only on exact ties). A radix select (`_select.kth_largest`), not a full sort."""
    from ._select import kth_largest

    x = delta.float().reshape(1, -1)
    return kth_largest(x, min(k, x.shape[1]))[0]


def trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the top-`density` fraction of entries by magnitude, zero the rest (TIES step 1)."""
    if density >= 1.0:
        return delta
    t = magnitude_threshold(delta, keep_count(delta.numel(), density))
    return torch.where(delta.abs() >= t, delta, torch.zeros((), dtype=delta.dtype, device=delta.device))


def dare(delta: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """DARE (Yu et al. 2023): drop each entry with probability 1 - density, rescale survivors by
    1/density so the expected delta is unchanged. density must be in (0, 1]; 1 is the identity."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")  # 0 would divide by zero
    if density == 1.0:
        return delta
    keep = torch.rand(delta.shape, generator=generator, device=delta.device, dtype=torch.float32) < density
    return torch.where(keep, delta / density, torch.zeros((), dtype=delta.dtype, device=delta.device))


def ties(deltas: list[torch.Tensor], weights: list[float], density: float) -> torch.Tensor:
    """TIES-merging (Yadav et al. 2023) of dense deltas [out, in]: trim each to its top-`density`
    entries by magnitude, elect the sign of `sum_i w_i t_i` per entry, and take the weighted mean
    of the agreeing entries, divided by the sum of the agreeing |w_i| (mergekit's divisor; PEFT
    divides by their count, which equals this only when all weights are 1)."""
    from ._kernels import ties_combine, trim_

    values = torch.stack([d.float().flatten() * w for d, w in zip(deltas, weights)])
    if density < 1.0:
        k = keep_count(values.shape[1], density)
        trim_(values, torch.stack([magnitude_threshold(d, k) * abs(w) for d, w in zip(deltas, weights)]))
    return ties_combine(values, weights).view_as(deltas[0])


def row_norm(weight: torch.Tensor) -> torch.Tensor:
    """L2 norm of each output row of a Linear weight [out, in] -> [out]: PEFT's DoRA norm axis
    (`||W||` over the input dimension, one magnitude per output feature)."""
    return torch.linalg.vector_norm(weight, dim=1)


def dora_weight(base: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """The weight a DoRA layer computes: `magnitude * (W0 + delta) / ||W0 + delta||_row`."""
    w = base + delta
    return w * (magnitude / row_norm(w))[:, None]


def dora_split(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W -> (magnitude [out], direction [out, in] with unit rows); `recombine` inverts it."""
    m = row_norm(weight)
    return m, weight / m[:, None]
