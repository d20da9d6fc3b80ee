"""What a merge method is, and what it gives back for one module.

A method has a name, a frozen Params dataclass (validated on construction, each field documented
in its `metadata["help"]`), and `merge_module(inputs, weights, base_weight, params, ctx)`.
It returns a ModuleResult: either an exact low-rank sum of factor pairs (linear families) or a
dense delta (sparse families), plus a DoRA magnitude when the result is a DoRA layer.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol

from ..errors import AdapterMergeError
from ..lazy import torch

if TYPE_CHECKING:  # the registry describes methods without loading adapters (or torch)
    from ..adapter import LoraFactors


@dataclass
class ModuleResult:
    """One module's merged update.

    terms: exact low-rank form, `delta = sum_j B_j @ A_j` (scales folded into B_j) # [out, r_j], [r_j, in]
    dense: the delta itself when it is not low rank # [out, in]
    magnitude: DoRA magnitude [out]; the layer's weight is then `m * (W0 + delta) / ||W0 + delta||_row`
    concat: keep `terms` as they are (exact concatenation) instead of recompressing them
    sketch: rows spanning the inputs' row spaces [R, in] (the stacked A factors): a far better
        test matrix than a random one for the truncated SVD of a dense merge of those inputs
    """

    terms: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    dense: torch.Tensor | None = None
    magnitude: torch.Tensor | None = None
    concat: bool = False
    sketch: torch.Tensor | None = None
    info: dict = field(default_factory=dict)

    def delta(self) -> torch.Tensor:
        if self.dense is not None:
            return self.dense
        assert self.terms, "a ModuleResult needs terms or dense"
        out = self.terms[0][0] @ self.terms[0][1]
        for B, A in self.terms[1:]:
            out.addmm_(B, A)
        return out


@dataclass(frozen=True)
class MergeContext:
    module: str
    seed: int
    device: torch.device
    prepared: object = None  # what the method's optional `prepare(plan)` returned (e.g. calibration Grams)

    def seed_for(self, index: int) -> int:
        """The seed of adapter `index` (-1: the module's own) at this module: the same whatever the module order."""
        return zlib.crc32(f"{self.seed}:{self.module}:{index}".encode())

    def generator(self, index: int) -> torch.Generator:
        """A generator seeded with `seed_for(index)`."""
        return torch.Generator(device=self.device).manual_seed(self.seed_for(index))


class MergeMethod(Protocol):
    name: ClassVar[str]
    summary: ClassVar[str]
    Params: ClassVar[type]
    accepts_dora: ClassVar[bool]
    output_exact: ClassVar[bool]  # True when the adapter output is exactly the merge (no truncation)

    def needs_base(self, adapters) -> bool: ...

    # Optional: `prepare(plan)` runs once before the modules (e.g. to collect calibration
    # statistics); its result reaches merge_module as `ctx.prepared`.

    def merge_module(
        self,
        inputs: list[LoraFactors | None],
        weights: list[float],
        base_weight: torch.Tensor | None,
        params,
        ctx: MergeContext,
    ) -> ModuleResult: ...


class ExactLowRank:
    """What most methods share: LoRA inputs only (no DoRA), no base weights, and an output that is
    the merge exactly (low-rank terms, never truncated). A method class inherits these defaults
    and overrides what differs."""

    accepts_dora: ClassVar[bool] = False
    output_exact: ClassVar[bool] = True

    def needs_base(self, adapters) -> bool:
        return False


def param(default, help: str, **extra):
    """A Params field with its help text (shown by `adaptermerge methods` and `--help`).
    `mergekit=VALUE` in `extra`: mergekit's default where it differs, which a merge YAML file gets."""
    return field(default=default, metadata={"help": help, **extra})


def check_density(density: float, name: str = "density") -> None:
    if not (isinstance(density, (int, float)) and 0.0 < density <= 1.0):
        raise AdapterMergeError(f"{name} must be in (0, 1], got {density}")


def check_choice(value, choices, name: str) -> None:
    if value not in choices:
        raise AdapterMergeError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")


def normalized(weights: list[float], normalize: bool) -> list[float]:
    if not normalize:
        return list(weights)
    total = sum(weights)
    if total == 0:
        raise AdapterMergeError("weights sum to 0 and cannot be normalized: pass --no-normalize (normalize=False in Python) or other weights")
    return [w / total for w in weights]


def present(inputs, weights):
    """The (factors, weight) pairs of the adapters that have this module."""
    return [(f, w) for f, w in zip(inputs, weights) if f is not None]

