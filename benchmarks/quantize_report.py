"""Quantize the embedded base (or any full-precision folder) to NF4 and int8 and record what it costs.

    HF_HUB_OFFLINE=1 python benchmarks/quantize_report.py [--model DIR] [--out results.json]

For each scheme: seconds to quantize + save, weights on disk before/after, mean and max per-layer
relative error, mean next-token KL on the built-in prompts, then a fresh reload with
`from_pretrained` and a greedy generation on the same device (seconds and the text).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from adaptermerge import quantization as q
from adaptermerge.base import resolve_base

PROMPT = "The capital of France is"


def reload_and_generate(folder: Path, device: str, new_tokens: int = 16) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder, device_map={"": device}).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    loaded = time.perf_counter() - start
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"].to(device)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return {
        "layer_type": type(model.model.layers[0].mlp.up_proj).__name__,
        "seconds_reload": loaded,
        "seconds_generate": time.perf_counter() - start,
        "text": tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="full-precision model folder (default: the embedded base)")
    parser.add_argument("--schemes", default="nf4,int8")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="write the figures here as JSON")
    args = parser.parse_args()

    model_dir = resolve_base(args.model)
    results = {"model": str(model_dir), "device": args.device, "torch": torch.__version__,
               "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "load_average_at_start": os.getloadavg(), "schemes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for scheme in args.schemes.split(","):
            out = Path(tmp) / scheme
            entry = q.quantize_model(model_dir, out, scheme, device=args.device)
            summary = {k: entry[k] for k in ("seconds_quantize_and_save", "seconds_measure", "size_bytes",
                                             "mean_layer_error", "median_layer_error", "max_layer_error",
                                             "quantized_layers", "kl")}
            summary["worst_layers"] = q.worst_layers(entry["layers"], 3)
            summary["reload"] = reload_and_generate(out, args.device)
            summary["load_average_after"] = os.getloadavg()
            results["schemes"][scheme] = summary
            print(json.dumps({scheme: summary}, indent=2), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
