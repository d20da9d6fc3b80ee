"""The merge math, written once: small pure torch functions, a tensor in and a tensor out, no I/O.

Each function here is the definition. The fast kernels in `backends` (fused C loops, the compiled
form, in-place eager passes) compute the same thing and are tested bit for bit against these
functions (tests/methods/test_backends.py). The float order is part of the definition: sums over
adapters run in adapter order, one adapter at a time.

Shapes: a delta is [out, in]; a stack of k deltas, flattened, is `values` [k, N]; per-adapter
numbers (weights, cuts, counts) are [k].

Conventions:
- Trim keeps `keep_count(N, density) = round(density * N)` entries (at least 1) of largest |value|:
  everything with |v| >= the k-th largest |v|, so exact ties at the cut are all kept.
- TIES works on weighted values `v_i = w_i * d_i`: the elected sign is that of `sum_i v_i`;
  adapter i agrees where its trimmed v_i has that sign; the divisor is the sum of the agreeing
  |w_i| (a weighted mean, as mergekit; PEFT divides by their count, which differs when weights
  are unequal). Where nothing agrees the result is 0. Without normalizing (mergekit's
  `normalize: false`) the agreeing entries are summed and not divided.
- DARE drops each entry with probability 1 - density and rescales survivors by 1 / density.
- DoRA norms are per output row (`||W||` over the input dimension), PEFT's axis.
"""

from __future__ import annotations

from ..lazy import torch

# Floor of the TIES divisor: where no adapter agrees the numerator is 0 and so is the result.
DIVISOR_FLOOR = 1e-30


def keep_count(numel: int, density: float) -> int:
    """How many entries a top-`density` trim keeps.

    Args:
        numel: entries of one delta.
        density: fraction kept, in (0, 1].
    Returns:
        round(density * numel), clamped to [1, numel].
    """
    return max(1, min(numel, round(density * numel)))


def magnitude_cut(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest |value| of each row: `|v| >= cut` keeps k entries (more only on ties).

    Args:
        values: [m, N] finite float32.
        k: rank of the cut, 1 <= k <= N (1: the largest |value|).
    Returns:
        [m] float32, non-negative (signs, and -0.0, ignored).
    """
    n = values.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    return values.abs().kthvalue(n - k + 1, dim=1).values


def trim(values: torch.Tensor, cuts: torch.Tensor) -> torch.Tensor:
    """Zero the entries below each row's cut (TIES step 1).

    Args:
        values: [k, N].
        cuts: [k]; a cut of 0 keeps every entry.
    Returns:
        [k, N]: `v` where `|v| >= cut`, else 0.
    """
    return torch.where(values.abs() >= cuts[:, None], values, 0.0)


def elect_sign(trimmed: torch.Tensor) -> torch.Tensor:
    """The sign of the summed mass per entry (TIES step 2), summed in adapter order.

    Args:
        trimmed: [k, N] trimmed weighted values.
    Returns:
        [N] in {-1, 0, 1}.
    """
    total = trimmed[0]
    for row in trimmed[1:]:
        total = total + row
    return total.sign()


def disjoint_mean(trimmed: torch.Tensor, sign: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The mean of the entries that agree with `sign`, weighted by |w_i| (TIES step 3).

    The values are already weighted (`w_i * t_i`), so the sum of the agreeing ones divided by
    the sum of the agreeing |w_i| is the weighted mean of the unweighted deltas' signed sizes.

    Args:
        trimmed: [k, N] trimmed weighted values.
        sign: [N] elected sign.
        weights: [k] the adapters' weights.
    Returns:
        [N]; 0 where nothing agrees.
    """
    num = den = None
    for row, w in zip(trimmed, weights.abs()):
        agree = row * sign > 0
        part, share = torch.where(agree, row, 0.0), torch.where(agree, w, 0.0)
        num, den = (part, share) if num is None else (num + part, den + share)
    return num / den.clamp_min(DIVISOR_FLOOR)


def disjoint_sum(trimmed: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """The sum of the entries that agree with `sign`, not divided (TIES step 3 without normalizing).

    Args:
        trimmed: [k, N] trimmed weighted values.
        sign: [N] elected sign.
    Returns:
        [N]; 0 where nothing agrees.
    """
    total = None
    for row in trimmed:
        part = torch.where(row * sign > 0, row, 0.0)
        total = part if total is None else total + part
    return total


def ties(values: torch.Tensor, cuts: torch.Tensor, weights: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """TIES-merging (Yadav et al. 2023) of weighted values: trim, elect sign, disjoint mean.

    Args:
        values: [k, N] weighted deltas `w_i * d_i`.
        cuts: [k] each row's magnitude cut (0: no trim), e.g. `magnitude_cut(values, keep)`.
        weights: [k] the w_i (only |w_i| is used: the divisor).
        normalize: divide by the agreeing |w_i| (`disjoint_mean`); False sums them (`disjoint_sum`).
    Returns:
        [N] the merged delta.
    """
    trimmed = trim(values, cuts)
    if not normalize:
        return disjoint_sum(trimmed, elect_sign(trimmed))
    return disjoint_mean(trimmed, elect_sign(trimmed), weights)


def kept_counts(values: torch.Tensor, cuts: torch.Tensor) -> torch.Tensor:
    """Entries each row keeps after `trim` (nonzero survivors). [k, N], [k] -> [k] int64"""
    return torch.count_nonzero(trim(values, cuts), dim=1)


def dare(delta: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """DARE (Yu et al. 2023): drop each entry with probability 1 - density, rescale survivors.

    Args:
        delta: any shape.
        density: keep probability in (0, 1]; 1 returns `delta` itself.
        generator: the random bits (seeded by the caller: reproducible merges).
    Returns:
        a tensor like `delta`: `delta / density` where kept, else 0; its expectation is `delta`.
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")  # 0 would divide by zero
    if density == 1.0:
        return delta
    keep = torch.rand(delta.shape, generator=generator, device=delta.device, dtype=torch.float32) < density
    return torch.where(keep, delta / density, torch.zeros((), dtype=delta.dtype, device=delta.device))


def row_norm(weight: torch.Tensor) -> torch.Tensor:
    """The L2 norm of each output row of a Linear weight, PEFT's DoRA norm axis. [out, in] -> [out]"""
    return torch.linalg.vector_norm(weight, dim=1)


def dora_weight(base: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """The weight a DoRA layer computes: `magnitude * (W0 + delta) / ||W0 + delta||_row`.

    Args:
        base: W0 [out, in]; delta: [out, in]; magnitude: [out].
    Returns:
        [out, in]; with `magnitude = row_norm(W0 + delta)` it is `W0 + delta`.
    """
    w = base + delta
    return w * (magnitude / row_norm(w))[:, None]
