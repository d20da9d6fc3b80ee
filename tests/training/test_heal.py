"""The heal step on a tiny random Llama (hidden 32, 2 layers) with the real tokenizer: two adapters
trained a few steps on built-in tasks, merged, then distilled from their own replies."""

import json

import pytest
import torch

from adaptermerge import api
from adaptermerge.adapter import load_adapter
from adaptermerge.chat.data import build_records
from adaptermerge.chat.records import write_jsonl
from adaptermerge.errors import AdapterMergeError
from adaptermerge.training import heal as heal_mod
from adaptermerge.training.trainer import TrainConfig, reply_loss, train


@pytest.fixture(scope="module")
def adapters(tiny_chat_base, tmp_path_factory):
    """Two LoRA adapters trained (full precision, 6 steps, lr 5e-2) on built-in domain and safety
    data, so each answers its prompts unlike the base; their training.json names that data."""
    root = tmp_path_factory.mktemp("heal_adapters")
    out = []
    for task in ("domain", "safety"):
        out.append(train(TrainConfig(task=task, base=str(tiny_chat_base), output=root / task, max_steps=6, batch_size=4,
                                     rank=4, alpha=8, lr=5e-2, max_length=96, qlora=False, anchor_fraction=0.0, threads=1)))
    return out


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTERMERGE_CACHE", str(tmp_path / "cache"))


def _config(steps, **kw):
    return heal_mod.HealConfig(steps=steps, prompts_per_task=6, anchor_prompts=2, batch_size=4, max_length=96, lr=2e-2,
                               qlora=False, threads=1, **kw)


def _distill_loss(base, adapter_dir, records) -> float:
    """Mean reply-token loss of base + adapter on the distillation records (the heal's objective)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from adaptermerge import base as base_mod
    from adaptermerge.chat.tokens import collate, tokenize_record

    tokenizer = base_mod.load_tokenizer(str(base))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter_dir).eval()
    rows = [r for r in (tokenize_record(tokenizer, rec, 96) for rec in records) if r is not None]
    with torch.no_grad():
        return float(reply_loss(model, collate(rows, tokenizer.pad_token_id or tokenizer.eos_token_id)))


def test_zero_steps_returns_the_merge_unchanged(tiny_chat_base, adapters):
    items = [load_adapter(a) for a in adapters]
    merged = api.merge(items, "task_arithmetic", base=str(tiny_chat_base))
    assert heal_mod.heal(merged, items, _config(0), base=str(tiny_chat_base)) is merged
    again = api.merge(adapters, "task_arithmetic", base=str(tiny_chat_base), heal=0)
    for m in merged.modules:
        assert torch.equal(again.factors(m).delta(), merged.factors(m).delta())
    assert "heal" not in again.metadata


def test_a_few_steps_lower_the_distillation_loss_and_load_in_peft(tiny_chat_base, adapters, tmp_path):
    items = [load_adapter(a) for a in adapters]
    merged = api.merge(items, "task_arithmetic", base=str(tiny_chat_base), out=tmp_path / "merged")
    config = _config(8)
    prompts = heal_mod.resolve_prompts(items, config)
    assert [p.source for p in prompts] == ["built-in domain train split (seed 0)", "built-in safety train split (seed 0)"]
    from adaptermerge.chat.digest import model_fingerprint
    from adaptermerge.base import resolve_base

    records, _ = heal_mod.distillation_records(str(tiny_chat_base), items, prompts, config,
                                               model_fingerprint(resolve_base(str(tiny_chat_base)))["sha256"])
    healed = api.merge(adapters, "task_arithmetic", base=str(tiny_chat_base), out=tmp_path / "healed", heal=8,
                       heal_options=dict(prompts_per_task=6, anchor_prompts=2, batch_size=4, max_length=96, lr=2e-2,
                                         qlora=False, threads=1))
    info = healed.metadata["heal"]
    assert info["steps"] == 8 and info["uses_training_compute"] and len(info["loss_per_step"]) == 8
    assert set(info["tasks"]) == {a.name for a in items} and info["anchors"]["prompts"] == 2
    assert info["tasks"][items[0].name]["reused_from_cache"]  # generated once, above, for the same prompts
    assert {m: healed.factors(m).rank for m in healed.modules} == {m: merged.factors(m).rank for m in merged.modules}
    before = _distill_loss(tiny_chat_base, tmp_path / "merged", records)
    after = _distill_loss(tiny_chat_base, tmp_path / "healed", records)
    assert after < before - 0.05, (before, after)
    meta = json.loads((tmp_path / "healed" / "adaptermerge.json").read_text())
    assert meta["heal"]["steps"] == 8 and meta["method"] == "task_arithmetic"
    card = (tmp_path / "healed" / "README.md").read_text()
    assert "training compute" in card and "8 steps" in card


def test_explicit_prompts_replace_the_lineage(tiny_chat_base, adapters, tmp_path):
    items = [load_adapter(a) for a in adapters]
    path = write_jsonl(build_records("structured", "train")[:5], tmp_path / "p.jsonl")
    prompts = heal_mod.resolve_prompts(items, _config(1, prompts={"safety": path}))
    assert prompts[1].source == str(path.resolve()) and len(prompts[1].records) == 5
    assert prompts[1].max_new_tokens == 40  # the safety preset's reply length


def test_refusals(tiny_chat_base, adapters, tmp_path):
    items = [load_adapter(a) for a in adapters]
    bare = tmp_path / "bare"
    items[0].save(bare)  # no training.json beside it
    with pytest.raises(AdapterMergeError, match=r"adapter .*bare.*no training.json.*--heal-prompts"):
        api.merge([bare, adapters[1]], "linear", base=str(tiny_chat_base), heal=2)
    with pytest.raises(AdapterMergeError, match=r"--heal-prompts nope: names no input adapter"):
        api.merge(adapters, "linear", base=str(tiny_chat_base), heal=2, heal_prompts={"nope": tmp_path / "x.jsonl"})
    with pytest.raises(AdapterMergeError, match=r"--heal-prompts domain=.*no such file"):
        api.merge(adapters, "linear", base=str(tiny_chat_base), heal=2, heal_prompts={"domain": tmp_path / "x.jsonl"})
    for bad in (-1, 1.5, "3", True):
        with pytest.raises(AdapterMergeError, match=r"--heal"):
            api.merge(adapters, "linear", base=str(tiny_chat_base), heal=bad)
    with pytest.raises(AdapterMergeError, match=r"heal_options: unknown option"):
        api.merge(adapters, "linear", base=str(tiny_chat_base), heal=1, heal_options={"nope": 1})
    # an explicit file makes the bare adapter healable: the refusal is about prompts, not the adapter
    assert heal_mod.resolve_prompts([load_adapter(bare)], _config(1, prompts={"bare": write_jsonl(build_records("domain")[:3], tmp_path / "d.jsonl")}))


def test_the_cli_heals_and_says_so(tiny_chat_base, adapters, tmp_path, capsys):
    from adaptermerge.cli.main import main

    out = tmp_path / "healed"
    argv = ["linear", *adapters, "--base", tiny_chat_base, "-o", out, "--heal", "2", "--heal-prompts", f"domain={tmp_path / 'none.jsonl'}"]
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    assert info.value.code == 2 and "--heal-prompts domain=" in capsys.readouterr().err  # as api.merge refuses it
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv[:-2]])
    assert info.value.code == 0
    assert "heal (training compute)" in capsys.readouterr().out
    assert json.loads((out / "adaptermerge.json").read_text())["heal"]["steps"] == 2
