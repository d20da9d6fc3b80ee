"""`adaptermerge methods` and `adaptermerge inspect`. `methods` lists the registry as cli/catalog.py
reads it."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from . import catalog
from .progress import results
from .startup import load_api


@click.command("methods")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def methods_cmd(as_json):
    """The merge methods and their parameters, with defaults."""
    rows = [{**{k: v for k, v in entry.items() if k != "doc"},
             "parameters": [{k: v for k, v in p.items() if k != "field"} for p in entry["parameters"]]}
            for entry in catalog.METHODS]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return 0
    table = Table(title="merge methods (all merge deltas scale * B @ A, never A and B separately)")
    for col in ("method", "what it does", "parameters (default)", "DoRA inputs", "adapter output"):
        table.add_column(col)
    for r in rows:
        params = "\n".join(f"{p['name']}={p['default']}{_yaml(p)}  [dim]{p['help']}[/dim]" for p in r["parameters"]) or "-"
        table.add_row(r["method"], r["summary"], params, "yes" if r["dora_inputs"] else "no", "exact" if r["exact_adapter_output"] else "truncated SVD (--rank)")
    results.print(table)
    results.print("(YAML: x) is the default a merge YAML file takes: mergekit's, where it differs (docs/mergekit.md)")
    return 0


def _yaml(p: dict) -> str:
    return f" (YAML: {p['yaml_default']})" if "yaml_default" in p else ""


@click.command("inspect")
@click.argument("adapter", type=click.Path(path_type=Path))
@click.option("--alpha", type=float, help="lora_alpha for a bare .safetensors file without config or metadata.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def inspect_cmd(adapter, alpha, as_json):
    """Modules, ranks, alphas, scales, delta norms, DoRA or not."""
    api = load_api()
    from ..inspection import describe  # with the api: start-up time

    info = describe(api.load_adapter(adapter, alpha=alpha))
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return 0
    head = f"{info['name']}: {'DoRA' if info['dora'] else 'LoRA'}{' (rsLoRA)' if info['rslora'] else ''}, {info['modules']} modules, ranks {info['ranks']}, {info['parameters']:,} parameters, {info['dtype']}, base {info['base_model']}"
    table = Table(title=head)
    for col in ("module", "rank", "alpha", "scale", "shape (out x in)", "||delta||_F", "DoRA |m| mean"):
        table.add_column(col, justify="right" if col != "module" else "left")
    for r in info["per_module"]:
        table.add_row(r["module"], str(r["rank"]), f"{r['alpha']:g}", f"{r['scale']:.4g}", f"{r['shape'][0]} x {r['shape'][1]}", f"{r['delta_norm']:.4g}", f"{r['magnitude_mean']:.4g}" if r["dora"] else "-")
    results.print(table)
    results.print(f"total ||delta||_F = {info['total_delta_norm']:.4g}")
    if info["dora"]:
        results.print(
            "[dim]DoRA: delta is scale * B @ A, the update of the direction; the magnitude vector rescales "
            "every row of W0 + delta as well, so the weight's full change needs the base weights[/]"
        )
    return 0


def register(group: click.Group) -> None:
    group.add_command(methods_cmd)
    group.add_command(inspect_cmd)
