"""The KV cache's name in a transformers forward call.

transformers 5.2x renamed it: the keyword and the output field are `cache`, and `past_key_values`
still works but warns on every call (a screenful in a demo's log). Older releases (the project
accepts transformers>=4.45) know only `past_key_values`. The installed release's model outputs
say which name it uses.
"""

from __future__ import annotations

import dataclasses
from functools import cache as _once


@_once
def cache_keyword() -> str:
    from transformers.modeling_outputs import BaseModelOutputWithPast  # heavy: read once, on first use

    fields = {f.name for f in dataclasses.fields(BaseModelOutputWithPast)}
    return "cache" if "cache" in fields else "past_key_values"


def cache_kwargs(cache) -> dict:
    return {cache_keyword(): cache}


def returned_cache(output):
    """The cache a forward returned (reading the old name warns in transformers 5.2x)."""
    return getattr(output, cache_keyword())
