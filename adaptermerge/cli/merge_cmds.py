"""`adaptermerge METHOD INPUT... [-o OUT]` for every registered method, and `adaptermerge merge CONFIG`:
flags or a YAML file become a MergeJob, which api.run_merge_job runs; this module parses and prints.

The commands are built from the method registry (as cli/catalog.py lists it) and import the api
only when they run (start-up time).
Output: the summary table and the output's path on stdout (or, with --json, the merge's provenance
as JSON), the progress bar on stderr. Without -o, a method command writes ./merged-METHOD/.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
from rich.table import Table

from ..errors import AdapterMergeError
from . import catalog
from .options import COUNT, FINITE, INT32, SEED, float_list, name_files
from .progress import progress_bar, results
from .quantize_cmds import quantization_table
from .startup import load_api


def _param_options(entry: dict) -> list[click.Option]:
    """click options for a method's parameters (its Params dataclass, as the catalog lists it)."""
    options = []
    for p in entry["parameters"]:
        flag = p["name"].replace("_", "-")
        help_text = f"{p['help']} (default {p['default']}" + (f"; {p['yaml_default']} in a YAML config, as mergekit)" if "yaml_default" in p else ")")
        if p["type"] == "bool":
            options.append(click.Option([f"--{flag}/--no-{flag}", p["field"]], default=None, help=help_text))
        elif p["type"] == "choice":
            options.append(click.Option([f"--{flag}", p["field"]], type=click.Choice(p["choices"]), default=None, help=help_text))
        else:
            kind = {"float": FINITE, "int": INT32, "str": str}.get(p["type"], str)
            options.append(click.Option([f"--{flag}", p["field"]], type=kind, default=None, help=help_text))
    return options


COMMON = [
    click.Argument(["inputs"], nargs=-1, required=True, type=click.Path(path_type=Path)),
    click.Option(["-o", "--out"], type=click.Path(path_type=Path), help="Output folder (default: ./merged-METHOD/, refused if it exists unless --force)."),
    click.Option(["--weights"], help="One weight per input, comma-separated (default: 1 each)."),
    click.Option(["--alpha"], help="lora_alpha for bare .safetensors inputs without a config: one value, or one per input."),
    click.Option(["--rank"], type=COUNT, help="Output rank (default: exact for linear families, sum of input ranks otherwise)."),
    click.Option(["--base"], help="Base model: HF id or local folder (default: the adapters' base, else the embedded SmolLM2-135M-Instruct)."),
    click.Option(["--output", "output_kind"], type=click.Choice(["adapter", "model"]), default="adapter", show_default=True, help="A PEFT adapter, or the full merged model."),
    click.Option(["--shard-size"], default="2GB", show_default=True, help="Shard size for --output model."),
    click.Option(["--merge-onto"], help="--output model: add the delta to the original base weights, or to dequant(NF4(W0)) as QLoRA adapters were trained (original|dequantized; default from the adapters' training.json)."),
    click.Option(["--requantize"], help="--output model: write the merged model quantized with bitsandbytes (nf4|int8)."),
    click.Option(["--compute-dtype"], default="float32", show_default=True, help="With --requantize: float32, bfloat16 or float16."),
    click.Option(["--dtype"], type=click.Choice(["float32", "bfloat16", "float16"]), help="dtype of the written adapter factors or model weights (default: as the inputs)."),
    click.Option(["--seed"], type=SEED, default=0, show_default=True, help="Seed for random methods (DARE)."),
    click.Option(["--device"], type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True),
    click.Option(["--ignore-base-mismatch"], is_flag=True, help="Merge adapters whose recorded base models differ."),
    click.Option(["--force"], is_flag=True, help="Replace an existing output (never an input adapter or the base model's folder)."),
    click.Option(["--heal"], type=click.IntRange(0, 2**31 - 1), default=0, metavar="STEPS",
                 help="After the merge, train the merged adapter STEPS steps to reproduce each input adapter's replies on its own "
                      "training prompts (and the base's on anchor prompts): a merge that uses training compute (docs/heal.md)."),
    click.Option(["--heal-prompts"], multiple=True, metavar="NAME=FILE.jsonl",
                 help="With --heal: the prompts for the adapter (or task) NAME, instead of the training data its training.json names."),
    click.Option(["--json", "as_json"], is_flag=True, help="Print the merge's provenance as JSON instead of the table: path, method, params, weights, inputs, summary, modules (per module), as in OUT/adaptermerge.json."),
]


