"""Sparse merges computed from the factors, a block of rows at a time.

A dense delta of a 14336 x 4096 weight is 235 MB; TIES on three of them, done tensor-wide, makes
a dozen such temporaries and is memory-bound. Here each adapter's delta is formed block by block
(`B[rows] @ A`, a ~4 MB block that stays in cache), sparsified and combined at once, and only the
merged result is stored. Blocks are fixed by the shape, so results are deterministic.

The top-density threshold of each delta is found exactly. A module small enough to form all its
deltas at once (up to 16M stacked entries) gets one kthvalue over them. A larger one is never
sorted whole: a sample of up to 1M entries (each a dot product `B[i] . A[:, j]`) brackets the
threshold, one pass counts the entries above the bracket and keeps the few inside it, and the
k-th largest is selected among those. A missed bracket falls back to the full selection.
"""

from __future__ import annotations

import torch

from . import _kernels, _ops

BLOCK_ENTRIES = 1 << 20
_SAMPLE = 1_000_000
_EXACT_MAX = 200_000  # below this a full kthvalue is as cheap as the bracket
_DENSE_MAX = 1 << 24  # entries of all stacked deltas (64 MB) up to which they are formed at once


def row_blocks(out: int, inp: int) -> list[slice]:
    rows = max(1, BLOCK_ENTRIES // max(1, inp))
    return [slice(r, min(out, r + rows)) for r in range(0, out, rows)]


def thresholds(Bs: list[torch.Tensor], As: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """For each adapter, the k-th largest |entry| of `Bs[i] @ As[i]`, exactly (scale folded into B)."""
    out, inp = Bs[0].shape[0], As[0].shape[1]
    n = out * inp
    if n <= _EXACT_MAX or k >= n:
        return [_exact(B, A, k) for B, A in zip(Bs, As)]
    device = Bs[0].device
    B_stack, A_stack = _stack(Bs, As)
    blocks = row_blocks(out, inp)
    if len(Bs) * n <= _DENSE_MAX:
        # Small modules: form every delta from the same row blocks as sparse_merge (so the values
        # compared there are bit-identical) and select exactly. One kthvalue over the formed deltas
        # is about twice as fast here as the bracket's sample, counting and band passes.
        full = torch.cat([torch.bmm(B_stack[:, rs], A_stack) for rs in blocks], dim=1).view(len(Bs), -1).abs_()
        return list(full.kthvalue(n - k + 1, dim=1).values)
    size = min(_SAMPLE, max(20_000, n // 16))  # the band to select in shrinks with sqrt(size)
    gen = torch.Generator(device=device).manual_seed(n * 31 + k)
    rows = torch.randint(out, (size,), generator=gen, device=device)
    cols = torch.randint(inp, (size,), generator=gen, device=device)
    q = 1.0 - k / n
    spread = 6.0 * (q * (1 - q) / size) ** 0.5 + 1.0 / size
    # bracket = the sample's order statistics at q -+ spread (kthvalue: quantile sorts the sample)
    lo_k = max(1, min(size, int((q - spread) * size)))
    hi_k = max(1, min(size, int((q + spread) * size) + 1))
    samples = torch.stack([(B[rows] * A.T[cols]).sum(1).abs_() for B, A in zip(Bs, As)])
    lo = samples.kthvalue(lo_k, dim=1).values.view(-1, 1, 1)
    hi = samples.kthvalue(hi_k, dim=1).values.view(-1, 1, 1)
    search = _kernels.kernel(_kernels.band_block, n)
    above = torch.zeros(len(Bs), dtype=torch.long, device=device)
    bands: list[list[torch.Tensor]] = [[] for _ in Bs]
    for rs in blocks:
        values = torch.bmm(B_stack[:, rs], A_stack)
        count, inside = search(values, lo, hi)
        above += count
        for i in range(len(Bs)):
            bands[i].append(values[i][inside[i]].abs())
    result = []
    for i, (B, A) in enumerate(zip(Bs, As)):
        band = torch.cat(bands[i])
        need = k - int(above[i])
        ok = 0 < need <= band.numel()
        result.append(band.kthvalue(band.numel() - need + 1).values if ok else _exact(B, A, k))
    return result


def _stack(Bs, As) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack factors of different ranks, zero-padded to a common r (zeros add nothing). [k, out, r], [k, r, in]"""
    r = max(B.shape[1] for B in Bs)
    B_stack = torch.zeros(len(Bs), Bs[0].shape[0], r, device=Bs[0].device)
    A_stack = torch.zeros(len(As), r, As[0].shape[1], device=As[0].device)
    for i, (B, A) in enumerate(zip(Bs, As)):
        B_stack[i, :, : B.shape[1]] = B
        A_stack[i, : A.shape[0]] = A
    return B_stack, A_stack


def _exact(B: torch.Tensor, A: torch.Tensor, k: int) -> torch.Tensor:
    # Built from the same row blocks as sparse_merge, so the values compared are bit-identical.
    full = torch.cat([(B[rs] @ A).abs_().flatten() for rs in row_blocks(B.shape[0], A.shape[1])])
    return full.kthvalue(full.numel() - k + 1).values if k < full.numel() else full.min()


def sparse_merge(
    Bs: list[torch.Tensor],
    As: list[torch.Tensor],
    weights: list[float],
    *,
    density: float,
    sparsify: str,
    combine: str,
    generators: list[torch.Generator] | None = None,
) -> torch.Tensor:
    """Merge the deltas `Bs[i] @ As[i]` into one dense [out, in] tensor, block by block.

    sparsify: "trim" (top-density by magnitude, TIES), "dare" (random drop + 1/density rescale)
    or "none". combine: "ties" (sign election + disjoint weighted mean) or "sum"
    (`sum_i w_i * t_i`). The adapters are stacked so each step is one tensor op over all of them.
    """
    out, inp = Bs[0].shape[0], As[0].shape[1]
    device = Bs[0].device
    k = len(Bs)
    w = torch.tensor(weights, dtype=torch.float32, device=device).view(-1, 1, 1)
    if sparsify == "trim" and density < 1.0:
        cut = torch.stack(thresholds(Bs, As, _ops.keep_count(out * inp, density))).view(-1, 1, 1)
    else:
        cut = torch.zeros(k, 1, 1, device=device)  # keep everything
    # Weights folded into B: the blocks come out as w_i * d_i (the threshold test scales by |w_i|).
    B_stack, A_stack = _stack([B * wi for B, wi in zip(Bs, weights)], As)
    ties = _kernels.kernel(_kernels.ties_block, out * inp)
    merged = torch.empty(out, inp, dtype=torch.float32, device=device)
    for rs in row_blocks(out, inp):
        values = torch.bmm(B_stack[:, rs], A_stack)  # [k, rows, in]
        if sparsify == "dare":
            values = torch.stack([_ops.dare(v, density, g) for v, g in zip(values, generators)])
        if combine == "ties":
            merged[rs] = ties(values, cut, w)
        else:
            merged[rs] = values.sum(0)
    return merged
