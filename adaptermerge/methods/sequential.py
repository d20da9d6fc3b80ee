"""Sequential: the adapters applied one after another, in the order given, onto the base weight.

For plain LoRA this is `W0 + sum_i w_i * delta_i` (exact, low rank; weights are multipliers,
default 1, not normalized). A DoRA adapter re-normalizes against the weight it is applied to:
`W_k = m_k * (W_{k-1} + w_k d_k) / ||W_{k-1} + w_k d_k||_row`, so order matters.

The chain stays exactly low rank. Write `W_k = diag(p_k) (W0 + D_k)` with p_0 = 1, D_0 = 0; a
step adds `diag(1/p) w_k d_k` to D (a row scaling of B_k), and a DoRA step sets
`p = m_k / ||W0 + D||_row`. The result is the DoRA layer `m * (W0 + D) / ||W0 + D||_row` with
`m = ||W_n||_row` (m_n itself when the last step is DoRA), rank = sum of the input ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..lazy import torch
from .base import ModuleResult, present
from .math import row_norm


class Sequential:
    name = "sequential"
    summary = "apply the adapters in order onto the base (DoRA re-normalizes at each step)"
    accepts_dora = True
    output_exact = True

    @dataclass(frozen=True)
    class Params:
        pass

    def needs_base(self, adapters) -> bool:
        return any(a.is_dora for a in adapters)

    def merge_module(self, inputs, weights, base_weight, params, ctx) -> ModuleResult:
        pairs = present(inputs, weights)
        if not any(f.is_dora for f, _ in pairs):
            return ModuleResult(terms=[(f.scaled_B() * w, f.A.float()) for f, w in pairs])
        w0 = base_weight.float()
        p = torch.ones(w0.shape[0], device=w0.device)  # row scale of the current weight
        D = torch.zeros_like(w0)
        terms = []
        for f, c in pairs:
            B = f.scaled_B() * (c / p)[:, None]
            terms.append((B, f.A.float()))
            D.addmm_(B, f.A.float())
            if f.is_dora:
                p = f.magnitude.float() / row_norm(w0 + D)
        return ModuleResult(terms=terms, magnitude=p * row_norm(w0 + D))
