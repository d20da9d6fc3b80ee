"""Merge methods: a registry of plugins. `METHODS.get(name)` gives the method object.

Add a method by writing a class with `name`, `summary`, `Params` (frozen dataclass),
`accepts_dora`, `output_exact`, `needs_base(adapters)` and `merge_module(...)`, optionally
`prepare(plan)` (see base.py),
then `METHODS.register(obj.name, obj)`.
"""

from ..registry import Registry
from .base import MergeContext, MergeMethod, ModuleResult
from .dora import Dora
from .linear import Cat, Linear, TaskArithmetic
from .regmean import RegMean
from .sequential import Sequential
from .sparse import DareLinear, DareTies, Ties

METHODS: Registry[MergeMethod] = Registry("merge method")
for _cls in (Linear, TaskArithmetic, Sequential, Ties, DareLinear, DareTies, Dora, Cat, RegMean):
    METHODS.register(_cls.name, _cls())

__all__ = ["METHODS", "MergeContext", "MergeMethod", "ModuleResult"]
