"""README.md for a merge output: a model card made from its provenance (adaptermerge.json).

Pure text, no I/O: `model_card(meta)` takes the dict that provenance.provenance returns and gives
the card that the writers put beside it, in the same atomic folder. The YAML front matter is what
the Hugging Face hub reads (`base_model`, `library_name`, `tags`); the body says what went in
(each input with its sha256 and weight), how (method and parameters) and how close the low-rank
output came to the exact merge.
"""

from __future__ import annotations

import json

TAGS = ("adaptermerge", "merge", "lora")  # a merge's; a model only quantized carries the first


def _yaml_string(value) -> str:
    """A YAML scalar that reads back as this string: JSON's quoting is valid YAML."""
    return json.dumps(str(value))


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _cell(value) -> str:
    """Text fit for one Markdown table cell."""
    return " ".join(str(value).split()).replace("|", "\\|")


SCHEME_TAGS = {"nf4": ("bitsandbytes", "4-bit", "nf4"), "int8": ("bitsandbytes", "8-bit", "int8")}


def _quantization(meta: dict) -> dict:
    quant = meta.get("quantization")
    return quant if isinstance(quant, dict) else {}


def front_matter(meta: dict) -> str:
    """The YAML block the hub renders: base model, library (peft for an adapter) and tags."""
    lines = ["---"]
    if meta.get("base_model"):
        lines.append(f"base_model: {_yaml_string(meta['base_model'])}")
    lines.append(f"library_name: {'peft' if meta.get('output') == 'adapter' else 'transformers'}")
    lines.append("tags:")
    merged = ("merge", "lora") if meta.get("method") else ()
    lines += [f"- {tag}" for tag in (TAGS[0], *merged, *SCHEME_TAGS.get(_quantization(meta).get("scheme"), ()))]
    lines.append("---")
    return "\n".join(lines)


def _inputs_table(meta: dict) -> list[str]:
    weights = meta.get("weights") or []
    rows = ["| # | input | weight | ranks | sha256 |", "|---|---|---|---|---|"]
    for i, item in enumerate(meta.get("inputs") or []):
        weight = _number(weights[i]) if i < len(weights) else "-"
        ranks = ", ".join(map(str, item.get("ranks") or [])) or "-"
        where = item.get("path") or item.get("name") or "-"
        kind = " (DoRA)" if item.get("dora") else ""
        rows.append(f"| {i + 1} | `{_cell(where)}`{kind} | {weight} | {ranks} | `{item.get('sha256') or '-'}` |")
    return rows


def _summary(meta: dict) -> list[str]:
    summary = meta.get("summary") or {}
    if not summary:
        if meta.get("output") == "model":
            return ["The merged update is added to the base weights exactly (no low-rank truncation)."]
        return []
    exact = summary.get("all_exact")
    lines = [
        f"- modules: {summary.get('modules')}",
        f"- output ranks: {', '.join(map(str, summary.get('ranks') or []))}",
        f"- exact low rank: {'yes' if exact else 'no'}",
        f"- relative error of the low-rank factors against the exact merged delta: max {_number(summary.get('max_rel_error'))}, "
        f"mean {_number(summary.get('mean_rel_error'))}",
        f"- smallest share of the delta's energy kept: {_number(summary.get('min_energy'))}",
    ]
    return lines


def _quantization_lines(quant: dict) -> list[str]:
    """What re-quantizing did and cost, from quantization.quantize_model's report entry."""
    size = quant.get("size_bytes") or {}
    lines = [f"- scheme: {quant.get('scheme')} (bitsandbytes {quant.get('bitsandbytes', '?')})"
             + (f", blocksize {quant['blocksize']}, double quantization" if quant.get("double_quant") else ""),
             f"- compute dtype (the layers left unquantized are stored in it): {quant.get('compute_dtype')}"]
    if size.get("before") and size.get("after"):
        lines.append(f"- weights: {size['before'] / 2**20:.1f} MiB before, {size['after'] / 2**20:.1f} MiB after")
    if quant.get("quantized_layers"):
        lines.append(f"- relative weight error over {quant['quantized_layers']} layers: mean {_number(quant.get('mean_layer_error'))}, "
                     f"max {_number(quant.get('max_layer_error'))}")
    kl = quant.get("kl")
    if isinstance(kl, dict) and kl.get("mean") is not None:
        lines.append(f"- next-token KL against the full-precision model: mean {_number(kl['mean'])}"
                     + (f", max {_number(kl['max'])}" if kl.get("max") is not None else ""))
    return lines


