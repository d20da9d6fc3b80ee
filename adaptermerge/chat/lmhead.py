"""Keep the vocabulary projection on PyTorch's fast path when only the last position's logits are wanted.

With `logits_to_keep=1` (HF generate's prefill, evalsuite's greedy and fastlm context passes)
transformers computes `lm_head(hidden[:, -1:, :])`. That [B, 1, H] view of a [B, L, H] tensor has a
batch stride of L*H where a contiguous one has H, so torch.matmul cannot fold it into one matrix
product: it broadcasts the [V, H] weight to [B, H, V], copies it out and runs a batched product.
For SmolLM2 (V = 49152, H = 576) at B = 32 that is a 1.8 GB copy. Measured on one core of an
AVX512-BF16 EPYC: 3.78 s per call in bfloat16 against 0.017 s on a contiguous input,
0.37 s against 0.039 s in float32. The pre-hook below copies the [B, 1, H] input instead.
"""

from __future__ import annotations

_MARK = "_adaptermerge_contiguous_input"


def contiguous_head_input(model):
    """Make the output embedding's input contiguous before it runs (idempotent); returns `model`."""
    head = model.get_output_embeddings()
    if head is None or getattr(head, _MARK, False):
        return model
    head.register_forward_pre_hook(_contiguous)
    setattr(head, _MARK, True)
    return model


def _contiguous(module, args):
    if args and hasattr(args[0], "is_contiguous") and not args[0].is_contiguous():
        return (args[0].contiguous(), *args[1:])
    return None  # the input as it is
