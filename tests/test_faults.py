"""Faults on the way in and out: inputs that are not regular files (a FIFO would hang a reader),
outputs the filesystem refuses (exit 2 and one line naming the path, never an internal error),
and runs killed by SIGTERM or SIGKILL (nothing left behind once the next run is done)."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from adaptermerge import fileio
from adaptermerge.cli.main import main
from adaptermerge.errors import AdapterMergeError

TIMEOUT = 120  # seconds: a reader blocked on a FIFO would wait forever


def cli(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    return info.value.code, capsys.readouterr().err.strip()


def one_error_line(code: int, err: str, *names: str) -> None:
    """Exit 2 and one `error:` line, the last (a progress display may come before it)."""
    assert code == 2, err
    lines = err.splitlines()
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], err
    assert "internal error" not in err and "Traceback" not in err, err
    for name in names:
        assert name in lines[-1], err


def subprocess_cli(argv, cwd=None, timeout=TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adaptermerge", *map(str, argv)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------- regular files only


@pytest.mark.parametrize("make", [
    lambda p: os.mkfifo(p),
    lambda p: p.symlink_to(p),
    lambda p: p.symlink_to("/dev/zero"),
], ids=["fifo", "symlink loop", "device"])
def test_readers_refuse_what_is_not_a_regular_file(tmp_path, make):
    path = tmp_path / "input"
    make(path)
    for read in (lambda: fileio.read_yaml(path, "merge config"), lambda: fileio.read_json_object(path),
                 lambda: fileio.read_text(path), lambda: fileio.regular_file(path, "adapter")):
        with pytest.raises(AdapterMergeError, match="input") as info:
            read()
        assert "\n" not in str(info.value)


def test_a_fifo_merge_config_returns_promptly_with_exit_2(tmp_path):
    os.mkfifo(tmp_path / "merge.yaml")
    done = subprocess_cli(["merge", tmp_path / "merge.yaml"], cwd=tmp_path)
    one_error_line(done.returncode, done.stderr.strip(), "merge.yaml", "FIFO")


def test_a_fifo_in_a_base_folder_returns_promptly_with_exit_2(tmp_path, tiny_base, adapters):
    base = shutil.copytree(tiny_base, tmp_path / "in" / tiny_base.name)  # its name: the adapters' recorded base
    (base / "model.safetensors").unlink()
    os.mkfifo(base / "model.safetensors")
    done = subprocess_cli(["linear", adapters["a"], "--base", base, "--output", "model", "-o", tmp_path / "m"])
    one_error_line(done.returncode, done.stderr.strip(), "model.safetensors")
    assert not (tmp_path / "m").exists()


def test_a_fifo_in_a_candidate_folder_returns_promptly_with_exit_2(tmp_path, tiny_base):
    model = shutil.copytree(tiny_base, tmp_path / "merged")
    os.mkfifo(model / "tokenizer.json")
    done = subprocess_cli(["eval", model, "--base", tiny_base, "--tasks", "domain", "-o", tmp_path / "report"])
    one_error_line(done.returncode, done.stderr.strip(), "tokenizer.json", "FIFO")


def test_a_fifo_adapter_returns_promptly_with_exit_2(tmp_path, adapters):
    shutil.copy(adapters["c"] / "adapter_model.safetensors", tmp_path / "c.safetensors")
    os.mkfifo(tmp_path / "a.safetensors")
    done = subprocess_cli(["linear", tmp_path / "c.safetensors", tmp_path / "a.safetensors", "--alpha", "8,8",
                           "-o", tmp_path / "m"])
    one_error_line(done.returncode, done.stderr.strip(), "a.safetensors", "FIFO")


# ---------------------------------------------------------------- outputs the filesystem refuses


def merge_to(out, adapters) -> list:
    return ["linear", adapters["a"], adapters["c"], "-o", out]


@pytest.mark.parametrize("out", ["/proc/adaptermerge-out", "/sys/adaptermerge-out", "/proc/self/x/out"])
def test_an_output_under_proc_or_sys_is_one_error_line(adapters, capsys, out):
    one_error_line(*cli(merge_to(out, adapters), capsys), out.rsplit("/", 1)[0])


def test_an_output_whose_parent_is_a_file_is_one_error_line(tmp_path, adapters, capsys):
    (tmp_path / "file").write_text("x")
    one_error_line(*cli(merge_to(tmp_path / "file" / "out", adapters), capsys), "file", "not a folder")
    assert (tmp_path / "file").read_text() == "x"


def test_a_dangling_symlink_output_is_one_error_line(tmp_path, adapters, capsys):
    (tmp_path / "out").symlink_to(tmp_path / "nowhere")
    for force in ([], ["--force"]):
        one_error_line(*cli(merge_to(tmp_path / "out", adapters) + force, capsys), "out", "dangling symlink")
    assert (tmp_path / "out").is_symlink() and not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("out", [".", "..", "./"])
def test_the_current_folder_or_above_is_never_an_output(tmp_path, adapters, capsys, monkeypatch, out):
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("mine")
    monkeypatch.chdir(work)
    one_error_line(*cli(merge_to(out, adapters) + ["--force"], capsys), "current folder")
    assert sorted(p.name for p in work.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]  # no `..old-*` or `.tmp-*`


@pytest.mark.parametrize("code, where", [
    (errno.EROFS, "mkdtemp"),      # a read-only mount: the temp folder cannot be made
    (errno.EACCES, "mkdtemp"),     # no permission (root ignores modes, so simulated)
    (errno.ENOSPC, "write"),       # a full disk while the output is written
    (errno.ENOSPC, "rename"),      # ... or when it is renamed into place
])
def test_a_failing_filesystem_is_one_error_line_and_leaves_nothing(tmp_path, adapters, tiny_base, capsys,
                                                                 monkeypatch, code, where):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(tmp_path / "out"))

    if where == "mkdtemp":
        monkeypatch.setattr(fileio.tempfile, "mkdtemp", fail)
        argv = merge_to(tmp_path / "out", adapters)
    elif where == "rename":
        real = os.replace

        def replace(src, dst):
            if ".tmp-" in str(src):
                fail()
            return real(src, dst)
        monkeypatch.setattr(fileio.os, "replace", replace)
        argv = merge_to(tmp_path / "out", adapters)
    else:
        from adaptermerge import stwriter

        def full(self, name, tensor):
            # what file.write raises on a full disk: an errno and no file name
            raise OSError(code, os.strerror(code))
        monkeypatch.setattr(stwriter.StreamingSafetensors, "write", full)
        argv = ["linear", adapters["a"], "--base", tiny_base, "--output", "model", "-o", tmp_path / "out"]
    code_, err = cli(argv, capsys)
    one_error_line(code_, err, "out", os.strerror(code))
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_an_oserror_past_every_writer_is_still_exit_2(monkeypatch, capsys):
    from adaptermerge.cli import main as main_mod

    def broken(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", "/some/file")
    monkeypatch.setattr(main_mod.cli, "main", broken)
    one_error_line(*cli(["linear"], capsys), "/some/file", "Permission denied")


def test_a_bug_is_exit_3_and_asks_for_a_report(monkeypatch, capsys):
    from adaptermerge.cli import main as main_mod

    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero")
    monkeypatch.setattr(main_mod.cli, "main", broken)
    code, err = cli(["linear"], capsys)
    assert code == 3 and err.startswith("internal error: ZeroDivisionError") and "report" in err and "\n" not in err


# ---------------------------------------------------------------- killed runs

# The real CLI, paused once the output is written and before it is renamed into place: the moment
# a kill leaves the most behind (a whole temp folder).
PAUSED = textwrap.dedent("""
    import sys, time
    from adaptermerge import fileio
    from adaptermerge.cli.main import main

    def paused(root):
        print("ready", flush=True)
        time.sleep(120)

    fileio._ordinary_modes = paused
    main(sys.argv[1:])
