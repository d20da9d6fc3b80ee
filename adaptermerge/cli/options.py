"""Bounded click types for the commands' options. click's own `int` takes 2**80 and its `float`
takes nan and inf, which would fail deep inside a run (or silently do the wrong thing); these
refuse them at parse time, and main() prints click's message as one `error:` line with exit 2."""

from __future__ import annotations

import math
import re

import click

from .. import validate
from ..errors import AdapterMergeError
from ..validate import quote

SEED = click.IntRange(0, validate.SEED_MAX)
COUNT = click.IntRange(1, 2**31 - 1)  # steps, ranks, sizes, questions, threads: 1 or more
INT32 = click.IntRange(-(2**31), 2**31 - 1)
THREADS = click.IntRange(1, 1024)  # torch would try to start 2**31 threads


class Number(click.ParamType):
    """A finite float, within [minimum, maximum] and greater than `above` when given."""

    name = "number"

    def __init__(self, minimum: float | None = None, maximum: float | None = None, above: float | None = None):
        self.bounds = {"minimum": minimum, "maximum": maximum, "above": above}

    def convert(self, value, param, ctx):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                self.fail(f"{validate.quote(value)} is not a valid float.", param, ctx)  # click's own words
        try:
            return validate.number(value, "", **self.bounds)
        except AdapterMergeError as exc:
            self.fail(str(exc).strip(), param, ctx)


class Device(click.ParamType):
    name = "device"

    def convert(self, value, param, ctx):
        try:
            return validate.device(value, "")
        except AdapterMergeError as exc:
            self.fail(str(exc).strip(), param, ctx)


FINITE = Number()
POSITIVE = Number(above=0)
FRACTION = Number(minimum=0, maximum=1)
DEVICE = Device()


def float_list(text: str | None, what: str, finite: bool = True) -> list[float] | None:
    """Comma-separated numbers from an option (`--weights 0.6,0.4`), finite unless finite=False."""
    if text is None:
        return None
    try:
        values = [float(x) for x in text.split(",")]  # an empty entry ("1,,2") is an error, not skipped
    except ValueError:
        raise AdapterMergeError(f"--{what} {quote(text)}: expected comma-separated numbers such as 0.6,0.4") from None
    if finite and not all(math.isfinite(v) for v in values):
        raise AdapterMergeError(f"--{what} {quote(text)}: expected finite numbers")
    return values


def seeds(text: str | None, what: str = "seeds") -> list[int] | None:
    """Comma-separated seeds from an option (`--seeds 0,1,2`) as integers; the list's own checks
    (empty, negative, repeated) are the recipe key's (schema.seed_list), run by the caller."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    # ASCII digits only: int() takes "²", "1_0" and " 1 ", which a seed list never means
    if not all(re.fullmatch(r"-?[0-9]{1,19}", p) for p in parts):
        raise AdapterMergeError(f"--{what} {quote(text)}: expected comma-separated integer seeds such as 0,1,2")
    return [int(p) for p in parts]


def name_files(items: tuple[str, ...], what: str) -> dict[str, str]:
    """NAME=FILE entries of a repeatable option (`--heal-prompts domain=d.jsonl`) as {NAME: FILE}."""
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise AdapterMergeError(f"--{what} {quote(item)}: expected NAME=FILE.jsonl (an input adapter's name or task, and a file)")
        if name in out:
            raise AdapterMergeError(f"--{what} {name}: given twice")
        out[name] = path
    return out
