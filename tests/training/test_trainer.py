"""Two-step training runs on a tiny random Llama (hidden 32, 2 layers) with the real tokenizer."""

import json

import pytest
import torch
from safetensors.torch import load_file

from adaptermerge.errors import AdapterMergeError
from adaptermerge.chat.data import build_records
from adaptermerge.chat.digest import sha256_text
from adaptermerge.chat.records import jsonl_text, write_jsonl
from adaptermerge.training.trainer import TrainConfig, batch_order, lr_at, train

TRAINING_KEYS = {"task", "base", "quantization", "adapter_type", "on_top_of", "data", "hyperparameters", "seed", "loss",
                 "wall_time_s", "cpu_time_s", "versions"}
HYPER_KEYS = {"max_steps", "epochs", "steps", "lr", "rank", "alpha", "targets", "batch_size", "max_length", "warmup_steps"}


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "custom.jsonl"
    return write_jsonl(build_records("safety", "train")[:12], path)


def _config(base, data, out, **kw):
    return TrainConfig(task="custom", data=data, base=str(base), output=out, max_steps=2, batch_size=2, max_length=64,
                       rank=4, alpha=8, lr=1e-2, **kw)


def _load(base, adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)


@pytest.mark.parametrize("qlora", [True, False], ids=["qlora", "lora"])
def test_two_steps_write_a_loadable_adapter(tiny_chat_base, data_file, tmp_path, qlora):
    out = train(_config(tiny_chat_base, data_file, tmp_path / "ad", qlora=qlora))
    summary = json.loads((out / "training.json").read_text())
    assert TRAINING_KEYS <= set(summary) and HYPER_KEYS <= set(summary["hyperparameters"])
    assert summary["quantization"] == ("nf4" if qlora else None)
    assert summary["base"]["id"] == str(tiny_chat_base) and len(summary["base"]["sha256"]) == 64
    assert summary["data"]["rows"] == 12 and summary["data"]["sha256"] == __import__("hashlib").sha256(data_file.read_bytes()).hexdigest()
    assert len(summary["loss"]["per_step"]) == 2 and summary["loss"]["per_epoch"]
    assert all(summary["versions"][k] for k in ("torch", "transformers", "peft", "bitsandbytes", "adaptermerge"))
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_chat_base)
    assert ".tmp-" not in (out / "README.md").read_text()
    assert sorted(config["target_modules"]) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    weights = load_file(out / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items()), "B never moved from zero"
    model = _load(tiny_chat_base, out)
    ids = torch.tensor([[1, 2, 3]])
    assert torch.isfinite(model(input_ids=ids).logits).all()
    assert not list(tmp_path.glob(".tmp-*")), "temporary folder left behind"


def test_a_relative_base_folder_is_recorded_absolute(tiny_chat_base, data_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_chat_base.parent)  # adapters move: a relative folder would resolve only from here
    assert _config(tiny_chat_base.name, data_file, tmp_path / "x").resolved().base == str(tiny_chat_base.resolve())


def test_the_run_uses_its_configs_threads_and_records_them(tiny_chat_base, data_file, tmp_path, monkeypatch):
    """bfloat16 training rounds differently with another thread count, so the count is part of
    the config: used for the whole run, recorded, and the caller's count restored after."""
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert _config(tiny_chat_base, data_file, tmp_path / "x").resolved().threads == 3  # default: the machine's
    before, seen = torch.get_num_threads(), []
    out = train(_config(tiny_chat_base, data_file, tmp_path / "ad", threads=2), lambda *a: seen.append(torch.get_num_threads()))
    assert seen == [2, 2] and torch.get_num_threads() == before
    assert json.loads((out / "training.json").read_text())["threads"] == 2


def test_dora_writes_magnitudes_and_refuses_overwrite(tiny_chat_base, data_file, tmp_path):
    out = train(_config(tiny_chat_base, data_file, tmp_path / "dora", dora=True, qlora=False, targets=("q_proj", "v_proj")))
    keys = load_file(out / "adapter_model.safetensors").keys()
    assert any("lora_magnitude_vector" in k for k in keys)
    assert json.loads((out / "training.json").read_text())["adapter_type"] == "dora"
    _load(tiny_chat_base, out)
    with pytest.raises(AdapterMergeError, match="exists"):
        train(_config(tiny_chat_base, data_file, out))
    train(_config(tiny_chat_base, data_file, out, force=True, targets=("q_proj",)))
    assert json.loads((out / "adapter_config.json").read_text())["target_modules"] == ["q_proj"]


