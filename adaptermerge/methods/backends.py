"""The fast kernels of the merge math: backends of `math.magnitude_cut` and `math.ties`.

Each backend gives bit for bit what the reference function in `math` gives (the float order is
the same; tests/methods/test_backends.py checks it on adversarial inputs). Which one runs is a
`Backend`, chosen by `choose` from the tensor and the module size:

- NATIVE: the fused C loops of `_native.c` (CPU, float32, contiguous), an optional extension
  built at install time. Trim, sign election and weighted mean in one pass, the cut by a radix
  select in two: 3-4x the eager speed (see _native.py). The CPU path wherever it was built.
- COMPILED: `math.ties` itself through torch.compile (Triton on a GPU, C++ on a CPU): its
  per-adapter loop unrolls into one fused loop over the block's entries. Only for modules of
  COMPILE_MIN_ENTRIES or more: compiling costs tens of seconds once per machine (then cached).
  A failed compilation falls back to EAGER for the rest of the process, with a warning.
- EAGER: the same math in fewer eager passes: an in-place trim (hardshrink) and a sign election
  written as float ops with no bool masks (bool masks cost 3-5x more in eager PyTorch), and the
  cut by a radix select on the float bits. Any device.
- REFERENCE: `math` as written. The definition; slow (7x EAGER on a CPU), for tests.

ADAPTERMERGE_NATIVE=0 and ADAPTERMERGE_COMPILE=0 rule out NATIVE and COMPILED (ADAPTERMERGE_NATIVE=avx2
or baseline keeps NATIVE at that instruction set).
"""

from __future__ import annotations

import enum
import logging
import os
import sys

from ..lazy import torch
from . import _native, math

log = logging.getLogger(__name__)

# Compile only for modules at least this large (entries): below it eager is fast enough and a
# compilation would cost more than it saves.
COMPILE_MIN_ENTRIES = 8_000_000


class Backend(enum.Enum):
    REFERENCE = "reference"
    EAGER = "eager"
    NATIVE = "native"
    COMPILED = "compiled"


def choose(values: torch.Tensor, entries: int | None = None) -> Backend:
    """The fastest backend for `values` (the stacked deltas, or a block of them): NATIVE where
    usable, else COMPILED when the module (`entries`, default the entries of `values`) is large
    enough and compiling works, else EAGER."""
    if _native.usable(values) and _native.library() is not None:
        return Backend.NATIVE
    entries = values.numel() if entries is None else entries
    if entries >= COMPILE_MIN_ENTRIES and not _compile_failed and os.environ.get("ADAPTERMERGE_COMPILE", "1") != "0":
        return Backend.COMPILED
    return Backend.EAGER


def magnitude_cut(values: torch.Tensor, k: int, backend: Backend | None = None) -> torch.Tensor:
    """`math.magnitude_cut`: the k-th largest |value| of each row of `values` [m, N]. [m]"""
    if backend is None:  # the fast selects read float32 bits; other dtypes take the reference
        backend = choose(values) if values.dtype == torch.float32 else Backend.REFERENCE
    if backend is Backend.REFERENCE:
        return math.magnitude_cut(values, k)
    a = values.detach().contiguous()
    if backend is Backend.NATIVE:
        return _native.kth_largest(_native_library(a), a, k)
    if a.dtype != torch.float32:
        raise ValueError(f"the radix select reads float32, got {a.dtype}")
    return _radix_kth(a, k)  # EAGER, and COMPILED (no compiled select: eager is its fast form)


