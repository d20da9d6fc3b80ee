"""`adaptermerge` entry point: the click group and the one place errors become exit codes.

Exit status: 0 ok, 1 a gate failed (eval, run), 2 bad input (AdapterMergeError or a usage error),
3 an internal error (a bug: rerun with ADAPTERMERGE_DEBUG=1 for the traceback).

Process-wide settings belong to this entry point, never to the library: `main` puts large CPU
tensors on transparent huge pages (THP_MEM_ALLOC_ENABLE, unless set), and the merge commands ask
the engine to tune glibc's allocator (tune_allocator=True; ADAPTERMERGE_MALLOPT=0 turns it off).
"""

from __future__ import annotations

import logging
import os
import sys

import click

from ..errors import AdapterMergeError
from ..quiet import quiet_third_party
from . import base_cmds, demo_cmds, eval_cmds, info_cmds, merge_cmds, quantize_cmds, run_cmds, train_cmds

# Each exposes `register(group)` (click lists the commands alphabetically).
COMMAND_MODULES = (merge_cmds, info_cmds, base_cmds, train_cmds, eval_cmds, quantize_cmds, run_cmds, demo_cmds)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("-v", "--verbose", is_flag=True, help="Log what is done, module by module.")
def cli(verbose: bool) -> None:
    """Merge LoRA adapters exactly in delta space, train task adapters, validate merges."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_third_party()


for _module in COMMAND_MODULES:
    _module.register(cli)


def main(argv: list[str] | None = None) -> None:
    # Large CPU tensors on transparent huge pages: a merge allocates module-sized buffers over and
    # over, and on 4 KB pages a fresh 235 MB one (a Llama-3-8B MLP delta) costs ~60 ms of page
    # faults, on 2 MB pages ~10 ms. PyTorch reads this variable at its first large CPU allocation,
    # not at import, so setting it here, before any command runs, takes effect. The user's own
    # value wins (THP_MEM_ALLOC_ENABLE=0 turns it off).
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    try:
        code = cli.main(args=argv, prog_name="adaptermerge", standalone_mode=False)
        # Commands return an int exit status (e.g. eval: 1 when a gate fails).
        sys.exit(code if isinstance(code, int) else 0)
    except AdapterMergeError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
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
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # a bug; keep the terminal readable, offer the traceback
        if os.environ.get("ADAPTERMERGE_DEBUG"):
            raise
        click.echo(f"internal error: {type(exc).__name__}: {exc} (set ADAPTERMERGE_DEBUG=1 for the traceback)", err=True)
        sys.exit(3)


if __name__ == "__main__":
    main()
