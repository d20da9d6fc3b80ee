"""The evaluation helper process ends with its parent, however the parent ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

PARENT = textwrap.dedent("""
    import multiprocessing, sys, time
    from adaptermerge.evalsuite.parallel import exit_with_parent

    def child():
        exit_with_parent()
        time.sleep(120)

    if __name__ == "__main__":
        p = multiprocessing.get_context("spawn").Process(target=child, daemon=True)
        p.start()
        print(p.pid, flush=True)
        time.sleep(120)
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): it has ended, its parent just has not reaped it.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_helper_exits_when_its_parent_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        time.sleep(1.0)
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)  # no atexit, no daemon clean-up
        parent.wait(timeout=10)
        deadline = time.time() + 15
        while _alive(child) and time.time() < deadline:
            time.sleep(0.2)
        assert not _alive(child), "the helper outlived its parent"
    finally:
        parent.kill()


def test_helper_is_as_quiet_as_its_parent(monkeypatch):
    """A spawned helper starts with default warning filters and log levels; a quiet parent (the
    CLI) tells it to silence the libraries' chatter too, which otherwise fills the demo's log."""
    import logging

    from adaptermerge.evalsuite import parallel

    started = []

    class FakeContext:
        Queue = staticmethod(lambda: None)

        @staticmethod
        def Process(target, args, daemon):
            started.append(args)
            return type("P", (), {"start": lambda self: None})()

    monkeypatch.setattr(parallel.multiprocessing, "get_context", lambda kind: FakeContext)
    from adaptermerge.evalsuite.settings import EvalSettings

    settings = EvalSettings()
    hf = logging.getLogger("transformers")
    monkeypatch.setattr(hf, "level", logging.WARNING)
    parallel.Helper((), settings, "base")
    monkeypatch.setattr(hf, "level", logging.ERROR)
    parallel.Helper((), settings, "base")
    assert [args[-1] for args in started] == [False, True]