def ties(
    values: torch.Tensor, cuts: torch.Tensor, weights: list[float], *, out: torch.Tensor | None = None,
    backend: Backend | None = None, entries: int | None = None, normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`math.ties` of weighted values [k, N] at `cuts` [k], and `math.kept_counts`.

    values is read, never written. out: [N] (or any view of N contiguous entries) to write the
    result into, else a new tensor. entries: the module's size, for `choose` (default N * k).
    normalize=False (the undivided sum) runs EAGER or REFERENCE: the fused kernels always divide.
    Returns (merged [N], entries kept per adapter [k] int64)."""
    backend = backend or choose(values, entries)
    if not normalize:
        backend = Backend.REFERENCE if backend is Backend.REFERENCE else Backend.EAGER
    n = values.shape[1]
    if backend is Backend.NATIVE:
        values = values.contiguous()
        return _native.ties_combine(_native_library(values, *([] if out is None else [out])), values, cuts, weights, out=out)
    target = torch.empty(n, dtype=torch.float32, device=values.device) if out is None else out.view(n)
    if backend is Backend.COMPILED and not _compile_failed:
        w = torch.tensor(weights, dtype=torch.float32, device=values.device)
        try:
            return target, _compiled_ties()(values, cuts.to(values.device, torch.float32), w, target)
        except Exception as exc:  # no C++ compiler, an unsupported platform...: EAGER is identical
            _compile_failed_now(exc)
    if backend is Backend.REFERENCE:
        target.copy_(math.ties(values, cuts, torch.tensor(weights, dtype=torch.float32, device=values.device), normalize))
        return target, math.kept_counts(values, cuts)
    trimmed = _trim(values.clone(), cuts)
    kept = torch.count_nonzero(trimmed, dim=1)
    target.copy_(_eager_ties_combine(trimmed, weights, normalize))
    return target, kept


def _native_library(*tensors: torch.Tensor):
    """The C loops, for tensors they can read in place; an error rather than a wild read."""
    lib = _native.library()
    if lib is None or not _native.usable(*tensors):
        raise ValueError("the native backend needs the built extension and contiguous float32 CPU tensors")
    return lib


# -- EAGER --------------------------------------------------------------------------------------

_BITS = 16  # the radix select's histogram: 1 sign (cleared) + 8 exponent + 7 mantissa bits


def _radix_kth(a: torch.Tensor, k: int) -> torch.Tensor:
    """`math.magnitude_cut` of a contiguous float32 [m, N] by a radix select: with the sign bit
    cleared, float32 bit patterns sort as |x| does, so one bincount over the top 16 bits (read as
    int16 halves: no |x| pass, half the bytes) finds the bin holding the k-th value, and a
    kthvalue among that bin's entries (a few thousand) finishes it. About 4x faster than
    kthvalue over the whole row, a full quickselect."""
    m, n = a.shape
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    high = _high_halves(a)  # [m, N] int16: sign, exponent and 7 mantissa bits of each entry
    bins = 1 << (_BITS - 1)
    # Reused per row: fresh temporaries cost more in page faults than the ops themselves.
    top = torch.empty(n, dtype=high.dtype, device=a.device)
    in_bin = torch.empty(n, dtype=torch.bool, device=a.device)
    result = []
    for i in range(m):
        top.copy_(high[i]).bitwise_and_(bins - 1)  # |x|'s top bits: the sign bit cleared (2 passes beat 1 strided and)
        j, above = _bin_of_kth(torch.bincount(top, minlength=bins), k)
        band = a[i][torch.eq(top, bins - 1 - j, out=in_bin)].abs()
        result.append(band.kthvalue(band.numel() - (k - above) + 1).values)
    return torch.stack(result)


def _bin_of_kth(counts: torch.Tensor, k: int) -> tuple[int, int]:
    """From a histogram over the top bits (ascending), the bin holding the k-th largest, counted
    from the top, and how many entries lie in the bins above it."""
    from_top = counts.flip(0).cumsum(0)  # entries in this bin or above
    j = int(torch.searchsorted(from_top, k))  # the first bin, from the top, reaching k entries
    return j, int(from_top[j - 1]) if j else 0


def _high_halves(a: torch.Tensor) -> torch.Tensor:
    """The top 16 bits of each float32 of `a` [m, N], as int16 [m, N] (a strided view where the
    bytes are little-endian: the high half is every second int16; else shifted out of int32)."""
    if sys.byteorder == "little":
        return a.view(torch.int16).view(*a.shape, 2)[..., 1]
    return torch.bitwise_right_shift(a.view(torch.int32), 16).to(torch.int16)


def _trim(values: torch.Tensor, cuts: torch.Tensor) -> torch.Tensor:
    """`math.trim`, in place on `values` [k, N]: hardshrink keeps |x| > lambda, so lambda is the
    float just below the cut. One pass per row, where a mask multiply costs three."""
    cuts = cuts.float()
    below = torch.nextafter(cuts, torch.zeros_like(cuts))
    for row, cut, lam in zip(values, cuts.tolist(), below.tolist()):
        if cut > 0:  # a zero cut keeps every entry, -0.0 included, as math.trim does
            torch.hardshrink(row, lam, out=row)
    return values


def _eager_ties_combine(values: torch.Tensor, weights: list[float], normalize: bool = True) -> torch.Tensor:
    """`math.elect_sign` then `math.disjoint_mean` of trimmed values [k, N] (clobbered), as float
    ops: with s the elected sign, relu(v_i s) is |v_i| where adapter i agrees and 0 elsewhere, so
    its sum times s is the sum of the agreeing entries and its sign marks them.

    Sums over the adapters go row by row into preallocated rows, and the sign is applied row by
    row: a reduction over dim 0 or a broadcast multiply costs about twice as much in eager
    PyTorch (1536 x 576 x 3 at one thread: 4.5 ms in all against 7.3 ms)."""
    sign = _row_sum(values, torch.empty_like(values[0])).sign_()
    for row in values:
        row.mul_(sign)
    agree = values.clamp_min_(0)
    num = _row_sum(agree, torch.empty_like(sign)).mul_(sign)
    if not normalize:  # math.disjoint_sum
        return num.add_(0.0)
    agree.sign_()
    w = [abs(x) for x in weights]
    den = agree[0].mul_(w[0]) if w[0] != 1.0 else agree[0]  # accumulated in place: rows 1.. are read once
    for row, x in zip(agree[1:], w[1:]):
        den.add_(row, alpha=x)
    # + 0.0 turns the -0.0 left where every input was -0.0 (relu keeps it) into math's +0.0.
    return num.div_(den.clamp_min_(math.DIVISOR_FLOOR)).add_(0.0)


def _row_sum(rows: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    torch.add(rows[0], rows[1], out=out) if len(rows) > 1 else out.copy_(rows[0])
    for row in rows[2:]:
        out.add_(row)
    return out


# -- COMPILED -----------------------------------------------------------------------------------


def _ties_into(values: torch.Tensor, cuts: torch.Tensor, weights: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """`math.ties` written straight into `out` (compiled, the copy fuses into the loop: a
    returned block cost one more pass, 3.4 s of a 32-layer 8B merge), and the kept counts."""
    out.copy_(math.ties(values, cuts, weights))
    return math.kept_counts(values, cuts)


_compiled: list = []
_compile_failed = False


def _compiled_ties():
    if not _compiled:
        _compiled.append(torch.compile(_ties_into, dynamic=True))
    return _compiled[0]


def _compile_failed_now(exc: Exception) -> None:
    """Stop compiling for the rest of the process: EAGER runs instead, with the same results."""
    global _compile_failed
    _compile_failed = True
    log.warning("torch.compile unavailable (%s); using eager kernels", type(exc).__name__)