def _heal_lines(heal: dict) -> list[str]:
    """The post-merge distillation (training/heal.py): not a data-free merge, so the card says so."""
    losses = heal.get("loss_per_step") or []
    lines = [f"After the merge, this adapter was trained {heal.get('steps')} steps: a merge that uses training compute, "
             "like sequential training, not a data-free merge.",
             f"- loss: {heal.get('loss')}" + (f", {_number(losses[0])} at the first step, {_number(losses[-1])} at the last" if losses else "")]
    for name, task in (heal.get("tasks") or {}).items():
        lines.append(f"- {name}: {task.get('prompts')} prompts from {task.get('source')}; teacher {task.get('teacher')}")
    anchors = heal.get("anchors")
    if anchors:
        lines.append(f"- anchors: {anchors.get('prompts')} general prompts; teacher {anchors.get('teacher')}")
    return lines


def model_card(meta: dict) -> str:
    """The README.md text for an output whose provenance is `meta` (a merge's, a quantized model's,
    or both)."""
    output = meta.get("output", "adapter")
    method = meta.get("method")
    quant = _quantization(meta)
    what = "LoRA adapter" if output == "adapter" else "model"
    base = meta.get("base_model")
    scheme = f" ({quant['scheme'].upper()})" if quant.get("scheme") else ""
    if method:
        lines = [front_matter(meta), "", f"# Merged {what}: {method}{scheme}", ""]
        lines.append(f"This {what} was made with adaptermerge from "
                     f"{len(meta.get('inputs') or [])} LoRA adapters with the `{method}` method"
                     + (f", on base model `{base}`" if base else "")
                     + (", then quantized with bitsandbytes." if quant else "."))
    else:
        lines = [front_matter(meta), "", f"# Quantized model{scheme}", ""]
        lines.append(f"This model is `{quant.get('source', '?')}`, quantized with adaptermerge and bitsandbytes.")
    lines.append("")
    if quant:
        lines.append("It loads quantized as saved (config.json carries its quantization_config); bitsandbytes must be installed.")
        lines.append("")
    if output == "adapter":
        lines += ["Load it with PEFT:", "", "```python", "from peft import AutoPeftModelForCausalLM", "",
                  'model = AutoPeftModelForCausalLM.from_pretrained("path/to/this/folder")', "```", ""]
    else:
        lines += ["Load it with transformers:", "", "```python", "from transformers import AutoModelForCausalLM", "",
                  'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")', "```", ""]
    if method:
        lines += ["## Inputs", "", *_inputs_table(meta), ""]
        lines += ["## Method", "", f"- method: `{method}`"]
        params = meta.get("params") or {}
        if params:
            lines.append("- parameters: " + ", ".join(f"{k}={_number(v)}" for k, v in params.items()))
        for key, label in (("seed", "seed"), ("rank", "rank"), ("dtype", "dtype"), ("device", "device")):
            if meta.get(key) is not None:
                lines.append(f"- {label}: {meta[key]}")
        onto = meta.get("merge_onto")
        if isinstance(onto, dict) and onto.get("merge_onto"):
            lines.append(f"- merged onto: {onto['merge_onto']}")
        lines.append("")
        summary = _summary(meta)
        if summary:
            lines += ["## Per-module error", "", *summary, ""]
    if isinstance(meta.get("heal"), dict):
        lines += ["## Heal (uses training compute)", "", *_heal_lines(meta["heal"]), ""]
    if quant:
        lines += ["## Quantization", "", *_quantization_lines(quant), ""]
    versions = meta.get("versions") or {}
    if versions:
        lines += ["## Provenance", "",
                  f"Created {meta.get('created', '?')} with " + ", ".join(f"{k} {v}" for k, v in versions.items() if v) + ".",
                  "adaptermerge.json beside this file records every module's figures and the inputs in full.", ""]
    return "\n".join(lines)
