"""Sparse merges computed from the factors.

A module whose stacked deltas fit in 64 MB (every module of a 1B model, the attention of an 8B
one) is formed once, cut exactly (radix select, `_select.kth_largest`) and trimmed and combined
in one pass of the fused C loop (`_native`; where it cannot be built, a handful of eager float
passes with no bool masks, whose eager kernels are 3-5x slower).

A larger one (a 14336 x 4096 MLP projection: 235 MB per delta) is never held whole: each row
block (`B[rows] @ A`, ~4 MB per adapter, into one reused buffer) is formed, cut and combined at
once (the same C loop, written straight into the merged rows), and only the merged result is stored. Its cut is found before that pass, one of two ways:
- "sampled" (the default there): a stratified sample of the products (`_select.sampled_kth`)
  estimates it without forming anything; the entries actually kept are counted in the merge pass
  and recorded per module (`density_kept`), so the approximation is reported, never silent.
- "exact": a sample brackets it, one extra pass counts the entries above the bracket and keeps
  the few inside, and the k-th largest is selected among those (full selection if it misses).
Blocks are fixed by the shape, so results are deterministic.
"""

from __future__ import annotations

import torch

from . import _kernels, _native, _ops, _select

BLOCK_ENTRIES = 1 << 20
DENSE_MAX = 1 << 24  # stacked entries (64 MB) up to which a module's deltas are formed at once
THRESHOLDS = ("auto", "exact", "sampled")


