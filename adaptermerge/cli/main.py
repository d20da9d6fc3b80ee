"""`adaptermerge` entry point: the click group and the one place errors become exit codes.

Exit status: 0 ok, 1 a gate failed (eval), 2 bad input (AdapterMergeError or a usage error),
3 an internal error (a bug: rerun with ADAPTERMERGE_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import click

from ..errors import AdapterMergeError
from ..quiet import quiet_third_party

# Command modules, each exposing `register(group)`. Imported lazily-ish: a module that fails to
# import (an optional dependency missing) does not take the whole CLI down.
COMMAND_MODULES = [
    "adaptermerge.cli.merge_cmds",
    "adaptermerge.cli.info_cmds",
    "adaptermerge.cli.base_cmds",
    "adaptermerge.cli.train_cmds",
    "adaptermerge.cli.eval_cmds",
    "adaptermerge.cli.quantize_cmds",
    "adaptermerge.cli.demo_cmds",
]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("-v", "--verbose", is_flag=True, help="Log what is done, module by module.")
def cli(verbose: bool) -> None:
    """Merge LoRA adapters exactly in delta space, train task adapters, validate merges."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_third_party()


def _load_commands() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # not written yet
                continue
            raise
        module.register(cli)


def main(argv: list[str] | None = None) -> None:
    _load_commands()
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
