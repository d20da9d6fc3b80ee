"""Which base to merge QLoRA adapters onto: W0 (original) or dequant(NF4(W0)) (dequantized)?

For each QLoRA-trained adapter (and a linear merge of all of them) this builds the full merged model
both ways, and both again re-quantized to NF4 (weights replaced by dequant(NF4(W)) in float32: what
Linear4bit multiplies with), then measures against what was trained (the PEFT model on the
bitsandbytes NF4 base):
- kl: mean next-token KL(trained || variant) over every position of teacher-forced eval
  conversations (prompt + gold reply through the chat template), `--kl-records` per task;
- the task's metrics (adaptermerge.evalsuite.metrics) on `--records` eval records, greedy replies.
The same records for every variant. Prints a markdown table and writes JSON.

    python benchmarks/qlora_merge_onto.py /tmp/am_adapters/{domain,structured,safety} --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

MAX_NEW_TOKENS = {"domain": 16, "structured": 72, "safety": 24}


def eval_subset(task: str, n: int) -> list[dict]:
    from adaptermerge.chat.data import build_records

    records = build_records(task, "eval")
    if task == "safety":  # as many harmful as benign prompts
        harmful = [r for r in records if r["meta"]["harmful"]]
        benign = [r for r in records if not r["meta"]["harmful"]]
        return harmful[: n // 2] + benign[: n - n // 2]
    return records[:n]


@torch.no_grad()
def log_probs(model, tokenizer, records: list[dict]) -> list[torch.Tensor]:
    """Next-token log-probabilities [positions, vocab] over whole chat conversations (prompt + gold reply)."""
    out = []
    for r in records:
        ids = tokenizer.apply_chat_template(r["messages"], tokenize=True, return_tensors="pt", return_dict=True)["input_ids"]
        out.append(torch.log_softmax(model(ids).logits[0].float(), -1))
    return out


def mean_kl(reference: list[torch.Tensor], other: list[torch.Tensor]) -> float:
    """Mean over all positions of KL(reference || other)."""
    total = sum((p.exp() * (p - q)).sum(-1).clamp_min(0).sum().item() for p, q in zip(reference, other))
    return total / sum(p.shape[0] for p in reference)


def task_scores(model, tokenizer, task: str, records: list[dict]) -> dict:
    from adaptermerge.chat.generation import generate_responses
    from adaptermerge.evalsuite.metrics import aggregate, score

    replies = generate_responses(model, tokenizer, records, max_new_tokens=MAX_NEW_TOKENS[task], batch_size=20)
    return aggregate(task, [score(task, reply, r["meta"]) for reply, r in zip(replies, records)])


def nf4_weights(model, folder: Path):
    """Replace every Linear bitsandbytes would quantize by dequant(NF4(W)) in float32: what Linear4bit
    multiplies with, computed in full precision (bitsandbytes' CPU 4-bit matmul is far slower)."""
    from adaptermerge.qlora import quantizable_modules
    from adaptermerge.quantization import roundtrip

    for name in quantizable_modules(folder):
        weight = model.get_submodule(name).weight
        weight.data = roundtrip(weight.data.float(), "nf4").float()
    return model


def variants(adapters, weights, scratch: Path):
    """(label, model) of the four merged variants, one at a time."""
    from transformers import AutoModelForCausalLM

    from adaptermerge import merge_to_model

    for onto in ("original", "dequantized"):
        full = scratch / onto
        merge_to_model(adapters, full, "linear", weights, merge_onto=onto)
        yield f"merged onto {onto}", AutoModelForCausalLM.from_pretrained(full, dtype=torch.float32).eval()
        yield f"merged onto {onto}, re-quantized NF4", nf4_weights(AutoModelForCausalLM.from_pretrained(full, dtype=torch.float32), full).eval()
        shutil.rmtree(full)


def trained_model(adapter_dirs: list[Path], adapters, weights, scratch: Path):
    """What was trained: PEFT on the NF4 base (bitsandbytes Linear4bit), with the (linearly merged) adapter."""
    from peft import PeftModel

    from adaptermerge import merge
    from adaptermerge.base import load_model

    if len(adapters) == 1:
        trained_dir = adapter_dirs[0]
    else:
        trained_dir = scratch / "merged-adapter"
        merge(adapters, "linear", weights).save(trained_dir)
    return PeftModel.from_pretrained(load_model(None, quantization="nf4"), str(trained_dir)).eval()


def measure(label: str, adapter_dirs: list[Path], tasks: list[str], args) -> list[dict]:
    from adaptermerge import load_adapter
    from adaptermerge.base import load_tokenizer

    tokenizer = load_tokenizer(None)
    evals = {t: eval_subset(t, args.records) for t in tasks}
    kl_records = [r for t in tasks for r in eval_subset(t, args.kl_records)]
    adapters = [load_adapter(p) for p in adapter_dirs]
    weights = [1.0 / len(adapters)] * len(adapters) if len(adapters) > 1 else None
    rows = []
    scratch = Path(tempfile.mkdtemp(prefix="qlora_onto_"))
    try:
        start = time.time()
        trained = trained_model(adapter_dirs, adapters, weights, scratch)
        reference = log_probs(trained, tokenizer, kl_records)
        row = {"adapters": label, "variant": "trained (PEFT, NF4 base)"}
        if args.score_trained:
            for t in tasks if args.records else ():
                row.update({f"{t}.{k}": v for k, v in task_scores(trained, tokenizer, t, evals[t]).items()})
        del trained
        row["seconds"] = time.time() - start
        print(json.dumps(row), flush=True)
        rows.append(row)
        for name, model in variants(adapters, weights, scratch):
            start = time.time()
            row = {"adapters": label, "variant": name, "kl": mean_kl(reference, log_probs(model, tokenizer, kl_records))}
            for t in tasks if args.records else ():
                row.update({f"{t}.{k}": v for k, v in task_scores(model, tokenizer, t, evals[t]).items()})
            row["seconds"] = time.time() - start
            print(json.dumps(row), flush=True)
            rows.append(row)
            del model
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return rows


def task_of(adapter_dir: Path) -> str:
    return json.loads((adapter_dir / "training.json").read_text())["task"]


def markdown(rows: list[dict]) -> str:
    metrics = sorted({k for r in rows for k in r if "." in k})
    head = ["adapters", "variant", "KL vs trained", *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        kl = f"{r['kl']:.4f}" if "kl" in r else "(reference)"
        cells = [r["adapters"], r["variant"], kl] + [f"{r[m]:.3f}" if m in r else "" for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("adapters", nargs="+", type=Path, help="QLoRA adapter folders (each with training.json)")
    parser.add_argument("--records", type=int, default=20, help="eval records per task for the task metrics (0: KL only)")
    parser.add_argument("--kl-records", type=int, default=6, help="eval conversations per task for the KL")
    parser.add_argument("--score-trained", action="store_true", help="also score the NF4 PEFT model (slow on CPU)")
    parser.add_argument("--no-combined", action="store_true", help="skip the linear merge of all adapters")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    rows = []
    for d in args.adapters:
        rows += measure(d.name, [d], [task_of(d)], args)
    if len(args.adapters) > 1 and not args.no_combined:
        rows += measure("linear merge of " + " + ".join(d.name for d in args.adapters), args.adapters, [task_of(d) for d in args.adapters], args)
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
