"""torch, imported on first use, for the modules that describe merge methods.

`adaptermerge methods`, `--help` and usage errors are read off the method registry and must answer
without torch's second or more of import time. So the modules the registry imports take torch from
here: `torch` below is a stand-in whose first attribute access imports the real module; each
attribute is then cached on the stand-in, so later lookups cost what a module lookup does.
sys.modules is left alone: whoever imports torch gets the real module.
"""

from __future__ import annotations

import importlib


class LazyModule:
    """A module imported when one of its attributes is first read."""

    def __init__(self, name: str):
        object.__setattr__(self, "_lazy_name", name)

    def __getattr__(self, attr: str):  # reached only for attributes not cached yet
        value = getattr(importlib.import_module(self._lazy_name), attr)
        object.__setattr__(self, attr, value)
        return value

    def __repr__(self) -> str:
        return f"<lazy module {self._lazy_name!r}>"


torch = LazyModule("torch")
