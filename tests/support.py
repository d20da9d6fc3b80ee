"""Helpers shared by the tests (importable as `support`: tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from adaptermerge.adapter import LoraFactors

ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
REPO = Path(__file__).resolve().parents[1]
SHARED_MMLU = REPO.parent / "shared" / "data" / "mmlu"


def tiny_config(**kw):
    from transformers import LlamaConfig

    base = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=128, max_position_embeddings=64, tie_word_embeddings=False)
    base.update(kw)
    return LlamaConfig(**base)


def make_adapter(base_dir: Path, out: Path, *, seed: int, r: int = 4, alpha: float = 8, targets=None, dora=False, rslora=False, rank_pattern=None, alpha_pattern=None, base_name=None) -> Path:
    """A real PEFT adapter with random (nonzero) A and B, saved with save_pretrained."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(base_dir)
    torch.manual_seed(seed)
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets or ALL_TARGETS, init_lora_weights=False, use_dora=dora, use_rslora=rslora, rank_pattern=rank_pattern or {}, alpha_pattern=alpha_pattern or {})
    peft_model = get_peft_model(model, cfg)
    if dora:  # move magnitudes away from ||W0 + BA|| so DoRA is not a no-op
        for n, p in peft_model.named_parameters():
            if "lora_magnitude_vector" in n:
                p.data.mul_(1 + 0.1 * torch.randn_like(p))
    peft_model.save_pretrained(out)
    if True:
        cfg_path = out / "adapter_config.json"
        data = json.loads(cfg_path.read_text())
        data["base_model_name_or_path"] = base_name or str(base_dir)
        cfg_path.write_text(json.dumps(data))
    return out


def peft_deltas(base_dir: Path, adapter_dir: Path) -> dict[str, torch.Tensor]:
    """Independent reference: the deltas PEFT itself applies (merged weight minus base weight)."""
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    base = LlamaForCausalLM.from_pretrained(base_dir)
    ref = {n: p.detach().clone() for n, p in base.state_dict().items()}
    merged = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base_dir), adapter_dir).merge_and_unload()
    out = {}
    for n, p in merged.state_dict().items():
        if n.endswith(".weight") and not torch.equal(p, ref[n]):
            out[n[: -len(".weight")]] = p - ref[n]
    return out


def save_tiny_chat_model(path: Path, *, hidden: int = 32, intermediate: int = 64, max_positions: int = 1024) -> Path:
    """A tiny random Llama (2 layers) saved with the embedded base's tokenizer, so chat templates,
    training and lm-eval's tokenization run for real in seconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from adaptermerge import base

    tokenizer = base.load_tokenizer()
    config = LlamaConfig(
        hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=len(tokenizer), max_position_embeddings=max_positions, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def random_lora(out, inp, r, seed, scale=2.0):
    """A random LoraFactors [out, in] of rank r (B rows scaled unevenly), alpha = r * scale."""
    g = torch.Generator().manual_seed(seed)
    return LoraFactors(torch.randn(r, inp, generator=g), torch.randn(out, r, generator=g) * torch.rand(out, 1, generator=g), r * scale, scale)


def sorted_ties(values, weights, density):
    """TIES written apart: keep each row's round(density * N) largest |entries| (a full sort), elect
    the sign of the sum, average the agreeing entries with the sum of agreeing |w| as divisor."""
    n = values.shape[1]
    keep = max(1, min(n, round(density * n)))
    trimmed = torch.zeros_like(values)
    for t, row in enumerate(values):
        idx = torch.argsort(row.abs(), descending=True)[:keep]
        trimmed[t, idx] = row[idx]
    sign = trimmed.sum(0).sign()
    agree = trimmed * sign > 0
    den = (agree * torch.tensor(weights, dtype=values.dtype).abs()[:, None]).sum(0)
    return torch.where(den > 0, (trimmed * agree).sum(0) / den.clamp_min(1e-300), 0.0)


def dense_polar(X):
    """The polar factor of X (its closest matrix with orthonormal columns), from a dense SVD."""
    P, _, Qh = torch.linalg.svd(X, full_matrices=False)
    return P @ Qh


def fake_scores(task: str, values: dict[str, float], n: int = 20):
    """A TaskScores whose metrics take `values` (rounded to whole items out of `n`), with per-item
    results that agree with them, for tests of selection and reports without a model."""
    from adaptermerge.evalsuite.harness import TaskScores

    metrics, items = {}, {}
    for metric, value in values.items():
        k = round(value * n)
        items[metric] = {str(i): float(i < k) for i in range(n)}
        metrics[metric] = {"value": k / n, "stderr": 0.0, "n": n}
    return TaskScores(task, metrics, items)
