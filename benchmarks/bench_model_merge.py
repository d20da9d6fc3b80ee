"""Full-model merge benchmark: adaptermerge `--output model` against PEFT and mergekit, in one run.

Three random rank-16 LoRA adapters on all seven projections, summed (weights 1) into
  (a) SmolLM2-135M-Instruct, the embedded base (fp32, one 0.5 GB file), and
  (b) a synthetic Llama saved with save_pretrained in 1 GB shards (default: hidden 2048, MLP 5632,
      16 layers, vocab 8000, fp32: about 3 GB).
Each tool runs in its own child process; the parent reads the child's wall time and its peak RSS
(GNU time's %M: the child's own max RSS, i.e. its VmHWM):
  adaptermerge  merge_to_model(..., "task_arithmetic", weights 1) streaming the base shard by shard;
  peft          load base, load 3 adapters, add_weighted_adapter(cat), merge_and_unload, save_pretrained;
  mergekit      mergekit-yaml task_arithmetic of three `base+adapterN` models (weight 1 each) over the
                base: it first merges each LoRA into a full copy of the base (--lora-merge-cache).
All three write 1 GB shards; one weight is compared across the outputs to show they agree.

    python benchmarks/bench_model_merge.py                   # both cases
    python benchmarks/bench_model_merge.py --case a          # SmolLM2 only
    python benchmarks/bench_model_merge.py --layers 4        # a smaller synthetic model
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# As the CLI runs a merge: large CPU tensors on transparent huge pages (the library itself no longer
# sets this; children inherit it). THP_MEM_ALLOC_ENABLE=0 measures without.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_merge import write_adapters  # noqa: E402

GNU_TIME = "/usr/bin/time"
MERGEKIT = os.environ.get("MERGEKIT_YAML", "/tmp/mkvenv/bin/mergekit-yaml")
SYNTHETIC = dict(hidden_size=2048, intermediate_size=5632, num_attention_heads=16, num_key_value_heads=4, vocab_size=8000, max_position_embeddings=512, tie_word_embeddings=False)
SHARD = "1GB"
CHECK = "model.layers.0.mlp.down_proj.weight"


# ----------------------------------------------------------------------------------------------
# the runs (each in a child process)
# ----------------------------------------------------------------------------------------------
def child_adaptermerge(base: Path, adapters: list[Path], out: Path) -> None:
    from adaptermerge import load_adapter, merge_to_model

    merge_to_model([load_adapter(p) for p in adapters], out, "task_arithmetic", [1.0] * len(adapters), base=str(base), shard_size=SHARD, merge_onto="original", check_base=False)


def child_peft(base: Path, adapters: list[Path], out: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapters[0], adapter_name="a0")
    for i, p in enumerate(adapters[1:], 1):
        model.load_adapter(p, adapter_name=f"a{i}")
    names = [f"a{i}" for i in range(len(adapters))]
    model.add_weighted_adapter(names, [1.0] * len(adapters), "merged", combination_type="cat")
    model.set_adapter("merged")
    model.merge_and_unload().save_pretrained(out, max_shard_size=SHARD)


def mergekit_command(base: Path, adapters: list[Path], out: Path, scratch: Path) -> list[str]:
    models = "".join(f"  - model: {base}+{p}\n    parameters: {{weight: 1.0}}\n" for p in adapters)
    config = scratch / "mergekit.yaml"
    config.write_text(f"merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n{models}dtype: float32\nout_dtype: float32\n")
    return [MERGEKIT, str(config), str(out), "--lora-merge-cache", str(scratch / "lora_cache"), "--out-shard-size", "250M",  # parameters: 1 GB in fp32
             "--no-copy-tokenizer", "--quiet"]


def timed(argv: list[str]) -> dict:
    """Run argv; its wall time and peak RSS, through GNU time (%M: the command's own max RSS).

    Not wait4's ru_maxrss of a direct child: Linux carries the pre-exec high-water mark across
    execve, so a child forked from this (large) process would report at least this one's RSS.
    """
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        start = time.perf_counter()
        proc = subprocess.run([GNU_TIME, "-f", "%M", "-o", rss.name, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - start
        lines = rss.read().strip().splitlines()
    row = {"time_s": wall, "peak_rss_mb": int(lines[-1]) / 1024 if lines and lines[-1].isdigit() else float("nan")}
    if proc.returncode != 0:
        row["error"] = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:160]
    return row


def read_tensor(folder: Path, key: str):
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    name = json.loads(index.read_text())["weight_map"][key] if index.is_file() else "model.safetensors"
    with safe_open(str(folder / name), "pt") as f:
        return f.get_tensor(key).float()


def run_case(label: str, base: Path, adapters: list[Path], root: Path) -> list[dict]:
    rows, reference = [], None
    for tool in ("adaptermerge", "peft", "mergekit"):
        out = root / f"out-{tool}"
        scratch = Path(tempfile.mkdtemp(dir=root))
        if tool == "mergekit":
            if not Path(MERGEKIT).exists():
                rows.append({"case": label, "tool": tool, "error": f"{MERGEKIT} not found (set MERGEKIT_YAML)"})
                continue
            argv = mergekit_command(base, adapters, out, scratch)
        else:
            argv = [sys.executable, __file__, "--child", tool, "--base", str(base), "--out", str(out), "--adapters", *map(str, adapters)]
        row = {"case": label, "tool": tool, **timed(argv)}
        if "error" not in row:
            got = read_tensor(out, CHECK)
            if reference is None:
                reference = got
            row["max_abs_diff_vs_adaptermerge"] = float((got - reference).abs().max())
            row["output_gb"] = sum(p.stat().st_size for p in out.glob("*.safetensors")) / 1e9
        rows.append(row)
        print(json.dumps(row), flush=True)
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)  # mergekit's LoRA cache: one full model per adapter
    return rows


# ----------------------------------------------------------------------------------------------
def case_a(root: Path) -> list[dict]:
    from adaptermerge.base import embedded_base_dir

    base = embedded_base_dir()
    cfg = json.loads((base / "config.json").read_text())
    adapters = write_adapters(root / "adapters", cfg, cfg["num_hidden_layers"], str(base))
    return run_case("SmolLM2-135M (0.5 GB fp32)", base, adapters, root)


def make_synthetic(base: Path, layers: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**{**SYNTHETIC, "num_hidden_layers": layers})).save_pretrained(base, max_shard_size=SHARD)


def case_b(root: Path, layers: int) -> list[dict]:
    cfg = {**SYNTHETIC, "num_hidden_layers": layers}
    base = root / "synthetic-base"
    # built in a child process, so this one stays small while the runs are measured
    subprocess.run([sys.executable, __file__, "--child", "synthetic", "--out", str(base), "--layers", str(layers)], check=True, capture_output=True)
    size = sum(p.stat().st_size for p in base.glob("*.safetensors")) / 1e9
    shards = len(list(base.glob("*.safetensors")))
    adapters = write_adapters(root / "adapters", cfg, layers, str(base))
    return run_case(f"synthetic Llama {layers} layers ({size:.1f} GB fp32, {shards} shards)", base, adapters, root)


def print_table(rows: list[dict]) -> None:
    print(f"\n{'case':48} {'tool':13} {'time s':>8} {'peak RSS MB':>12} {'max|diff|':>10}")
    for r in rows:
        if "error" in r:
            print(f"{r['case']:48} {r['tool']:13} error: {r['error']}")
            continue
        print(f"{r['case']:48} {r['tool']:13} {r['time_s']:8.1f} {r['peak_rss_mb']:12.0f} {r['max_abs_diff_vs_adaptermerge']:10.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=["a", "b", "both"], default="both")
    parser.add_argument("--layers", type=int, default=16, help="layers of the synthetic model (16: about 3 GB fp32)")
    parser.add_argument("--workdir", help="where to write (default: a temp folder, removed at the end)")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--child", choices=["adaptermerge", "peft", "synthetic"], help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--adapters", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "synthetic":
        make_synthetic(Path(args.out), args.layers)
        return
    if args.child:
        fn = child_adaptermerge if args.child == "adaptermerge" else child_peft
        fn(Path(args.base), [Path(p) for p in args.adapters], Path(args.out))
        return
    root = Path(tempfile.mkdtemp(prefix="bench_model_merge_", dir=args.workdir))
    rows = []
    try:
        if args.case in ("a", "both"):
            rows += case_a(root / "a")
        if args.case in ("b", "both"):
            rows += case_b(root / "b", args.layers)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_table(rows)
    print(f"\n{os.cpu_count()} CPUs, torch threads default; load average {os.getloadavg()[0]:.1f} at the end (the tools just run count in it; more than the CPUs means other jobs shared them)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