def row_blocks(out: int, inp: int) -> list[slice]:
    rows = max(1, BLOCK_ENTRIES // max(1, inp))
    return [slice(r, min(out, r + rows)) for r in range(0, out, rows)]


def sparse_merge(
    Bs: list[torch.Tensor],
    As: list[torch.Tensor],
    weights: list[float],
    *,
    density: float,
    sparsify: str,
    combine: str,
    generators: list[torch.Generator] | None = None,
    threshold: str = "auto",
    seed: int = 0,
) -> tuple[torch.Tensor, dict]:
    """Merge the deltas `Bs[i] @ As[i]` (scales folded into B) into one dense [out, in] tensor.

    sparsify: "trim" (top-density by magnitude, TIES), "dare" (random drop + 1/density rescale)
    or "none". combine: "ties" (sign election + disjoint weighted mean) or "sum" (`sum_i w_i t_i`).
    threshold: how the trim cut is found, "exact", "sampled" or "auto" (exact when the module is
    formed at once, sampled above). Returns the merged delta and what to record about it.
    """
    out, inp = Bs[0].shape[0], As[0].shape[1]
    n = out * inp
    keep = _ops.keep_count(n, density) if sparsify == "trim" and density < 1.0 else None
    # Weights folded into B: the formed values are w_i * d_i, and the cut scales by |w_i|.
    B_stack, A_stack = _stack([B * w for B, w in zip(Bs, weights)], As)
    if len(Bs) * n <= DENSE_MAX and threshold != "sampled":
        values = torch.bmm(B_stack, A_stack).view(len(Bs), n)
        if sparsify == "dare":
            for row, g in zip(values, generators):
                row.copy_(_ops.dare(row, density, g))
        lib = _native.library() if combine == "ties" and _native.usable(values) else None
        if lib is not None:  # the same trim and combine, fused into one pass
            cuts = _select.kth_largest(values, keep) if keep is not None else torch.zeros(len(Bs))
            return _native.ties_combine(lib, values, cuts, weights)[0].view(out, inp), {}
        if keep is not None:
            _kernels.trim_(values, _select.kth_largest(values, keep))
        merged = _kernels.ties_combine(values, weights) if combine == "ties" else values.sum(0)
        return merged.view(out, inp), {}
    info: dict = {}
    if keep is None:
        cuts = torch.zeros(len(Bs), device=Bs[0].device)
    elif threshold == "exact":
        cuts = torch.stack(exact_cuts(Bs, As, keep, seed)) * _abs(weights, Bs[0].device)
    else:
        gen = torch.Generator(device=Bs[0].device).manual_seed(seed)
        cuts = torch.stack([_select.sampled_kth(B, A, keep, gen) for B, A in zip(Bs, As)]) * _abs(weights, Bs[0].device)
        info["threshold"] = "sampled"
    merged, kept = _blocked(B_stack, A_stack, weights, cuts, keep is not None, density, sparsify, combine, generators)
    if "threshold" in info:
        info["density_kept"] = [round(int(c) / n, 6) for c in kept]
    return merged, info


def _blocked(B_stack, A_stack, weights, cuts, trim, density, sparsify, combine, generators):
    """The merge pass over row blocks; returns the merged delta and the entries kept per adapter."""
    k, out, inp = B_stack.shape[0], B_stack.shape[1], A_stack.shape[2]
    device = B_stack.device
    blocks = row_blocks(out, inp)
    buffer = torch.empty(k * (blocks[0].stop - blocks[0].start) * inp, device=device)
    native = _native.library() if combine == "ties" and _native.usable(buffer) else None
    fused = _kernels.kernel(_kernels.ties_block, out * inp) if combine == "ties" and trim and native is None else None
    cuts3, w3 = cuts.view(-1, 1, 1), _abs(weights, device).view(-1, 1, 1)
    kept = torch.zeros(k, dtype=torch.long, device=device)
    merged = torch.empty(out, inp, dtype=torch.float32, device=device)
    for rs in blocks:
        rows = rs.stop - rs.start
        values = torch.bmm(B_stack[:, rs], A_stack, out=buffer[: k * rows * inp].view(k, rows, inp))
        if sparsify == "dare":
            values = torch.stack([_ops.dare(v, density, g) for v, g in zip(values, generators)])
        if native is not None:  # trim (a zero cut keeps every nonzero entry) and combine in one pass
            kept += _native.ties_combine(native, values.view(k, -1), cuts, weights, out=merged[rs])[1]
            continue
        if fused is not None and fused is not _kernels.ties_block:
            kept += fused(values, cuts3, w3, merged[rs])
            continue
        flat = values.view(k, -1)
        if trim:
            _kernels.trim_(flat, cuts)
            kept += torch.count_nonzero(flat, dim=1)
        merged[rs] = (_kernels.ties_combine(flat, weights) if combine == "ties" else flat.sum(0)).view(rows, inp)
    return merged, kept


def _abs(weights: list[float], device) -> torch.Tensor:
    return torch.tensor([abs(w) for w in weights], dtype=torch.float32, device=device)


def exact_cuts(Bs: list[torch.Tensor], As: list[torch.Tensor], k: int, seed: int = 0) -> list[torch.Tensor]:
    """For each adapter, the k-th largest |entry| of `Bs[i] @ As[i]`, exactly, without holding
    the delta: a stratified sample brackets it (+-6 standard errors of the sample quantile), one
    pass over row blocks counts the entries above the bracket and keeps those inside, and the
    k-th largest is selected among them. A missed bracket falls back to selecting over all."""
    out, inp = Bs[0].shape[0], As[0].shape[1]
    n = out * inp
    gen = torch.Generator(device=Bs[0].device).manual_seed(seed)
    samples = [_select.stratified_sample(B, A, gen) for B, A in zip(Bs, As)]
    size = samples[0].numel()
    q = 1.0 - k / n
    spread = 6.0 * (q * (1 - q) / size) ** 0.5 + 1.0 / size
    lo_k = max(1, min(size, int((q - spread) * size)))
    hi_k = max(1, min(size, int((q + spread) * size) + 1))
    stacked = torch.stack(samples)
    lo = stacked.kthvalue(lo_k, dim=1).values.view(-1, 1, 1)
    hi = stacked.kthvalue(hi_k, dim=1).values.view(-1, 1, 1)
    B_stack, A_stack = _stack(Bs, As)
    above = torch.zeros(len(Bs), dtype=torch.long, device=Bs[0].device)
    bands: list[list[torch.Tensor]] = [[] for _ in Bs]
    for rs in row_blocks(out, inp):
        values = torch.bmm(B_stack[:, rs], A_stack)
        count, inside = _kernels.band_block(values, lo, hi)
        above += count
        for i in range(len(Bs)):
            bands[i].append(values[i][inside[i]].abs())
    result = []
    for i, (B, A) in enumerate(zip(Bs, As)):
        band = torch.cat(bands[i])
        need = k - int(above[i])
        if 0 < need <= band.numel():
            result.append(band.kthvalue(band.numel() - need + 1).values)
        else:  # the bracket missed (about 1e-9 odds): select over the whole delta
            full = torch.cat([(B[rs] @ A).abs_().flatten() for rs in row_blocks(out, inp)])
            result.append(_select.kth_largest(full.view(1, -1), k)[0])
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
