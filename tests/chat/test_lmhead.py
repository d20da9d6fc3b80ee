"""The head's pre-hook keeps logits_to_keep=1 off torch.matmul's broadcast-and-copy path, and
changes no logits."""

from __future__ import annotations

import torch
from transformers import LlamaForCausalLM

from adaptermerge.chat.lmhead import contiguous_head_input
from support import tiny_config


def _head_inputs(model) -> list[bool]:
    """Contiguity of every input the output embedding receives (hook registered after ours)."""
    seen: list[bool] = []
    model.get_output_embeddings().register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    return seen


def test_head_input_is_made_contiguous_and_logits_do_not_change():
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config()).eval()
    ids = torch.randint(0, model.config.vocab_size, (3, 7))
    with torch.no_grad():
        full = model(ids).logits[:, -1]
        plain = _head_inputs(model)
        model(ids, logits_to_keep=1)
        assert plain == [False]  # transformers hands the head a strided [B, 1, H] slice

        torch.manual_seed(0)
        model = contiguous_head_input(LlamaForCausalLM(tiny_config()).eval())
        contiguous_head_input(model)  # a second call registers nothing more
        fixed = _head_inputs(model)
        kept = model(ids, logits_to_keep=1).logits[:, -1]
    assert fixed == [True]
    assert len(model.get_output_embeddings()._forward_pre_hooks) == 2  # ours once, the recorder
    torch.testing.assert_close(kept, full)
