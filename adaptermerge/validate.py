"""Typed checks for every value that comes from a file or a flag: YAML merge configs, gates files,
recipes, method parameters, command-line options.

Each checker takes the value and `where` (the file and key, e.g. "merge.yaml: seed") and returns
the value as its type, or raises one AdapterMergeError line, "<where> must be <what>, got <value>",
with the value quoted in at most ~80 characters. Types are strict: a string is never a bool or a number, a
bool is never a number, a float is never an integer, and numbers are finite unless asked.

Hand-written rather than pydantic: the checks are a dozen short functions, the messages must be
one line in this package's words (pydantic's are multi-line and its lax mode turns "false" into
False), and a leaf module keeps the layers simple.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import stat
from pathlib import Path

from .errors import AdapterMergeError

LIMIT = 80  # characters of a quoted value
SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes at most 64 bits; this also fits int64
MAX_DEPTH = 64  # nesting of a parsed YAML document
MAX_VALUES = 200_000  # values of a parsed YAML document, with aliases expanded


# ---------------------------------------------------------------- quoting


def quote(value, limit: int = LIMIT) -> str:
    """repr(value) cut to about `limit` characters with '...'. Never builds the whole repr: a YAML
    alias bomb or a 100 MB string costs only the characters shown."""
    out: list[str] = []
    size = 0
    # An explicit stack of pending pieces (strings) and values, so depth cannot overflow.
    stack: list = [(value, 0)]
    while stack and size <= limit:
        item = stack.pop()
        if isinstance(item, str):
            piece = item
        else:
            v, depth = item
            piece = None
            if isinstance(v, dict) and depth < MAX_DEPTH:
                pending = ["{"]
                for i, (k, x) in enumerate(v.items()):
                    if i:
                        pending.append(", ")
                    pending += [(k, depth + 1), ": ", (x, depth + 1)]
                    if len(pending) > limit:  # more entries than could ever be shown
                        break
                pending.append("}")
                stack.extend(reversed(pending))
                continue
            if isinstance(v, (list, tuple, set, frozenset)) and depth < MAX_DEPTH:
                open_, close = ("[", "]") if isinstance(v, list) else ("(", ")") if isinstance(v, tuple) else ("{", "}")
                pending = [open_]
                for i, x in enumerate(v):
                    if i:
                        pending.append(", ")
                    pending.append((x, depth + 1))
                    if len(pending) > limit:
                        break
                pending.append(close)
                stack.extend(reversed(pending))
                continue
            piece = _atom(v, limit - size + 1)
        out.append(piece)
        size += len(piece)
    text = "".join(out)
    if stack or len(text) > limit:
        return text[: max(limit - 3, 1)] + "..."
    return text


def listing(names, limit: int = LIMIT) -> str:
    """Names joined with ', ', cut to about `limit` characters ("a, b, ... (3 more)")."""
    names = list(names)
    out, size = [], 0
    for i, name in enumerate(names):
        text = name if isinstance(name, str) else quote(name)
        text = text if len(text) <= limit else text[: limit - 3] + "..."
        if out and size + len(text) > limit:
            return ", ".join(out) + f", ... ({len(names) - i} more)"
        out.append(text)
        size += len(text) + 2
    return ", ".join(out)


def _atom(value, room: int) -> str:
    """The repr of a scalar, built from at most `room` characters of it."""
    if isinstance(value, (str, bytes)):
        return repr(value[: room + 1])  # one more than shown, so the cut is visible
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        # repr of a huge int is slow (and refused above 4300 digits)
        return f"<a {value.bit_length()}-bit integer>"
    if isinstance(value, (dict, list, tuple, set, frozenset)):
        return "..."  # nested past MAX_DEPTH
    try:
        return repr(value)[: room + 1]
    except Exception:  # a repr that fails must not turn an error message into a crash
        return f"<{type(value).__name__}>"


def _fail(where: str, expected: str, value) -> AdapterMergeError:
    return AdapterMergeError(f"{where} must be {expected}, got {quote(value)}")


# ---------------------------------------------------------------- scalars


def boolean(value, where: str, *, optional: bool = False) -> bool | None:
    """A real bool: the strings "false" and "no" are errors (bool("false") is True)."""
    if value is None and optional:
        return None
    if not isinstance(value, bool):
        raise _fail(where, "true or false", value)
    return value


def integer(value, where: str, *, minimum: int | None = None, maximum: int | None = None,
            optional: bool = False) -> int | None:
    """An integer within [minimum, maximum]: no bools, no floats (1.7 or 2.0), no strings."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _fail(where, "an integer", value)
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise _fail(where, _range("an integer", minimum, maximum), value)
    return value


def seed(value, where: str) -> int:
    """A random seed: an integer in 0..2**63-1."""
    return integer(value, where, minimum=0, maximum=SEED_MAX)


