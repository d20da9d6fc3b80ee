"""Safe file writing: outputs appear atomically and never overwrite without force."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import AdapterMergeError


def read_json_object(path: str | Path) -> dict:
    """A JSON file holding an object (a config, a summary); anything else is a one-line error
    naming the file."""
    import json

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterMergeError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise AdapterMergeError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temp path in `path`'s folder to write; renamed onto `path` in one step when the block
    ends, removed if it fails. A reader (another process sharing a cache) sees the whole old file
    or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically (see atomic_file)."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def check_output(path: str | Path, force: bool) -> Path:
    """Fail early, before any work, when the output exists and force is off."""
    path = Path(path).expanduser()
    if path.exists() and not force:
        raise AdapterMergeError(f"output {path} already exists: pass --force to replace it")
    return path


@contextmanager
def atomic_dir(path: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temp folder beside `path`; on success it replaces `path` in one rename.

    On any error the temp folder is removed and `path` is untouched. With force, an existing
    `path` is moved aside first and deleted only after the new folder is in place; if that final
    rename fails, the previous output is put back rather than leaving none.
    """
    path = check_output(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / "x")
        try:
            os.replace(tmp, path)
        except OSError:
            if old is not None:
                os.replace(old / "x", path)
            raise
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
