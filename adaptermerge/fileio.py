"""Safe file reading and writing.

Reading: inputs are regular files (regular_file: a FIFO would block a reader forever), and model
or adapter folders hold safetensors weights (hf_folder, safetensors_weights: pickles are never
read). Writing: outputs appear atomically, never overwrite without force, and every filesystem
failure is a one-line AdapterMergeError naming the path; a killed run's temp folder is removed by
the next run to the same output.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import yaml

from .errors import AdapterMergeError
from .validate import quote

log = logging.getLogger(__name__)


def _stat(path: Path, what: str) -> os.stat_result:
    """os.stat following symlinks, its failures as one-line errors naming `what` and the path."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise AdapterMergeError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise AdapterMergeError(f"{what} {path}: cannot be read ({_reason(exc)})") from None
    except ValueError:  # a NUL byte in the name (from a YAML or JSON string)
        raise AdapterMergeError(f"{what} {quote(str(path))} is not a valid path") from None


def regular_file(path: str | Path, what: str = "file") -> Path:
    """`path` if it is a regular file (after following symlinks); anything else is a one-line
    error naming `what` and the path. Call it before opening an input: opening a FIFO blocks
    forever, a device or socket streams garbage, and a symlink loop fails deep in a library."""
    path = Path(path)
    mode = _stat(path, what).st_mode
    if stat.S_ISDIR(mode):
        raise AdapterMergeError(f"{what} {path} is a folder, expected a file")
    if not stat.S_ISREG(mode):
        raise AdapterMergeError(f"{what} {path} is a {_kind(mode)}, expected a regular file")
    return path


def folder(path: str | Path, what: str = "folder") -> Path:
    """`path` if it is a folder (after following symlinks); otherwise a one-line error naming
    `what` and the path (missing, a symlink loop, a file, a FIFO...)."""
    path = Path(path)
    mode = _stat(path, what).st_mode
    if not stat.S_ISDIR(mode):
        raise AdapterMergeError(f"{what} {path} is a {_kind(mode)}, expected a folder")
    return path


def read_bytes(path: str | Path, what: str = "file") -> bytes:
    """A regular file's bytes (regular_file first); a read error is a one-line error."""
    path = regular_file(path, what)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise AdapterMergeError(f"{what} {path}: cannot be read ({_reason(exc)})") from None


