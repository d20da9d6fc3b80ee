"""adaptermerge: compose and merge LoRA adapters exactly, in delta space.

    from adaptermerge import load_adapter, merge
    merged = merge([load_adapter("a/"), load_adapter("b/")], method="ties", weights=[1, 1], density=0.2)
    merged.save("merged/")

Everything public comes from adaptermerge.api. Importing the package changes no environment
variable, allocator setting or thread count.
"""

import importlib.metadata

from .api import (
    METHODS,
    Adapter,
    AdapterMergeError,
    LoraFactors,
    MergePlan,
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
    "evaluate",
    "load_adapter",
    "merge",
    "merge_to_model",
    "quantize",
    "run_recipe",
    "train",
]
