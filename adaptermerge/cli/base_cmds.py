"""`adaptermerge base`: prepare the base model (the embedded one by default) and say where it lives."""

from __future__ import annotations

import click
from rich.console import Console

from .. import base
from ..quiet import quiet_third_party


def register(group: click.Group) -> None:
    group.add_command(base_cmd)


@click.command("base")
@click.option("--base", "name", default=None, help="HF id or local folder (default: the embedded SmolLM2-135M-Instruct).")
def base_cmd(name: str | None) -> None:
    """Prepare the base model (convert the embedded GGUF once) and print its folder."""
    quiet_third_party()  # transformers' chatter (the CLI's start-up leaves it to the commands)
    console = Console(stderr=True)
    with console.status("preparing the base model (converting the embedded GGUF on first use)"):
        folder = base.resolve_base(name)
    console.print(f"[bold]{base.base_id(name)}[/bold]")
    click.echo(str(folder))
