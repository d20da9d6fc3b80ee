"""`adaptermerge quantize`: re-quantize a full-precision model folder to NF4 or int8 and report the
cost. A thin shell over api.quantize."""

from __future__ import annotations

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .options import DEVICE
from .progress import results
from .startup import load_api

STAGE_LABELS = {"load": "load + quantize", "save": "save", "layers": "layer errors", "kl": "KL on prompts"}


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 2**20:,.1f} MiB"


def quantization_table(entry: dict, worst: int = 8) -> Table:
    """Worst layers by relative error, then the summary rows: mean error, KL, sizes."""
    from ..quantization import worst_layers  # imports torch: start-up time

    table = Table(title=f"{entry['scheme']} quantization of {entry['source']}", show_lines=False)
    table.add_column("layer")
    table.add_column("relative error", justify="right")
    for name, error in worst_layers(entry["layers"], worst):
        table.add_row(name, f"{error:.4f}")
    table.add_section()
    table.add_row(f"mean over {entry['quantized_layers']} layers", f"{entry['mean_layer_error']:.4f}")
    kl = entry.get("kl")
    kl_text = f"{kl['mean']:.4g} (max {kl['max']:.3g}, {kl['tokens']} tokens)" if kl else "n/a (no tokenizer)"
    table.add_row(f"next-token KL, mean over {kl['prompts'] if kl else 0} prompts", kl_text)
    before, after = entry["size_bytes"]["before"], entry["size_bytes"]["after"]
    table.add_row("weights on disk", f"{_size(before)} -> {_size(after)} ({after / before:.0%})")
    table.add_row("quantize + save", f"{entry['seconds_quantize_and_save']:.1f} s")
    return table


def register(group: click.Group) -> None:
    @group.command("quantize")
    @click.argument("model_dir", type=click.Path(file_okay=False, path_type=str))
    @click.option("--scheme", type=click.Choice(["nf4", "int8"], case_sensitive=False), default="nf4", show_default=True,
                  help="nf4: 4-bit NormalFloat with double quantization; int8: LLM.int8 row-wise.")
    @click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=str), help="Output folder.")
    @click.option("--compute-dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True,
                  help="Matmul dtype of NF4 layers and dtype of the parameters left unquantized.")
    @click.option("--device", type=DEVICE, default="cpu", show_default=True, help="cpu or cuda[:N].")
    @click.option("--force", is_flag=True, help="Replace an existing output folder.")
    def quantize(model_dir: str, scheme: str, out_dir: str, compute_dtype: str, device: str, force: bool) -> int:
        """Quantize MODEL_DIR (full precision) with bitsandbytes into a folder that reloads quantized."""
        api = load_api()
        console = Console(stderr=True)
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), console=console, transient=True) as bars:
            tasks: dict[str, int] = {}

            def progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bars.add_task(STAGE_LABELS.get(stage, stage), total=total)
                bars.update(tasks[stage], completed=done, total=total)

            entry = api.quantize(model_dir, out_dir, scheme, compute_dtype=compute_dtype, device=device,
                                   force=force, progress=progress)
        results.print(quantization_table(entry))
        click.echo(f"wrote {out_dir} (report in {out_dir}/adaptermerge.json)")
        return 0
