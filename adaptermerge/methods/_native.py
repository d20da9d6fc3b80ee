"""The NATIVE backend (see backends.py): the fused CPU loops of `_native.c`, an optional C
extension (`_native_ext`) built when the package is installed, where a C compiler is there.

Why: a TIES merge of small modules (SmolLM2-135M's, every module of a 1B model) is a dozen eager
PyTorch passes per module, each one a kernel launch over a few MB with no arithmetic to speak of.
In C the trim, sign election and weighted mean are one pass over the stacked deltas, and the
radix select of the cut two (docs/benchmarks.md has the figures). The extension releases the GIL
while a loop runs, so merge workers run them side by side.

Built with portable flags, it carries baseline, AVX2 and AVX-512 variants of each loop (x86-64,
GCC or Clang) and runs the best this CPU supports. ADAPTERMERGE_NATIVE=0 turns it off, and
ADAPTERMERGE_NATIVE=avx2 (or baseline) caps the variant: for tests and for measuring what an
older CPU would get. Where the extension is missing (no compiler at install time, or turned off)
`library()` is None and the pure-PyTorch backends run: the results are bit-identical (the C code
keeps the reference's float order), with one debug log line.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from ..lazy import torch

log = logging.getLogger(__name__)

_state: dict = {}


@dataclass(frozen=True)
class Kernels:
    """The extension's functions and the variant of its loops to run (an index into `isas`)."""

    kth_largest: Callable
    ties_combine: Callable
    isas: tuple[str, ...]  # the variants this CPU runs, lowest first
    isa: int

    @property
    def isa_name(self) -> str:
        return self.isas[self.isa]


def library() -> Kernels | None:
    """The compiled kernels, or None where the extension is absent or turned off (then callers
    run the PyTorch backends). Looked up once per process and per ADAPTERMERGE_NATIVE setting."""
    setting = os.environ.get("ADAPTERMERGE_NATIVE", "1")
    if setting not in _state:
        _state[setting] = _load(setting)
    return _state[setting]


def _load(setting: str) -> Kernels | None:
    if setting == "0":
        return None
    try:
        from ._native_ext import isas, kth_largest, ties_combine
    except ImportError as exc:  # not built (no compiler at install time): an expected set-up
        log.debug("fused CPU kernels not built (%s); using the PyTorch kernels", exc)
        return None
    names = tuple(isas())
    isa = len(names) - 1
    if setting in names:
        isa = names.index(setting)
    elif setting != "1":
        log.debug("ADAPTERMERGE_NATIVE=%s is not a variant this CPU runs (%s); using %s", setting, ", ".join(names), names[isa])
    return Kernels(kth_largest, ties_combine, names, isa)


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the C loops can read these tensors in place."""
    return all(t.is_cpu and t.dtype == torch.float32 and t.is_contiguous() for t in tensors)


def kth_largest(lib: Kernels, values: torch.Tensor, k: int) -> torch.Tensor:
    """`math.magnitude_cut` of a contiguous float32 CPU [m, N]. [m]"""
    m, n = values.shape
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    result = torch.empty(m, dtype=torch.float32)
    lib.kth_largest(values.data_ptr(), m, n, k, result.data_ptr(), lib.isa)
    return result


def ties_combine(
    lib: Kernels, values: torch.Tensor, cuts: torch.Tensor, weights: list[float], out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`math.ties` and `math.kept_counts` of weighted deltas `values` [k, N] (contiguous float32
    CPU; not modified) at `cuts` [k], into `out` [N] (contiguous float32; a new tensor if None).
    Returns the merged [N] and the entries kept per adapter [k]."""
    k, n = values.shape
    cuts = cuts.float().contiguous()
    w = struct.pack(f"{k}f", *[abs(x) for x in weights])  # torch.tensor(list) costs more, all of it under the GIL
    out = torch.empty(n, dtype=torch.float32) if out is None else out.view(n)
    kept = torch.empty(k, dtype=torch.int64)
    lib.ties_combine(values.data_ptr(), k, n, cuts.data_ptr(), w, out.data_ptr(), kept.data_ptr(), lib.isa)
    return out, kept
