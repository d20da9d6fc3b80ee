"""Safe file writing: outputs appear atomically and never overwrite without force."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import yaml

from .errors import AdapterMergeError


def read_json_object(path: str | Path) -> dict:
    """A JSON file holding an object (a config, a summary); anything else is a one-line error
    naming the file."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterMergeError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise AdapterMergeError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def read_yaml(path: str | Path, what: str) -> object:
    """A YAML file's data (yaml.safe_load: no tags that build objects); a missing file, a folder,
    bytes that are not UTF-8 or YAML that does not parse is a one-line error naming `what` and the
    file."""
    path = Path(path)
    if not path.is_file():
        raise AdapterMergeError(f"{what} {path} does not exist or is not a file")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise AdapterMergeError(f"{what} {path}: cannot be read as UTF-8 text ({type(exc).__name__})") from None
    except yaml.YAMLError as exc:
        raise AdapterMergeError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None


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
    os.chmod(tmp, _FILE_MODE)  # mkstemp makes it private (0600); an output is an ordinary file
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
        raise AdapterMergeError(f"output {path} already exists: pass --force (force=True in Python) to replace it")
    return path


def check_not_an_input(out: str | Path, inputs: Iterable[str | Path]) -> None:
    """Refuse an output that is or holds one of the inputs, or sits inside an input folder: with
    --force, writing it would delete or change an input, and inputs are never modified. (Beside a
    bare .safetensors input, in the same folder, is fine.)"""
    target = Path(out).expanduser().resolve()
    for given in inputs:
        source = Path(given).expanduser().resolve()
        if source.is_relative_to(target) or (source.is_dir() and target.is_relative_to(source)):
            raise AdapterMergeError(f"output {out} would overwrite or write into input {given}: choose another output folder")


def check_destination(out: str | Path, force: bool, inputs: Iterable[str | Path] = ()) -> Path:
    """The one rule for every output: it exists only with force, and it is never an input, nor
    inside or above one, force or not. Writers call it through atomic_dir; callers call it again
    before slow work so that a bad output fails first."""
    path = check_output(out, force)
    check_not_an_input(out, inputs)
    return path


@contextmanager
def atomic_dir(path: str | Path, *, force: bool = False, inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield a temp folder beside `path`; on success it replaces `path` in one rename.

    `inputs`: the files and folders the output is made from; `path` may not be, hold or sit in
    one of them (check_destination), force or not.

    On any error the temp folder is removed and `path` is untouched. With force, an existing
    `path` is moved aside first and deleted only after the new folder is in place; if that final
    rename fails, the previous output is put back rather than leaving none.
    """
    path = check_destination(path, force, inputs)
    if path.exists() and not path.is_dir():
        raise AdapterMergeError(f"output {path} exists and is not a folder: --force replaces folders only")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        _ordinary_modes(tmp)
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


def _read_umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


# Read once, at import: os.umask is process-wide, and writers run on threads.
_UMASK = _read_umask()
_FILE_MODE, _DIR_MODE = 0o666 & ~_UMASK, 0o777 & ~_UMASK


def _ordinary_modes(root: Path) -> None:
    """`root` and everything under it as the umask makes them: mkdtemp leaves the folder 0700, and
    writers that go through a private temp file (safetensors' does) leave 0600, which other users
    of a shared output could not read."""
    os.chmod(root, _DIR_MODE)
    for folder, dirs, files in os.walk(root):
        for d in dirs:
            os.chmod(os.path.join(folder, d), _DIR_MODE)
        for f in files:
            os.chmod(os.path.join(folder, f), _FILE_MODE)
