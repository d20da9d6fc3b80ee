"""adaptermerge.lazy: a module imported on first attribute access, then cached."""

from __future__ import annotations

import sys

import pytest

from adaptermerge.lazy import LazyModule


def test_the_module_loads_on_first_use_and_attributes_are_cached():
    sys.modules.pop("colorsys", None)
    stand_in = LazyModule("colorsys")  # a small stdlib module this suite never imports otherwise
    assert "colorsys" not in sys.modules
    assert stand_in.rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)
    assert "colorsys" in sys.modules
    assert "rgb_to_hsv" in vars(stand_in)  # later lookups skip the import machinery
    assert stand_in.rgb_to_hsv is sys.modules["colorsys"].rgb_to_hsv


def test_a_missing_attribute_or_module_raises_as_the_real_one_would():
    with pytest.raises(AttributeError):
        LazyModule("colorsys").no_such_function
    with pytest.raises(ModuleNotFoundError):
        LazyModule("no_such_module_here").anything