def number(value, where: str, *, minimum: float | None = None, maximum: float | None = None,
           above: float | None = None, finite: bool = True, optional: bool = False) -> float | None:
    """An int or float (not a bool, not a string) as a float: finite unless `finite=False`, within
    [minimum, maximum] and greater than `above`."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(where, "a number", value)
    try:
        x = float(value)
    except (OverflowError, ValueError, TypeError):  # an int beyond float's range
        raise _fail(where, "a finite number", value) from None
    if math.isnan(x) or (finite and math.isinf(x)):
        raise _fail(where, "a finite number", value)
    if (minimum is not None and x < minimum) or (maximum is not None and x > maximum) or (above is not None and x <= above):
        if above is not None:
            raise _fail(where, f"a number greater than {above:g}" + (f" and at most {maximum:g}" if maximum is not None else ""), value)
        raise _fail(where, _range("a number", minimum, maximum), value)
    return x


def _range(kind: str, minimum, maximum) -> str:
    if minimum is not None and maximum is not None:
        return f"{kind} in {minimum:g}..{maximum:g}" if isinstance(minimum, float) or isinstance(maximum, float) else f"{kind} in {minimum}..{maximum}"
    if minimum is not None:
        return f"{kind} >= {minimum}"
    return f"{kind} <= {maximum}"


def string(value, where: str, *, choices=None, nonempty: bool = False, optional: bool = False) -> str | None:
    """A str, one of `choices` when given."""
    if value is None and optional:
        return None
    if choices is not None:
        if not isinstance(value, str) or value not in choices:
            raise _fail(where, f"one of {', '.join(map(str, choices))}", value)
        return value
    if not isinstance(value, str):
        raise _fail(where, "a string", value)
    if nonempty and not value.strip():
        raise _fail(where, "a non-empty string", value)
    return value


_DEVICE = re.compile(r"cpu|cuda(:[0-9]{1,3})?")


def device(value, where: str) -> str:
    """A torch device name this package runs on: cpu, cuda or cuda:N (torch.device("tpu") would
    fail deep inside a merge)."""
    if not isinstance(value, str) or not _DEVICE.fullmatch(value):
        raise _fail(where, "cpu, cuda or cuda:N", value)
    return value


def path(value, where: str, *, root: Path | None = None, optional: bool = False) -> Path | None:
    """A file-system path from a string (or os.PathLike): non-empty, no NUL byte, `~` expanded,
    relative ones taken from `root` when given."""
    if value is None and optional:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise _fail(where, "a path (a non-empty string)", value)
    p = Path(value).expanduser()
    return p if root is None or p.is_absolute() else Path(root) / p


def probe(p) -> str | None:
    """What is at path `p`: "file", "folder", "other" (a FIFO, a device...) or None when nothing
    can be reached there. Unlike Path.exists(), a name too long or a symlink loop is None, not an
    OSError, so a check on a value from a file never crashes."""
    try:
        mode = os.stat(p).st_mode
    except (OSError, ValueError):
        return None
    return "file" if stat.S_ISREG(mode) else "folder" if stat.S_ISDIR(mode) else "other"


# ---------------------------------------------------------------- containers


def mapping(value, where: str, *, keys=None, required=(), optional: bool = False) -> dict:
    """A dict with string keys; with `keys`, only those (unknown ones are listed) and every one of
    `required`. None is an empty mapping when `optional`."""
    if value is None and optional:
        return {}
    if not isinstance(value, dict):
        expected = "a mapping" + (f" with keys among {', '.join(keys)}" if keys else "")
        raise _fail(where, expected, value)
    for k in value:
        if not isinstance(k, str):
            raise AdapterMergeError(f"{where}: keys must be strings, got the key {quote(k)}")
    if keys is not None:
        unknown = [k for k in value if k not in keys]
        if unknown:
            raise AdapterMergeError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {listing(unknown)}: "
                                    f"expected some of {', '.join(keys)}")
    for k in required:
        if k not in value:
            raise AdapterMergeError(f"{where}: missing key {k}")
    return value


def sequence(value, where: str, *, nonempty: bool = False, length: int | None = None, optional: bool = False) -> list:
    """A list (or tuple), non-empty or of exactly `length` items when asked."""
    if value is None and optional:
        return []
    if not isinstance(value, (list, tuple)):
        raise _fail(where, "a list", value)
    if nonempty and not value:
        raise _fail(where, "a non-empty list", value)
    if length is not None and len(value) != length:
        raise _fail(where, f"a list of {length} items", value)
    return list(value)


def document(data, where: str, *, max_depth: int = MAX_DEPTH, max_values: int = MAX_VALUES):
    """A parsed YAML or JSON document, refused when nested deeper than `max_depth` or holding more
    than `max_values` values once aliases are expanded (an alias bomb is small on disk and
    exponential in memory walks). Iterative: a deep document cannot overflow the stack here."""
    stack = [(data, 0)]
    seen = 0
    while stack:
        value, depth = stack.pop()
        seen += 1
        if seen > max_values:
            raise AdapterMergeError(f"{where}: more than {max_values} values (YAML aliases included): not a config file")
        if isinstance(value, (dict, list, tuple)):
            if depth >= max_depth:
                raise AdapterMergeError(f"{where}: nested deeper than {max_depth} levels: not a config file")
            items = value.values() if isinstance(value, dict) else value
            stack.extend((x, depth + 1) for x in items)
    return data


__all__ = ["LIMIT", "SEED_MAX", "boolean", "device", "document", "integer", "listing", "mapping", "number", "path", "probe", "quote", "seed",
           "sequence", "string"]
