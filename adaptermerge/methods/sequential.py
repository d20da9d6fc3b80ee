"""Sequential: the adapters applied one after another, in the order given, onto the base weight.

For plain LoRA this is `W0 + sum_i w_i * delta_i` (exact, low rank; weights are multipliers,
default 1, not normalized). A DoRA adapter re-normalizes against the weight it is applied to:
`W_k = m_k * (W_{k-1} + w_k * delta_k) / ||W_{k-1} + w_k * delta_k||_row`, so order matters and the
result is dense. It is returned as a DoRA layer on W0: delta = W_n - W0, magnitude = ||W_n||_row,
which reproduces W_n exactly (`m * (W0 + delta) / ||W0 + delta|| = W_n`).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import _ops
from .base import ModuleResult, present


class Sequential:
    name = "sequential"
    summary = "apply the adapters in order onto the base (DoRA re-normalizes at each step)"
    accepts_dora = True
    output_exact = True  # exact for LoRA chains; DoRA chains are truncated to --rank

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
        w = w0
        for f, c in pairs:
            if f.is_dora:
                w = _ops.dora_weight(w, f.delta() * c, f.magnitude.float())
            else:
                w = w + f.delta() * c
        return ModuleResult(dense=w - w0, magnitude=_ops.row_norm(w))
