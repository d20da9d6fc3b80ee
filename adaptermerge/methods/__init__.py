"""Merge methods: a registry of plugins. `METHODS.get(name)` gives the method object.

One file per family holds its method classes and the math they add; the shared math is in
`math` (reference functions), run fast by `backends`. A method is a class with `name`, `summary`,
`Params` (frozen dataclass), `accepts_dora`, `output_exact`, `needs_base(adapters)` and
`merge_module(...)`, optionally `prepare(plan)` (see base.py). Adding one means one file here and
one line below; method files never import this package (the registry imports them).
"""

from ..registry import Registry
from .base import MergeContext, MergeMethod, ModuleResult
from .breadcrumbs import Breadcrumbs
from .core import Core
from .dora import Dora
from .iso import IsoC, IsoCts
from .knots import Knots
from .linear import Cat, Linear, TaskArithmetic
from .regmean import RegMean
from .sequential import Sequential
from .sparse import DareLinear, DareTies, Ties
from .tsv import Tsv

METHODS: Registry[MergeMethod] = Registry("merge method")
for _cls in (Linear, TaskArithmetic, Sequential, Ties, DareLinear, DareTies, Dora, Cat, RegMean, Breadcrumbs,
             Knots, Tsv, IsoC, IsoCts, Core):
    METHODS.register(_cls.name, _cls())

__all__ = ["METHODS", "MergeContext", "MergeMethod", "ModuleResult"]
