"""The merge methods as the CLI shows them: names, summaries and parameters (with their types,
choices, and the default a merge YAML file takes where mergekit's differs), read off the method
registry."""

from __future__ import annotations

import dataclasses

from ..methods import METHODS as REGISTRY


def rows(methods) -> list[dict]:
    """The catalog of a method registry: one dict per method, in registry order."""
    out = []
    for name, m in methods.items():
        params = []
        for f in dataclasses.fields(m.Params):
            kind = f.type if isinstance(f.type, str) else f.type.__name__
            entry = {"field": f.name, "name": f.name.rstrip("_"), "default": f.default, "help": f.metadata.get("help", ""),
                     "type": "choice" if "choices" in f.metadata else kind}
            if "choices" in f.metadata:
                entry["choices"] = list(f.metadata["choices"])
            if "mergekit" in f.metadata:  # a merge YAML file follows mergekit, whose default differs
                entry["yaml_default"] = f.metadata["mergekit"]
            params.append(entry)
        out.append({"method": name, "summary": m.summary, "doc": (m.__doc__ or m.summary).strip(), "needs_base": m.needs_base([]),
                    "dora_inputs": m.accepts_dora, "exact_adapter_output": m.output_exact, "parameters": params})
    return out


# The method commands and `methods` are built from the registry itself (one source: adding a
# method is one file in methods/ and its registry line).
METHODS = rows(REGISTRY)