def test_on_top_of_and_builtin_data(tiny_chat_base, data_file, tmp_path):
    first = train(_config(tiny_chat_base, data_file, tmp_path / "first", qlora=False))
    cfg = TrainConfig(task="domain", base=str(tiny_chat_base), output=tmp_path / "second", max_steps=1, batch_size=2,
                      rank=4, alpha=8, on_top_of=first)
    second = train(cfg)
    summary = json.loads((second / "training.json").read_text())
    assert summary["on_top_of"] == str(first.resolve()) and summary["quantization"] == "nf4"
    assert summary["data"]["built_in"] and summary["data"]["sha256"] == sha256_text(jsonl_text(build_records("domain")))
    assert json.loads((second / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_chat_base)
    assert not (second / "merged-base").exists()
    assert "merged-base" not in (second / "README.md").read_text()
    _load(tiny_chat_base, second)


def test_bad_config(tiny_chat_base, data_file, tmp_path):
    with pytest.raises(AdapterMergeError, match="needs --data"):
        train(TrainConfig(task="custom", output=tmp_path / "x"))
    with pytest.raises(AdapterMergeError, match="unknown task"):
        train(TrainConfig(task="poetry", output=tmp_path / "x"))
    with pytest.raises(AdapterMergeError, match="no such module"):
        train(_config(tiny_chat_base, data_file, tmp_path / "x", targets=("qkv",)))
    with pytest.raises(AdapterMergeError, match="--lr must be positive"):
        train(_config(tiny_chat_base, data_file, tmp_path / "x").__class__(**{**_config(tiny_chat_base, data_file, tmp_path / "x").__dict__, "lr": -1}))
    with pytest.raises(AdapterMergeError, match="--anchor-tasks poetry: expected built-in tasks"):
        train(_config(tiny_chat_base, data_file, tmp_path / "x", anchor_tasks=("poetry",)))
    with pytest.raises(AdapterMergeError, match="--threads must be a positive integer"):
        train(_config(tiny_chat_base, data_file, tmp_path / "x", threads=0))
    with pytest.raises(AdapterMergeError, match="names the task being trained"):
        TrainConfig(task="domain", output=tmp_path / "x", anchor_tasks=("domain",)).resolved()
    assert not (tmp_path / "x").exists()
    # Cross-task anchors are an option, off by default for the presets and for user data.
    assert TrainConfig(task="safety", output=tmp_path / "x").resolved().anchor_tasks == ()  # off in the presets
    assert TrainConfig(task="safety", output=tmp_path / "x", anchor_tasks=("domain",)).resolved().anchor_tasks == ("domain",)
    assert TrainConfig(task="custom", data=data_file, output=tmp_path / "x").resolved().anchor_tasks == ()


def test_batch_order_and_schedule():
    order = batch_order(10, 4, 6, seed=3)
    assert order == batch_order(10, 4, 6, seed=3) and order != batch_order(10, 4, 6, seed=4)
    first_epoch = [i for epoch, idx in order if epoch == 0 for i in idx]
    assert sorted(first_epoch) == list(range(10)) and [e for e, _ in order] == [0, 0, 0, 1, 1, 1]
    # Long rows (anchors past max_length) are batched among themselves; every row once per epoch.
    long_rows = frozenset({1, 4, 7})
    grouped = batch_order(10, 4, 8, seed=3, long_rows=long_rows)
    for epoch in (0, 1):
        batches = [idx for e, idx in grouped if e == epoch]
        assert sorted(i for idx in batches for i in idx) == list(range(10))
        assert all(set(idx) <= long_rows or not set(idx) & long_rows for idx in batches)
    assert grouped != batch_order(10, 4, 8, seed=3)
    lrs = [lr_at(s, 10, 1.0, 2) for s in range(10)]
    assert lrs[0] == 0.5 and lrs[1] == 1.0 and lrs[-1] == pytest.approx(0.125) and lrs == sorted(lrs[:2]) + sorted(lrs[2:], reverse=True)


def _babbler(tiny_chat_base, tmp_path):
    """The tiny base, babbling: a random model's greedy reply is special or blank tokens, which
    decode to ""; zeroing their (tied) embeddings makes it say visible tokens, so anchors have replies."""
    from transformers import AutoModelForCausalLM

    from adaptermerge import base

    tokenizer = base.load_tokenizer(str(tiny_chat_base))
    blank = [i for i in range(len(tokenizer)) if not tokenizer.decode([i]).strip()]
    babbler = AutoModelForCausalLM.from_pretrained(tiny_chat_base)
    with torch.no_grad():
        babbler.get_input_embeddings().weight[blank] = 0
    babbler.save_pretrained(tmp_path / "babbler")
    tokenizer.save_pretrained(tmp_path / "babbler")
    return tmp_path / "babbler"


def test_anchor_rows_hold_the_base_replies(tiny_chat_base, data_file, tmp_path):
    from transformers import AutoModelForCausalLM

    from adaptermerge import base
    from adaptermerge.chat.data import anchor
    from adaptermerge.chat.generation import generate_responses
    from adaptermerge.training.trainer import ANCHOR_REPLY_TOKENS, anchor_count

    assert anchor_count(240, 0.25) == 80 and anchor_count(12, 0.5) == 12 and anchor_count(12, 0.0) == 0
    tiny_chat_base = _babbler(tiny_chat_base, tmp_path)
    tokenizer = base.load_tokenizer(str(tiny_chat_base))
    out = train(_config(tiny_chat_base, data_file, tmp_path / "anchored", qlora=True, anchor_fraction=0.5))
    info = json.loads((out / "training.json").read_text())["data"]["anchors"]
    assert info["rows"] == 12 and info["unique_prompts"] == 12
    # The recorded anchors are exactly the float32 base's greedy replies to the first 12 prompts.
    records = anchor.records(12, 0)
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_base)
    replies = generate_responses(model, tokenizer, records, max_new_tokens=ANCHOR_REPLY_TOKENS)
    answered = [{**r, "messages": [*r["messages"], {"role": "assistant", "content": a}]} for r, a in zip(records, replies) if a]
    assert info["sha256"] == sha256_text(jsonl_text(answered)) and len(answered) == 12
    assert json.loads((out / "training.json").read_text())["hyperparameters"]["anchor_fraction"] == 0.5
    with pytest.raises(AdapterMergeError, match="--anchor-fraction must be in"):
        train(_config(tiny_chat_base, data_file, tmp_path / "bad", anchor_fraction=1.0))