def read_text(path: str | Path, what: str = "file") -> str:
    """A regular file's text as UTF-8; other bytes or a read error is a one-line error."""
    data = read_bytes(path, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AdapterMergeError(f"{what} {path}: not UTF-8 text (byte {exc.start})") from None


# Pickle-based weight formats: torch.load on one can run code, so no loader ever reads them.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def safetensors_weights(model_dir: str | Path, what: str, stem: str = "model") -> list[Path]:
    """The safetensors files that hold a model folder's weights (`stem`.safetensors, or the
    shards named by `stem`.safetensors.index.json), each checked to be a regular file.

    A folder with no safetensors weights is refused even when it holds pickle weights
    (pytorch_model.bin, adapter_model.bin): those are never read, and the message says so.
    Callers still load with use_safetensors=True, so a library never falls back to a pickle.
    """
    root = folder(model_dir, what)
    single = root / f"{stem}.safetensors"
    index = root / f"{stem}.safetensors.index.json"
    if single.exists() or single.is_symlink():
        return [regular_file(single, what)]
    if index.exists() or index.is_symlink():
        data = read_json_object(index, what)
        weight_map = data.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise AdapterMergeError(f"{what} {index}: expected a non-empty \"weight_map\" object")
        shards = []
        for name in dict.fromkeys(weight_map.values()):
            if not isinstance(name, str) or not name.endswith(".safetensors") or "/" in name or "\\" in name:
                raise AdapterMergeError(f"{what} {index}: weight_map names {quote(name)}, expected a .safetensors file in the folder")
            shards.append(regular_file(root / name, what))
        return shards
    pickles = sorted(p.name for p in root.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise AdapterMergeError(
            f"{what} {root} holds only pickle weights ({', '.join(pickles[:3])}), which are never loaded: "
            f"convert them to {stem}.safetensors"
        )
    raise AdapterMergeError(f"{what} {root} has no {stem}.safetensors or {stem}.safetensors.index.json")


def hf_folder(path: str | Path, what: str, stem: str = "model", config: str = "config.json") -> list[Path]:
    """Check a folder a library will load whole (transformers' or PEFT's from_pretrained) and
    return its safetensors weights (safetensors_weights).

    Every entry must be a regular file or a folder: the library opens files by name (tokenizer,
    generation config...), and a FIFO there would hang it, a symlink loop crash it. `config` must
    be a regular file. Callers still pass use_safetensors=True where the library takes it.
    """
    root = folder(path, what)
    try:
        entries = list(os.scandir(root))
    except OSError as exc:
        raise AdapterMergeError(f"{what} {root}: cannot be listed ({_reason(exc)})") from None
    for entry in entries:
        try:
            mode = entry.stat().st_mode
        except FileNotFoundError:
            continue  # a dangling link no library opens by name; a needed file is checked below
        except OSError as exc:
            raise AdapterMergeError(f"{what} {root}: {entry.name} cannot be read ({_reason(exc)})") from None
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise AdapterMergeError(f"{what} {root}: {entry.name} is a {_kind(mode)}, expected a regular file")
    if not ((root / config).exists() or (root / config).is_symlink()):
        raise AdapterMergeError(f"{what} {root} has no {config}")
    regular_file(root / config, what)
    return safetensors_weights(root, what, stem)


def read_json_object(path: str | Path, what: str = "JSON file") -> dict:
    """A JSON file holding an object (a config, a summary); anything else is a one-line error
    naming the file."""
    text = read_text(path, what)
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        reason = "nested too deep" if isinstance(exc, RecursionError) else str(exc)
        raise AdapterMergeError(f"{path}: not valid JSON ({reason})") from None
    if not isinstance(data, dict):
        raise AdapterMergeError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def read_yaml(path: str | Path, what: str) -> object:
    """A YAML file's data (yaml.safe_load: no tags that build objects); a missing file, a folder,
    a FIFO or device, bytes that are not UTF-8 or YAML that does not parse is a one-line error
    naming `what` and the file."""
    text = read_text(path, what)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise AdapterMergeError(f"{path}: not valid YAML ({quote(str(exc).splitlines()[0])})") from None
    except RecursionError:
        raise AdapterMergeError(f"{path}: not valid YAML (nested too deep)") from None


def _reason(exc: OSError) -> str:
    return exc.strerror or quote(str(exc))[1:-1] or type(exc).__name__


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "folder"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return "special file"


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(regular_file(path), "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temp path in `path`'s folder to write; renamed onto `path` in one step when the block
    ends, removed if it fails. A reader (another process sharing a cache) sees the whole old file
    or the whole new one, never a part. A failing filesystem operation is a one-line error
    naming the path."""
    path = Path(path)
    with _os_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path, "tmp"), dir=path.parent)
        os.close(fd)
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes it private (0600); an output is an ordinary file
    try:
        with _os_errors(path):
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
    """Fail early, before any work, when the output cannot be written: it exists and force is
    off, it is a dangling symlink, it is or holds the current folder (`-o . --force` would delete
    the folder the user is in), or its parent is not a folder."""
    given = Path(path).expanduser()
    if "\0" in str(given):  # from a YAML string: every os call would raise ValueError
        raise AdapterMergeError(f"output {quote(str(given))} is not a valid path (it holds a NUL byte)")
    path = Path(os.path.abspath(given))  # `.` and `..` resolved by name, symlinks kept
    if path == path.parent:
        raise AdapterMergeError(f"output {given} is the root folder: choose a new folder")
    cwd = Path(os.path.abspath(os.getcwd()))
    if cwd.is_relative_to(path) or _real(cwd).is_relative_to(_real(path)):
        raise AdapterMergeError(f"output {given} is or holds the current folder: choose a new folder")
    # What a killed run left here goes first: it may put a previous output back, which the
    # checks below must then see.
    remove_dead_temps(path)
    if path.is_symlink() and not path.exists():
        raise AdapterMergeError(f"output {given} is a dangling symlink (to {os.readlink(path)}): remove it or choose another output")
    if path.exists() and not force:
        raise AdapterMergeError(f"output {given} already exists: pass --force (force=True in Python) to replace it")
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():  # the nearest existing ancestor: the output is made there
            if not parent.is_dir():
                raise AdapterMergeError(f"output {given}: {parent} is not a folder")
            _probe(parent, given)
            break
    return given


def _probe(parent: Path, given: Path) -> None:
    """Make and remove an empty folder in `parent`: a read-only mount, /proc or /sys, or a folder
    without write permission fails here, before any work, instead of after the merge."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".adaptermerge-probe-", dir=parent))
    except OSError as exc:
        raise AdapterMergeError(f"output {given}: cannot create a folder in {parent} ({_reason(exc)})") from None


def _real(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop: compared by name only
        return path


def check_not_an_input(out: str | Path, inputs: Iterable[str | Path]) -> None:
    """Refuse an output that is or holds one of the inputs, or sits inside an input folder: with
    --force, writing it would delete or change an input, and inputs are never modified. (Beside a
    bare .safetensors input, in the same folder, is fine.)"""
    target = _real(Path(out).expanduser())
    for given in inputs:
        source = _real(Path(given).expanduser())
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

    A failing filesystem operation (no permission, a read-only or full disk, /proc) is an
    AdapterMergeError naming the path. Temp folders carry the writer's PID: one left by a run that
    was killed (SIGKILL, power loss) is removed by the next run to the same output.
    """
    path = check_destination(path, force, inputs)
    if path.exists() and not path.is_dir():
        raise AdapterMergeError(f"output {path} exists and is not a folder: --force replaces folders only")
    tmp = _new_temp(path)
    old = None
    try:
        with _os_errors(path):
            yield tmp
            _ordinary_modes(tmp)
            if path.exists():
                old = Path(tempfile.mkdtemp(prefix=temp_prefix(path, "old"), dir=path.parent))
                os.replace(path, old / "x")
            try:
                os.replace(tmp, path)
            except OSError:
                if old is not None:
                    os.replace(old / "x", path)
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _new_temp(path: Path) -> Path:
    """An empty temp folder beside `path`, named with temp_prefix."""
    with _os_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=temp_prefix(path, "tmp"), dir=path.parent))


@contextmanager
def scratch_dir(path: str | Path) -> Iterator[Path]:
    """A temp folder beside `path`, removed afterwards: the working space of a process that writes
    no output itself (another process of a distributed run writes `path`). Named as atomic_dir's
    temp folders, so that one left by a killed run is removed by the next."""
    tmp = _new_temp(Path(path))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def _os_errors(path: Path) -> Iterator[None]:
    """An OSError in the block (creating, writing or renaming the output) becomes one line that
    names the file it concerns, so that a full disk or a read-only folder exits 2, not 3."""
    try:
        yield
    except OSError as exc:
        raise AdapterMergeError(os_error_message(exc, path)) from None


def os_error_message(exc: OSError, path: str | Path | None = None) -> str:
    """`FILE: reason`, naming also the output being written when the failing file is another one."""
    reason = _reason(exc)
    if exc.filename is None:
        return f"{path}: {reason}" if path is not None else reason
    name = os.fsdecode(exc.filename) if isinstance(exc.filename, (str, bytes)) else str(exc.filename)
    text = f"{quote(name)[1:-1]}: {reason}"
    if path is not None and Path(name) != Path(path):
        text += f" (writing {path})"
    return text


# Temp names: `.NAME.tmp-HOST-PID.START-random`. HOST (a hash of the host name) and START (the
# process start time) keep a writer on another machine sharing the folder, or a recycled PID, from
# being taken for a dead run. A run killed before its cleanup leaves one behind; the next run on
# the same host removes it.
def temp_prefix(path: Path, kind: str) -> str:
    """The prefix of a temp file or folder written beside `path` (kind "tmp" or "old")."""
    return f".{path.name}.{kind}-{_HOST}-{os.getpid()}.{_start_time(os.getpid())}-"


def _start_time(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # the fields after the command name (which may hold spaces); starttime is field 22
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return "0"


_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's live process
    return start == "0" or _start_time(pid) in (start, "0")


def remove_dead_temps(path: Path) -> None:
    """Remove the temp files and folders beside `path` left by writers on this host that are no
    longer running; name (log) those of another host. A dead run's `.old-` folder holds the
    previous output when it was killed between its two renames: it is put back if nothing has
    replaced it since."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(tmp|old)-([0-9a-f]{{8}})-(\d+)\.(\d+)-.*", re.DOTALL)
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        match = pattern.fullmatch(name)
        if match is None:
            if name.startswith((f".{path.name}.tmp-", f".{path.name}.old-")):  # no owner recorded (older versions)
                log.warning("%s may be left by a run that was killed: remove it once no run writes %s", path.parent / name, path)
            continue
        leftover = path.parent / name
        if match[2] != _HOST:
            log.warning("%s was left by a run on another host: remove it once that run is over", leftover)
            continue
        if _alive(int(match[3]), match[4]):
            continue
        if match[1] == "old" and (leftover / "x").exists() and not (path.exists() or path.is_symlink()):
            try:
                os.replace(leftover / "x", path)
                log.warning("put back %s, left aside by a run that was killed", path)
            except OSError:
                pass
        log.info("removing %s, left by a run that was killed", leftover)
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            try:
                leftover.unlink()
            except OSError:
                pass


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
