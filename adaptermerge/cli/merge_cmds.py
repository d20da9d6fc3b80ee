"""`adaptermerge METHOD INPUT... -o OUT` for every registered method, and `adaptermerge merge CONFIG`:
flags or a YAML file become a MergeJob, which api.run_merge_job runs; this module parses and prints."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import click
from rich.table import Table

from ..api import METHODS, run_merge_job
from ..errors import AdapterMergeError
from ..mergeconfig import MergeJob, load_merge_config
from ..validate import quote
from .options import COUNT, FINITE, INT32, SEED
from .progress import console, progress_bar
from .quantize_cmds import quantization_table


def _floats(text: str | None, what: str, finite: bool = True) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(x) for x in text.split(",")]  # an empty entry ("1,,2") is an error, not skipped
    except ValueError:
        raise AdapterMergeError(f"--{what} {quote(text)}: expected comma-separated numbers such as 0.6,0.4") from None
    if finite and not all(math.isfinite(v) for v in values):
        raise AdapterMergeError(f"--{what} {quote(text)}: expected finite numbers")
    return values


def _param_options(method):
    """click options generated from the method's Params dataclass."""
    options = []
    for f in dataclasses.fields(method.Params):
        flag = f.name.rstrip("_").replace("_", "-")
        help_text = f"{f.metadata.get('help', '')} (default {f.default})"
        if f.type in (bool, "bool"):
            options.append(click.Option([f"--{flag}/--no-{flag}", f.name], default=None, help=help_text))
        elif "choices" in f.metadata:
            options.append(click.Option([f"--{flag}", f.name], type=click.Choice(f.metadata["choices"]), default=None, help=help_text))
        else:
            kind = {"float": FINITE, "int": INT32, "str": str}.get(f.type if isinstance(f.type, str) else f.type.__name__, str)
            options.append(click.Option([f"--{flag}", f.name], type=kind, default=None, help=help_text))
    return options


COMMON = [
    click.Argument(["inputs"], nargs=-1, required=True, type=click.Path(path_type=Path)),
    click.Option(["-o", "--out"], required=True, type=click.Path(path_type=Path), help="Output folder."),
    click.Option(["--weights"], help="One weight per input, comma-separated (default: 1 each)."),
    click.Option(["--alpha"], help="lora_alpha for bare .safetensors inputs without a config: one value, or one per input."),
    click.Option(["--rank"], type=COUNT, help="Output rank (default: exact for linear families, sum of input ranks otherwise)."),
    click.Option(["--base"], help="Base model: HF id or local folder (default: the adapters' base, else the embedded SmolLM2-135M-Instruct)."),
    click.Option(["--output", "output_kind"], type=click.Choice(["adapter", "model"]), default="adapter", show_default=True, help="A PEFT adapter, or the full merged model."),
    click.Option(["--shard-size"], default="2GB", show_default=True, help="Shard size for --output model."),
    click.Option(["--merge-onto"], help="--output model: add the delta to the original base weights, or to dequant(NF4(W0)) as QLoRA adapters were trained (original|dequantized; default from the adapters' training.json)."),
    click.Option(["--requantize"], help="--output model: write the merged model quantized with bitsandbytes (nf4|int8)."),
    click.Option(["--compute-dtype"], default="float32", show_default=True, help="With --requantize: float32, bfloat16 or float16."),
    click.Option(["--seed"], type=SEED, default=0, show_default=True, help="Seed for random methods (DARE)."),
    click.Option(["--device"], type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True),
    click.Option(["--ignore-base-mismatch"], is_flag=True, help="Merge adapters whose recorded base models differ."),
    click.Option(["--force"], is_flag=True, help="Replace an existing output (never an input adapter or the base model's folder)."),
]


def _method_command(name: str, method) -> click.Command:
    def callback(inputs, out, weights, alpha, rank, base, output_kind, shard_size, merge_onto, requantize, compute_dtype, seed, device, ignore_base_mismatch, force, **params):
        job = MergeJob(
            inputs=list(inputs),
            out=out,
            method=name,
            weights=_floats(weights, "weights"),
            alphas=_floats(alpha, "alpha", finite=False),  # checked per input, with its name
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
        )
        return run_and_report(job)

    doc = (method.__doc__ or method.summary).strip()
    return click.Command(name, params=COMMON + _param_options(method), callback=callback, help=doc, short_help=method.summary)


def run_and_report(job: MergeJob) -> int:
    start = time.time()
    # the bar is drawn at the first progress call: an input refused before any work prints alone
    with progress_bar(f"{job.method} -> {job.output}") as update:
        meta = run_merge_job(job, progress=update, quantize_progress=lambda stage, done, total: update(done, total, f"quantize: {stage}"),
                             tune_allocator=True)
    summary = meta.get("summary") or {}
    table = Table(title=f"{job.method}: {len(job.inputs)} adapters -> {job.out}", show_header=False)
    table.add_row("output", job.output)
    table.add_row("modules", str(summary.get("modules", meta.get("modules_merged", "-"))))
    if summary:
        table.add_row("output ranks", ", ".join(map(str, summary["ranks"])))
        exact = "yes" if summary["all_exact"] else f"no (max rel. error {summary['max_rel_error']:.3g}, mean {summary['mean_rel_error']:.3g}, min energy {summary['min_energy']:.4f})"
        table.add_row("exact low rank", exact)
    onto = meta.get("merge_onto")
    if onto:
        table.add_row("merged onto", f"{onto['merge_onto']} ({onto['reason']})")
    table.add_row("time", f"{time.time() - start:.1f} s")
    console.print(table)
    if meta.get("quantization"):
        console.print(quantization_table(meta["quantization"]))
    return 0


@click.command("merge")
@click.argument("config", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), help="Output folder (overrides the config's).")
@click.option("--force", is_flag=True, help="Replace an existing output.")
def merge_config_cmd(config, out, force):
    """Run a merge described by a YAML file (mergekit-style: merge_method, models, parameters)."""
    return run_and_report(load_merge_config(config, out=out, force=force))


def register(group: click.Group) -> None:
    for name, method in METHODS.items():
        group.add_command(_method_command(name, method))
    group.add_command(merge_config_cmd)
