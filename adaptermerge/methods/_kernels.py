"""Block kernels of the sparse merges, fused with torch.compile when it pays.

Eager PyTorch runs a TIES block as a dozen separate passes over [k, rows, in] tensors; the merge
of large modules is memory-bound, and fusing those passes into one loop (torch.compile's C++/
OpenMP code on the CPU, Triton on CUDA) makes it ~7x faster here. Compilation costs tens of
seconds once per machine (cached on disk afterwards), so it is used only for large modules, and
any failure to compile falls back to the identical eager code. ADAPTERMERGE_COMPILE=0 turns it off.
"""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)

# Fuse only when a module is at least this large (entries): below it eager is fast enough and a
# compile would cost more than it saves.
COMPILE_MIN_ENTRIES = 8_000_000


def ties_block(values: torch.Tensor, thresholds: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """TIES on one block of stacked, already weighted deltas `values` [k, rows, in] (`w_i * d_i`):
    keep entries with `|w_i d_i| >= |w_i| t_i`, elect the sign of their sum, weighted mean of the
    agreeing ones (divisor: sum of agreeing |w_i|). thresholds, weights: [k, 1, 1]."""
    v = values * (values.abs() >= thresholds * weights.abs())
    agree = (v * v.sum(0).sign()) > 0
    num = (v * agree).sum(0)
    den = (agree * weights.abs()).sum(0)
    return num / den.clamp_min(1e-30)  # where nothing agrees num is 0


def band_block(values: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Threshold search on one block [k, rows, in]: per adapter the count of |entries| above hi,
    and the mask of entries inside [lo, hi]. lo, hi: [k, 1, 1]."""
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