def test_anchor_replies_are_generated_once_per_base(tiny_chat_base, data_file, tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTERMERGE_CACHE", str(tmp_path / "cache"))
    first = train(_config(tiny_chat_base, data_file, tmp_path / "one", qlora=False, anchor_fraction=0.25))
    second = train(_config(tiny_chat_base, data_file, tmp_path / "two", qlora=False, anchor_fraction=0.25))
    a, b = (json.loads((p / "training.json").read_text())["data"]["anchors"] for p in (first, second))
    assert not a["reused_from_cache"] and b["reused_from_cache"] and a["sha256"] == b["sha256"]
    assert len(list((tmp_path / "cache" / "anchors").glob("*.json"))) == 1


def test_anchor_unique_caps_the_distinct_prompts(tiny_chat_base, data_file, tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTERMERGE_CACHE", str(tmp_path / "cache"))
    tiny_chat_base = _babbler(tiny_chat_base, tmp_path)
    out = train(_config(tiny_chat_base, data_file, tmp_path / "capped", qlora=False, anchor_fraction=0.5, anchor_unique=5))
    info = json.loads((out / "training.json").read_text())["data"]["anchors"]
    # The 12 anchor rows (half of the rows) repeat 5 prompts, so the base answered 5 prompts, not 12.
    assert info["rows"] == 12 and 0 < info["unique_prompts"] <= 5
    with pytest.raises(AdapterMergeError, match="anchor_unique must be positive"):
        train(_config(tiny_chat_base, data_file, tmp_path / "bad", anchor_unique=0))
