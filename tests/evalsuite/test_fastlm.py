"""FastHFLM gives lm-eval HFLM's log-likelihoods (and greedy flags) while running each context once."""

from __future__ import annotations

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from adaptermerge.evalsuite.fastlm import FastHFLM


def _requests() -> list[Instance]:
    contexts = [
        "The following are questions (with answers) about anatomy.\n\nQuestion: Which bone is the longest?\nAnswer:",
        "Question: What is 2 + 2?\nAnswer:",
        "A much longer context that keeps going " * 12 + "\nAnswer:",  # past max_length below: HFLM's truncating path
        "",  # empty context: HFLM conditions on its prefix token
    ]
    choices = [" The femur", " The tibia, which is in the lower leg", " 4", " four, of course"]
    reqs = [Instance("loglikelihood", {}, (ctx, choice), i) for ctx in contexts for i, choice in enumerate(choices)]
    return reqs


def _pair(model_dir, **kw):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    fast = FastHFLM(pretrained=model, tokenizer=tok, device="cpu", batch_size=1, **kw)
    stock = HFLM(pretrained=model, tokenizer=tok, device="cpu", batch_size=1, **kw)
    return model, fast, stock


def test_matches_stock_hflm_on_tiny_llama(tiny_model_dir):
    model, fast, stock = _pair(tiny_model_dir, max_length=64, context_batch=1)
    reqs = _requests()
    tokens = []  # token positions the transformer body runs, however it is called
    hook = model.model.register_forward_pre_hook(lambda m, a, kw: tokens.append(kw["input_ids"].numel()), with_kwargs=True)
    expected = stock.loglikelihood(reqs, disable_tqdm=True)
    stock_tokens, tokens[:] = sum(tokens), []
    got = fast.loglikelihood(reqs, disable_tqdm=True)
    hook.remove()
    assert len(got) == len(expected) == 16
    for (lp, greedy), (lp_ref, greedy_ref) in zip(got, expected):
        assert lp == pytest.approx(lp_ref, abs=1e-4)
        assert greedy == greedy_ref
    # The vocabulary projection at real positions only was checked against the full model and kept.
    assert fast._split_head is True
    # Each context ran once instead of once per choice; the 4 truncated requests run as in HFLM, each
    # as max_length (64) tokens.
    truncated = 4 * 64
    assert sum(tokens) - truncated < 0.6 * (stock_tokens - truncated)


@pytest.mark.slow
def test_matches_stock_hflm_on_embedded_base(mmlu_dir):
    """The real base on three real MMLU questions: cloze choices of several tokens."""
    from adaptermerge import base
    from adaptermerge.evalsuite import mmlu

    model = base.load_model().eval()
    tok = base.load_tokenizer()
    docs = mmlu.mmlu_docs(mmlu_dir, limit=1, fmt="cloze")[:3]
    reqs = [Instance("loglikelihood", {}, (d["prefix"] + d["text"], " " + o), i) for d in docs for i, o in enumerate(d["options"])]
    fast = FastHFLM(pretrained=model, tokenizer=tok, device="cpu", batch_size=1).loglikelihood(reqs, disable_tqdm=True)
    stock = HFLM(pretrained=model, tokenizer=tok, device="cpu", batch_size=1).loglikelihood(reqs, disable_tqdm=True)
    assert max(abs(a[0] - b[0]) for a, b in zip(fast, stock)) < 1e-3
    assert [a[1] for a in fast] == [b[1] for b in stock]
    assert torch.tensor([a[0] for a in fast]).std() > 0.1  # real, distinct scores
