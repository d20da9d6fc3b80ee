"""Sparse merges computed from the factors, a block of rows at a time.

A dense delta of a 14336 x 4096 weight is 235 MB; TIES on three of them, done tensor-wide, makes
a dozen such temporaries and is memory-bound. Here each adapter's delta is formed block by block
(`B[rows] @ A`, a ~4 MB block that stays in cache), sparsified and combined at once, and only the
merged result is stored. Blocks are fixed by the shape, so results are deterministic.

The top-density threshold of each delta is found exactly without a sort of the whole delta: a
sample of 1M entries (each a dot product `B[i] . A[:, j]`, no dense delta needed) brackets it,
one pass counts the entries above the bracket and keeps the few inside it, and the k-th largest
is selected among those. A missed bracket falls back to the full selection.
"""

from __future__ import annotations

import torch

from . import _ops

BLOCK_ENTRIES = 1 << 20
_SAMPLE = 1_000_000


def row_blocks(out: int, inp: int) -> list[slice]:
    rows = max(1, BLOCK_ENTRIES // max(1, inp))
    return [slice(r, min(out, r + rows)) for r in range(0, out, rows)]


def threshold(B: torch.Tensor, A: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest |entry| of `B @ A`, exactly (B: [out, r] with scale folded in; A: [r, in])."""
    out, inp = B.shape[0], A.shape[1]
    n = out * inp
    if n <= _ops._EXACT_SELECT_MAX or k >= n:
        return _exact(B, A, k)
    gen = torch.Generator(device=B.device).manual_seed(n * 31 + k)
    rows = torch.randint(out, (_SAMPLE,), generator=gen, device=B.device)
    cols = torch.randint(inp, (_SAMPLE,), generator=gen, device=B.device)
    sample = (B[rows] * A[:, cols].T).sum(1).abs()
    q = 1.0 - k / n
    spread = 6.0 * (q * (1 - q) / _SAMPLE) ** 0.5 + 1.0 / _SAMPLE
    lo, hi = torch.quantile(sample, torch.tensor([max(0.0, q - spread), min(1.0, q + spread)], device=B.device))
    above, band = 0, []
    for rs in row_blocks(out, inp):
        block = (B[rs] @ A).abs_()
        above += int((block > hi).sum())
        band.append(block[(block >= lo) & (block <= hi)])
    band = torch.cat(band)
    need = k - above
    if 0 < need <= band.numel():
        return band.kthvalue(band.numel() - need + 1).values
    return _exact(B, A, k)


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
    or "none". combine: "ties" (`_ops.disjoint_mean` of the weighted values) or "sum"
    (`sum_i w_i * t_i`).
    """
    out, inp = Bs[0].shape[0], As[0].shape[1]
    thresholds = None
    if sparsify == "trim" and density < 1.0:
        k = _ops.keep_count(out * inp, density)
        thresholds = [threshold(B, A, k) for B, A in zip(Bs, As)]
    merged = torch.empty(out, inp, dtype=torch.float32, device=Bs[0].device)
    zero = torch.zeros((), dtype=torch.float32, device=Bs[0].device)
    for rs in row_blocks(out, inp):
        values = []
        for i, (B, A, w) in enumerate(zip(Bs, As, weights)):
            block = B[rs] @ A
            if thresholds is not None:
                block = torch.where(block.abs() >= thresholds[i], block, zero)
            elif sparsify == "dare":
                block = _ops.dare(block, density, generators[i])
            values.append(block.mul_(w))
        if combine == "ties":
            merged[rs] = _ops.disjoint_mean(values, weights)
        else:
            merged[rs] = torch.stack(values).sum(0)
    return merged