def default_out(method: str) -> Path:
    """Where a method command writes without -o: ./merged-METHOD/ (a relative path, shown as typed)."""
    return Path(f"merged-{method}")


def _method_command(entry: dict) -> click.Command:
    name = entry["method"]

    def callback(inputs, out, weights, alpha, rank, base, output_kind, shard_size, merge_onto, requantize, compute_dtype, dtype, seed, device,
                 ignore_base_mismatch, force, heal, heal_prompts, as_json, **params):
        if out is None:
            out = default_out(name)
            if out.exists() and not force:  # the default is never replaced silently
                raise AdapterMergeError(f"{out}/ (the default output of {name}) already exists: pass -o DIR for another folder, or --force to replace it")
        from ..mergeconfig import MergeJob  # with the api: start-up time

        job = MergeJob(
            inputs=list(inputs),
            out=out,
            method=name,
            weights=float_list(weights, "weights"),
            alphas=float_list(alpha, "alpha", finite=False),  # checked per input, with its name
            params={k: v for k, v in params.items() if v is not None},
            rank=rank,
            base=base,
            output=output_kind,
            shard_size=shard_size,
            seed=seed,
            device=device,
            check_base=not ignore_base_mismatch,
            force=force,
            merge_onto=merge_onto,
            requantize=requantize,
            compute_dtype=compute_dtype,
            dtype=dtype,
            heal=heal,
            heal_prompts=name_files(heal_prompts, "heal-prompts"),
        )
        return run_and_report(job, as_json)

    return click.Command(name, params=COMMON + _param_options(entry), callback=callback, help=entry["doc"], short_help=entry["summary"])


def run_and_report(job, as_json: bool = False) -> int:
    """Run a MergeJob under a progress bar (stderr); print the summary or the JSON (stdout)."""
    api = load_api()
    start = time.time()
    # the bar is drawn at the first progress call: an input refused before any work prints alone
    with progress_bar(f"{job.method} -> {job.output}") as update:
        meta = api.run_merge_job(job, progress=update, quantize_progress=lambda stage, done, total: update(done, total, f"quantize: {stage}"),
                                 tune_allocator=True)
    if as_json:
        # the provenance written to OUT/adaptermerge.json (its "output" is the kind), and where OUT is
        click.echo(json.dumps({"path": str(job.out), **meta}, indent=2, default=str))
        return 0
    summary = meta.get("summary") or {}
    table = Table(title=f"{job.method}: {len(job.inputs)} adapters -> {job.out}", show_header=False)
    table.add_row("output", job.output)
    table.add_row("modules", str(summary.get("modules", meta.get("modules_merged", "-"))))
    if summary:
        table.add_row("output ranks", ", ".join(map(str, summary["ranks"])))
        exact = "yes" if summary["all_exact"] else f"no (max rel. error {summary['max_rel_error']:.3g}, mean {summary['mean_rel_error']:.3g}, min energy {summary['min_energy']:.4f})"
        table.add_row("exact low rank", exact)
    heal = meta.get("heal")
    if heal:
        losses = heal["loss_per_step"]
        table.add_row("heal (training compute)", f"{heal['steps']} steps, {heal['rows']} prompts, loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    onto = meta.get("merge_onto")
    if onto:
        table.add_row("merged onto", f"{onto['merge_onto']} ({onto['reason']})")
    table.add_row("time", f"{time.time() - start:.1f} s")
    results.print(table)
    if meta.get("quantization"):
        results.print(quantization_table(meta["quantization"]))
    click.echo(f"wrote {'merged model' if job.output == 'model' else 'merged adapter'} -> {job.out}")
    return 0


@click.command("merge")
@click.argument("config", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), help="Output folder (overrides the config's).")
@click.option("--force", is_flag=True, help="Replace an existing output.")
@click.option("--json", "as_json", is_flag=True, help="Print the merge's provenance as JSON instead of the table.")
def merge_config_cmd(config, out, force, as_json):
    """Run a merge described by a YAML file (mergekit-style: merge_method, models, parameters).
    Parameters the file leaves out take mergekit's defaults, not the method commands' (ties,
    dare_*, breadcrumbs: density 1; dare_*: normalize false): `adaptermerge methods` and
    docs/mergekit.md list them."""
    load_api()  # torch, transformers: loaded when a command runs (start-up time)
    from ..mergeconfig import load_merge_config

    return run_and_report(load_merge_config(config, out=out, force=force), as_json)


def register(group: click.Group) -> None:
    for entry in catalog.METHODS:
        group.add_command(_method_command(entry))
    group.add_command(merge_config_cmd)
