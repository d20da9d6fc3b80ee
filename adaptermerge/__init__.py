"""adaptermerge: compose and merge LoRA adapters exactly, in delta space.

    from adaptermerge import load_adapter, merge
    merged = merge([load_adapter("a/"), load_adapter("b/")], method="ties", weights=[1, 1], density=0.2)
    merged.save("merged/")

Everything public comes from adaptermerge.api. Importing the package changes no environment
variable, allocator setting or thread count, and imports no torch: the public names load the api
on first use (PEP 562), so that the CLI's --help, `methods` and usage errors answer at once
(start-up time; benchmarks/bench_startup.py).
"""

from __future__ import annotations

import importlib.metadata
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ below loads them
    from .api import (
        METHODS,
        Adapter,
        AdapterMergeError,
        LoraFactors,
        MergePlan,
        diagnose,
        evaluate,
        load_adapter,
        merge,
        merge_to_model,
        quantize,
        run_recipe,
        train,
    )

try:
    __version__ = importlib.metadata.version("adaptermerge")
except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "METHODS",
    "Adapter",
    "AdapterMergeError",
    "LoraFactors",
    "MergePlan",
    "__version__",
    "diagnose",
    "evaluate",
    "load_adapter",
    "merge",
    "merge_to_model",
    "quantize",
    "run_recipe",
    "train",
]


def __getattr__(name: str):
    """`adaptermerge.merge` and the other public names: the api (torch, transformers) loads here,
    at first use, not at `import adaptermerge` (start-up time of the CLI)."""
    if name in __all__:
        from . import api

        value = getattr(api, name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
