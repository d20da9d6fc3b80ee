"""adaptermerge: compose and merge LoRA adapters exactly, in delta space.

    from adaptermerge import load_adapter, merge
    merged = merge([load_adapter("a/"), load_adapter("b/")], method="ties", weights=[1, 1], density=0.2)
    merged.save("merged/")
"""

from .adapter import Adapter, LoraFactors, load_adapter
from .engine import MergePlan, merge, merge_to_model
from .errors import AdapterMergeError
from .methods import METHODS

__version__ = "0.1.0"

__all__ = ["Adapter", "AdapterMergeError", "LoraFactors", "METHODS", "MergePlan", "load_adapter", "merge", "merge_to_model", "__version__"]
