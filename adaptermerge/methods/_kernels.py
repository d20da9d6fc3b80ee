"""Eager kernels of the sparse merges, and the torch.compile fusion of the TIES block.

On the CPU the trim and TIES combination run as one C loop (`_native`) where a C compiler works;
the eager functions here are its reference twins and the path everywhere else. Eager PyTorch runs
a TIES block as a dozen separate passes over [k, rows, in] tensors; on a GPU, fusing those passes
into one loop (torch.compile, Triton) pays for large modules. Compilation costs tens of seconds
once per machine (cached on disk afterwards), so it is used only for large modules, and any
failure to compile falls back to the identical eager code. ADAPTERMERGE_COMPILE=0 turns it off.
"""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)

# Fuse only when a module is at least this large (entries): below it eager is fast enough and a
# compile would cost more than it saves.
COMPILE_MIN_ENTRIES = 8_000_000


def ties_block(values: torch.Tensor, cuts: torch.Tensor, weights: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """TIES on one block of stacked, already weighted deltas `values` [k, rows, in] (`w_i * d_i`):
    keep entries with `|w_i d_i| >= cut_i`, elect the sign of their sum, weighted mean of the
    agreeing ones (divisor: sum of agreeing |w_i|). cuts, weights: [k, 1, 1].
    Writes the merged block into `out` [rows, in] (compiled, straight into the caller's buffer: a
    returned block cost one more pass, 3.4 s of a 32-layer 8B merge) and returns the entries kept
    per adapter [k].

    Written per adapter (a Python loop over k, unrolled when traced) rather than as reductions over
    the stacked axis: compiled, the unrolled form is one vectorized loop over the block's entries,
    2.3x faster here (AVX2, 3 x 128 x 4096 blocks: 0.098 s against 0.222 s per 112 blocks), with
    bit-identical output."""
    n = values.shape[0]
    keeps = [values[i].abs() >= cuts[i] for i in range(n)]
    trimmed = [torch.where(keep, values[i], 0.0) for i, keep in enumerate(keeps)]
    total = trimmed[0]
    for t in trimmed[1:]:
        total = total + t
    sign = total.sign()
    num = den = None
    for i, t in enumerate(trimmed):
        agree = (t * sign) > 0
        part, w = torch.where(agree, t, 0.0), torch.where(agree, weights[i].abs(), 0.0)
        num, den = (part, w) if num is None else (num + part, den + w)
    out.copy_(num / den.clamp_min(1e-30))  # where nothing agrees num is 0
    return torch.stack([keep.sum() for keep in keeps])


def trim_(values: torch.Tensor, cuts: torch.Tensor) -> torch.Tensor:
    """Zero, in place, the entries of each row of `values` [k, N] with |value| < cuts[i]. [k]

    hardshrink keeps |x| > lambda, so lambda is the float just below the cut (keeps |x| >= cut);
    one fast pass per row, written in place, where a mask multiply costs three."""
    below = torch.nextafter(cuts.float(), torch.zeros_like(cuts, dtype=torch.float32))
    for row, lam in zip(values, below.tolist()):
        torch.hardshrink(row, lam, out=row)
    return values


def ties_combine(values: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """Sign election and disjoint weighted mean of trimmed, weighted deltas `values` [k, N]
    (clobbered). Float ops only (eager bool masks cost 3-5x more here): with s = sign(sum_i v_i),
    relu(v_i s) is |v_i| where adapter i agrees and 0 elsewhere, so its sum times s is the sum of
    the agreeing entries and its sign marks them. Equal to `ties_block` up to the rounding of the divisor.

    Sums over the adapters are row by row into preallocated rows, and the sign is applied row by
    row: a reduction over dim 0 or a broadcast multiply costs about twice as much in eager
    PyTorch (1536 x 576 x 3 at one thread: 4.5 ms in all against 7.3 ms)."""
    sign = _row_sum(values, torch.empty_like(values[0])).sign_()
    for row in values:
        row.mul_(sign)
    agree = values.clamp_min_(0)
    num = _row_sum(agree, torch.empty_like(sign)).mul_(sign)
    agree.sign_()
    w = [abs(x) for x in weights]
    den = agree[0].mul_(w[0]) if w[0] != 1.0 else agree[0]  # accumulated in place: rows 1.. are read once
    for row, x in zip(agree[1:], w[1:]):
        den.add_(row, alpha=x)
    return num.div_(den.clamp_min_(1e-30))


def _row_sum(rows: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    torch.add(rows[0], rows[1], out=out) if len(rows) > 1 else out.copy_(rows[0])
    for row in rows[2:]:
        out.add_(row)
    return out


def band_block(values: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact-cut search on one block [k, rows, in]: per adapter the count of |entries| above hi,
    and the mask of entries inside [lo, hi]. lo, hi: [k, 1, 1]. Always eager: compiled, its bool
    outputs and per-adapter reductions ran 2x slower here."""
    a = values.abs()
    return (a > hi).sum((1, 2)), (a >= lo) & (a <= hi)


_compiled: dict = {}
_failed = False


def kernel(fn, entries: int):
    """`fn`, compiled when enabled and the module is large enough; else `fn` itself."""
    if _failed or entries < COMPILE_MIN_ENTRIES or os.environ.get("ADAPTERMERGE_COMPILE", "1") == "0":
        return fn
    if fn not in _compiled:
        compiled = torch.compile(fn, dynamic=True)

        def safe(*args):
            global _failed
            if _failed:
                return fn(*args)
            try:
                return compiled(*args)
            except Exception as exc:  # no C++ compiler, unsupported platform...: eager is identical
                _failed = True
                log.warning("torch.compile unavailable (%s); using eager kernels", type(exc).__name__)
                return fn(*args)

        _compiled[fn] = safe
    return _compiled[fn]
