"""The top-density magnitude cut of a delta: its k-th largest |entry|.

Two ways, both pure tensor functions:

- `kth_largest` is exact. A radix select on the float bits: with the sign bit cleared, float32
  bit patterns sort as |x| does, so one bincount over the top 16 bits (exponent and 7 mantissa
  bits, read as int16 halves: no |x| pass, half the bytes) finds the bin holding the k-th value,
  and a kthvalue among the entries of that one bin (a few thousand) finishes it. About 4x faster
  here than kthvalue over the whole delta, which is a full quickselect per row.
- `sampled_kth` estimates it from a stratified sample of the factors' products without forming
  the delta: every row once, each group of rows against its own random columns. Used for very
  large modules, where an exact cut needs an extra pass over the formed deltas; the realized
  density is then measured in the merge pass and recorded, so the approximation is reported,
  never silent.
"""

from __future__ import annotations

import sys

import torch

_BITS = 16  # histogram on the top 16 bits: 1 sign (cleared) + 8 exponent + 7 mantissa
SAMPLE_COLUMNS = 128  # sampled columns per group of rows in `stratified_sample`
_GROUP_ROWS = 8


def kth_largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest |value| of each row of `values` [m, N] (finite float32; signs ignored),
    exactly: `values[i].abs() >= result[i]` keeps k entries of row i, more only on exact ties. [m]"""
    a = values.detach().contiguous()
    m, n = a.shape
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    if a.device.type == "cpu" and a.dtype == torch.float32:
        from . import _native

        lib = _native.library()
        if lib is not None:
            return _native.kth_largest(lib, a, k)
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


def stratified_sample(B: torch.Tensor, A: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """|entries| of `B @ A` ([out, r] @ [r, in]) at `~out * SAMPLE_COLUMNS` positions, without
    forming it: each group of 8 rows times its own 128 random columns. [size]

    Every row is sampled equally (row scales differ a lot in a trained B, and an iid sample would
    weigh them by chance), and 16 column draws per row average the column effects (column norms
    of A differ too): on a 14336 x 4096 product the kept density's standard deviation over seeds
    was 0.00027 at density 0.2, as for an iid sample of the same size (0.00032); groups of 64 rows
    x 64 columns gave 0.00055.
    """
    out, inp = B.shape[0], A.shape[1]
    groups = -(-out // _GROUP_ROWS)
    rows = B[torch.arange(groups * _GROUP_ROWS, device=B.device) % out]  # the last group wraps around
    cols = torch.randint(inp, (groups, SAMPLE_COLUMNS), generator=generator, device=B.device)
    A_cols = A.T[cols].transpose(1, 2)  # [groups, r, columns]
    return torch.bmm(rows.view(groups, _GROUP_ROWS, -1), A_cols).abs_().view(-1)


def sampled_kth(B: torch.Tensor, A: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """An estimate of the k-th largest |entry| of `B @ A`: the same quantile of `stratified_sample`
    (1.8M entries for a 14336-row module: at density 0.2 a standard deviation near 0.0003)."""
    sample = stratified_sample(B, A, generator)
    n = B.shape[0] * A.shape[1]
    return kth_largest(sample.view(1, -1), max(1, min(sample.numel(), round(k / n * sample.numel()))))[0]
