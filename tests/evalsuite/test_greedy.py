"""Greedy generation in shared, shrinking batches gives HFLM's replies with fewer model tokens."""

from __future__ import annotations

import warnings

import pytest
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from adaptermerge.evalsuite import greedy
from adaptermerge.evalsuite.fastlm import FastHFLM

SHORT = "Name a colour."
WEIGHT_SCALE = 8.0
LONG = "Please read this carefully and then answer the question that follows it. " * 4 + "What is the capital of France?"


def _requests(tok, settings: list[dict]) -> list[Instance]:
    """Chat prompts of two very different lengths, under each generation setting."""
    reqs = []
    for gen in settings:
        for i, text in enumerate([SHORT, LONG, SHORT + " Be brief.", LONG + " Be brief."]):
            ctx = tok.apply_chat_template([{"role": "user", "content": f"{text} ({i})"}], tokenize=False, add_generation_prompt=True)
            reqs.append(Instance("generate_until", {}, (ctx, dict(gen)), len(reqs)))
    return reqs


@pytest.fixture()
def pair(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    # Larger weights make the random model's replies depend on the whole prompt (at the default
    # init scale they barely do), so a wrong cache or mask changes them.
    for name, param in model.named_parameters():
        if name.endswith("proj.weight"):
            param.data.mul_(WEIGHT_SCALE)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    fast = FastHFLM(pretrained=model, tokenizer=tok, device="cpu", batch_size=5, progress_bars=False)
    stock = HFLM(pretrained=model, tokenizer=tok, device="cpu", batch_size=5)
    return model, tok, fast, stock


def _count_tokens(model, fn):
    """fn()'s result and the token positions the transformer body ran."""
    seen = []
    hook = model.model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].numel()), with_kwargs=True)
    try:
        return fn(), sum(seen)
    finally:
        hook.remove()


def test_same_replies_as_hflm_with_fewer_tokens(pair, monkeypatch):
    model, tok, fast, stock = pair
    joins = []
    join = greedy._join
    monkeypatch.setattr(greedy, "_join", lambda parts: joins.append(len(parts)) or join(parts))
    # A first pass picks a stop string and an eos token that the random model really produces,
    # so rows leave their batches for all three reasons (stop string, eos, length).
    probe = stock.generate_until(_requests(tok, [{"until": [], "do_sample": False, "max_gen_toks": 24}]), disable_tqdm=True)
    stop = probe[1][8:10]
    eos_token = tok(probe[2], add_special_tokens=False)["input_ids"][5]
    model.generation_config.eos_token_id = [tok.eos_token_id, eos_token]
    settings = [
        {"until": [], "do_sample": False, "max_gen_toks": 6},
        {"until": [stop], "do_sample": False, "max_gen_toks": 24},
        {"until": ["\n\n", stop], "max_gen_toks": 16},  # greedy by default (temperature 0)
    ]
    reqs = _requests(tok, settings)
    expected, stock_tokens = _count_tokens(model, lambda: stock.generate_until(reqs, disable_tqdm=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got, fast_tokens = _count_tokens(model, lambda: fast.generate_until(reqs, disable_tqdm=True))
    # The cache goes by the installed transformers' own name (`cache` from 5.2x): no deprecation per call.
    assert not [w for w in caught if "past_key_values" in str(w.message)]
    assert got == expected
    assert any(stop not in s and len(s) < len(p) for s, p in zip(expected[4:8], probe))  # a stop string did cut
    assert fast_tokens < stock_tokens
    assert joins  # a batch held prompts of both lengths: prompt passes per bucket, joined for decoding


def test_sampling_takes_hflms_path(pair, monkeypatch):
    _, tok, fast, _ = pair
    monkeypatch.setattr(greedy, "generate", lambda *a, **k: pytest.fail("sampling must not run through greedy.py"))
    reqs = _requests(tok, [{"until": [], "do_sample": True, "temperature": 0.7, "max_gen_toks": 4}])
    assert len(fast.generate_until(reqs, disable_tqdm=True)) == len(reqs)


def test_batches_and_buckets():
    rows = [greedy.Row([0] * n, 4, []) for n in (10, 40, 30, 12, 41)]
    assert greedy.batches(rows, 2) == [[4, 1], [2, 3], [0]]  # longest first
    # 41, 40, 31 are within PAD_FILL of 41; 12 and 10 start a bucket of their own
    assert greedy.buckets([41, 40, 31, 12, 10]) == [[0, 1, 2], [3, 4]]


def test_is_done():
    decode = lambda ids: "".join(chr(ord("a") + i) for i in ids)  # noqa: E731 - a readable stand-in tokenizer
    row = greedy.Row([1], max_new=4, stops=["", "cd"])
    assert not greedy.is_done([0, 1, 2], row, {9}, decode)  # "abc": no stop yet, "" is ignored
    assert greedy.is_done([0, 2, 3], row, {9}, decode)  # "acd" holds "cd"
    assert greedy.is_done([0, 9], row, {9}, decode)  # eos
    assert greedy.is_done([0, 1, 0, 1], row, {9}, decode)  # the limit