""")


def start_paused(argv) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", PAUSED, *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.strip() == "ready", proc.stderr.read()
    return proc


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_cleans_up_as_sigint_does(tmp_path, adapters, sig):
    proc = start_paused(merge_to(tmp_path / "out", adapters))
    assert leftovers(tmp_path), "the paused run should hold a temp folder"
    proc.send_signal(sig)
    assert proc.wait(timeout=TIMEOUT) == 128 + sig
    assert "terminated" in proc.stderr.read()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_next_run_removes_what_a_sigkilled_run_left(tmp_path, adapters):
    out = tmp_path / "out"
    proc = start_paused(merge_to(out, adapters))
    proc.kill()
    proc.wait(timeout=TIMEOUT)
    left = leftovers(tmp_path)
    assert left and left[0].startswith(".out.tmp-")
    done = subprocess_cli(merge_to(out, adapters))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_run_killed_between_its_renames_gets_the_previous_output_back(tmp_path):
    """Killed after moving the previous output aside and before renaming the new one in: the next
    run to that output finds the previous one put back, then replaces it as asked."""
    out = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    aside = tmp_path / f".out.old-{fileio._HOST}-{pid}.1-abc"
    (aside / "x").mkdir(parents=True)
    (aside / "x" / "f.txt").write_text("previous")
    (tmp_path / f".out.tmp-{fileio._HOST}-{pid}.1-def").mkdir()
    with pytest.raises(AdapterMergeError, match="already exists"):
        with fileio.atomic_dir(out):
            pass
    assert (out / "f.txt").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_live_runs_temp_folder_is_left_alone(tmp_path):
    live = tmp_path / f".out.tmp-{fileio._HOST}-{os.getpid()}.{fileio._start_time(os.getpid())}-abc"
    elsewhere = tmp_path / ".out.tmp-00000000-1.1-abc"  # another host's: its PIDs mean nothing here
    live.mkdir()
    elsewhere.mkdir()
    with fileio.atomic_dir(tmp_path / "out") as tmp:
        (tmp / "f.txt").write_text("new")
    assert live.exists() and elsewhere.exists() and (tmp_path / "out" / "f.txt").read_text() == "new"


def test_a_temp_folder_with_no_owner_is_named_not_removed(tmp_path, caplog):
    unknown = tmp_path / ".out.tmp-k2j4h5"  # as earlier versions named them: no host, no PID
    unknown.mkdir()
    with fileio.atomic_dir(tmp_path / "out") as tmp:
        (tmp / "f.txt").write_text("new")
    assert unknown.exists() and str(unknown) in caplog.text
