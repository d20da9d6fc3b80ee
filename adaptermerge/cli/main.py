"""`adaptermerge` entry point: the click group and the one place errors become exit codes.

Exit status: 0 ok, 1 a gate failed (eval, run), 2 bad input (AdapterMergeError, a usage error, a
failing filesystem operation), 3 an internal error (a bug: rerun with ADAPTERMERGE_DEBUG=1 for the
traceback and report it), 130 interrupted (SIGINT), 143 terminated (SIGTERM), 129 hung up (SIGHUP).

Output: results (tables, verdicts, paths, --json) on stdout; progress bars, warnings and errors on
stderr. docs/cli.md describes these conventions, default outputs and shell completion.

Start-up: a command imports the api (torch, transformers, lm-eval) when it runs (cli/startup.py);
the method commands are built from the method registry, whose modules take torch through
adaptermerge.lazy, so `--help`, `methods` and usage errors load none of them
(benchmarks/bench_startup.py measures the start-up time).

Process-wide settings belong to this entry point, never to the library: `main` puts large CPU
tensors on transparent huge pages (THP_MEM_ALLOC_ENABLE, unless set) and turns off tqdm bars
(TQDM_DISABLE, unless set: on import of this module, before the command modules import torch,
which imports tqdm), and the merge commands ask the engine to tune glibc's allocator
(tune_allocator=True; ADAPTERMERGE_MALLOPT=0 turns it off).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import signal
import sys
import threading

import click

# No tqdm bars (datasets', lm-eval's, the hub's): the rich bars on stderr are the ones to read, and
# a tqdm bar writes `\r` redraws into a piped log. tqdm reads TQDM_DISABLE once, when it is first
# imported, and torch imports it: so the CLI entry point sets it here, before the command modules
# below import torch. The user's own value wins (TQDM_DISABLE=0).
os.environ.setdefault("TQDM_DISABLE", "1")

from ..errors import AdapterMergeError  # noqa: E402 - after TQDM_DISABLE
from ..fileio import os_error_message  # noqa: E402
from . import base_cmds, demo_cmds, diagnose_cmds, eval_cmds, info_cmds, merge_cmds, quantize_cmds, run_cmds, train_cmds  # noqa: E402

def version() -> str:
    """The installed distribution's version, as adaptermerge.__version__ (which this module may not
    import: no module imports the package root)."""
    try:
        return importlib.metadata.version("adaptermerge")
    except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


# Each exposes `register(group)` (click lists the commands alphabetically).
COMMAND_MODULES = (merge_cmds, info_cmds, base_cmds, train_cmds, eval_cmds, quantize_cmds, run_cmds, demo_cmds, diagnose_cmds)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(version(), "-V", "--version", prog_name="adaptermerge", message="%(prog)s %(version)s")
@click.option("-v", "--verbose", is_flag=True, help="Log what is done, module by module.")
def cli(verbose: bool) -> None:
    """Merge LoRA adapters exactly in delta space, train task adapters, validate merges.

    \b
      adaptermerge ties a.safetensors b.safetensors      # writes ./merged-ties/
      adaptermerge methods                               # the methods and their parameters
    Results go to stdout, progress and errors to stderr; exit status 0 ok, 1 a gate failed,
    2 bad input. Shell completion: eval "$(_ADAPTERMERGE_COMPLETE=bash_source adaptermerge)".
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # third-party chatter is quieted by the commands that load those libraries (startup.load_api)


for _module in COMMAND_MODULES:
    _module.register(cli)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread: unwinds like Ctrl-C, so every atomic_dir
    removes its temp folder, instead of the default action that kills the process on the spot."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _terminate(signum, frame) -> None:
    signal.signal(signum, signal.SIG_IGN)  # a second signal must not cut the cleanup short
    raise Terminated(signum)


def _install_signal_handlers() -> dict:
    """Route SIGTERM and SIGHUP to _terminate; returns the handlers replaced, to restore."""
    if threading.current_thread() is not threading.main_thread():
        return {}  # main() called from a thread (an embedding program): signals are not ours
    replaced = {}
    for name in ("SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)
        # only when the default action is in place: a parent that ignores it keeps its choice
        if signum is not None and signal.getsignal(signum) is signal.SIG_DFL:
            replaced[signum] = signal.signal(signum, _terminate)
    return replaced


def main(argv: list[str] | None = None) -> None:
    # Large CPU tensors on transparent huge pages: a merge allocates module-sized buffers over and
    # over, and on 4 KB pages a fresh 235 MB one (a Llama-3-8B MLP delta) costs ~60 ms of page
    # faults, on 2 MB pages ~10 ms. PyTorch reads this variable at its first large CPU allocation,
    # not at import, so setting it here, before any command runs, takes effect. The user's own
    # value wins (THP_MEM_ALLOC_ENABLE=0 turns it off).
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    replaced = _install_signal_handlers()
    try:
        _run(argv)
    finally:
        for signum, handler in replaced.items():  # main() called in-process (tests) leaves none behind
            signal.signal(signum, handler)


def _terminated(exc: Terminated) -> None:
    click.echo(f"terminated ({signal.Signals(exc.signum).name})", err=True)
    sys.exit(128 + exc.signum)


def _run(argv: list[str] | None) -> None:
    try:
        code = cli.main(args=argv, prog_name="adaptermerge", standalone_mode=False)
        # Commands return an int exit status (e.g. eval: 1 when a gate fails).
        sys.exit(code if isinstance(code, int) else 0)
    except AdapterMergeError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort as exc:
        if isinstance(exc.__context__, Terminated):  # click turns a KeyboardInterrupt into Abort
            _terminated(exc.__context__)
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:  # one line, as for bad input, instead of click's usage block
        where = exc.ctx.command_path if exc.ctx is not None else "adaptermerge"
        click.echo(f"error: {exc.format_message()} (see {where} --help)", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except SystemExit:
        raise
    except Terminated as exc:
        _terminated(exc)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except OSError as exc:  # the last net for a filesystem failure no writer turned into an error
        if os.environ.get("ADAPTERMERGE_DEBUG"):
            raise
        click.echo(f"error: {os_error_message(exc)}", err=True)
        sys.exit(2)
    except Exception as exc:  # a bug; keep the terminal readable, offer the traceback
        if os.environ.get("ADAPTERMERGE_DEBUG"):
            raise
        text = " ".join(f"{type(exc).__name__}: {exc}".split())
        text = text if len(text) <= 300 else text[:297] + "..."
        click.echo(
            f"internal error: {text} -- this is a bug in adaptermerge: please report it with the command you ran "
            "and the traceback (rerun with ADAPTERMERGE_DEBUG=1 to see it)",
            err=True,
        )
        sys.exit(3)


if __name__ == "__main__":
    main()
