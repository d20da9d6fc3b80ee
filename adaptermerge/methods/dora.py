"""DoRA magnitude-direction merge (needs the base weight W0).

Each adapter i defines a weight `W_i = m_i * (W0 + d_i) / n_i` with `n_i = ||W0 + d_i||_row`
(row = output feature, PEFT's DoRA norm axis) and `m_i` its DoRA magnitude, or `n_i` for a plain
LoRA adapter (then W_i = W0 + d_i). The merge combines magnitudes and directions separately:

Both are merged as changes from the base, `b = ||W0||_row` and `V0 = W0 / b`, with weights
normalized to sum 1 unless normalize=false (`s = sum_i w_i`):
- magnitudes: `m = b + sum_i w_i * (m_i - b)`, i.e. `sum_i w_i m_i` when s = 1.
- directions: `V = V0 + sum_i w_i * (V_i - V0)` with `V_i = (W0 + d_i) / n_i`: when s = 1 the
  weighted mean of the unit-row directions. After row normalization V is the direction of
  `W0 + sum_i w_i * (c / n_i) * d_i` with `c = 1 / ((1 - s) / b + sum_j w_j / n_j)` per row. So each
  delta is rescaled per row to a common norm frame, `delta'_i = (c / n_i) * d_i` (still low rank:
  the scaling goes into B), and the inner method merges those: `linear` exactly, or `ties` (trim /
  elect / disjoint mean with `density`).
- recombine: `W = m * (W0 + delta) / ||W0 + delta||_row`, written as a DoRA adapter
  (use_dora, lora_magnitude_vector = m) or, for model output, as the full weight.

Why changes from the base: with normalize=false the weights sum to more than 1, and a weighted sum
of the magnitudes themselves would scale every row by s (three adapters at weight 1 tripled every
weight row of SmolLM2 and broke the model: MMLU 0.181 against the base's 0.269, every task at 0),
while the direction, a mean, would ignore s. As changes, normalize=false is task arithmetic in
magnitude and direction, and s = 1 gives the weighted means above.

One adapter at weight 1 returns itself exactly (c = n_1, delta' = d_1, m = m_1).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import AdapterMergeError
from ..lazy import torch
from ._chunked import Combine, Sparsify, sparse_merge
from .base import ModuleResult, check_choice, check_density, normalized, param
from .math import row_norm


class Dora:
    name = "dora"
    summary = "merge magnitudes and directions separately (needs the base weight)"
    accepts_dora = True
    output_exact = True  # with inner=linear; inner=ties is truncated to --rank

    @dataclass(frozen=True)
    class Params:
        inner: str = param("linear", "how the directions are merged", choices=("linear", "ties"))
        density: float = param(0.2, "with inner=ties: fraction of entries kept, in (0, 1]")
        normalize: bool = param(True, "divide the weights by their sum")

        def __post_init__(self):
            check_choice(self.inner, ("linear", "ties"), "inner")
            check_density(self.density)

    def needs_base(self, adapters) -> bool:
        return True

    def merge_module(self, inputs, weights, base_weight, params, ctx) -> ModuleResult:
        w0 = base_weight.float()
        base_norm = row_norm(w0)
        ws = normalized(weights, params.normalize)
        rest = 0.0 if params.normalize else 1.0 - sum(ws)  # the base's own share (normalized: none)
        norms, mags, present = [], [], []
        for f, w in zip(inputs, ws):
            if f is None:  # a zero delta: W_i = W0, n_i = m_i = ||W0||
                n = base_norm
                mags.append(n * w)
            else:
                n = row_norm(w0 + f.delta())
                mags.append((f.magnitude.float() if f.is_dora else n) * w)
                present.append((f, w, n))
            norms.append((w, n))
        # b + sum w_i (m_i - b), written as sum w_i m_i + (1 - s) b
        magnitude = torch.stack(mags).sum(0) + rest * base_norm
        scale = torch.stack([w / n for w, n in norms]).sum(0) + rest / base_norm  # 1 / c per row [out]
        if not bool((scale > 0).all() and (magnitude > 0).all()):
            raise AdapterMergeError(
                f"dora, module {ctx.module}: weights {list(weights)} move some rows' magnitude or direction past zero "
                "(their changes from the base outweigh it); use smaller weights or normalize=true")
        common = 1.0 / scale
        if params.inner == "linear":
            terms = [(f.scaled_B() * (w * common / n)[:, None], f.A.float()) for f, w, n in present]
            return ModuleResult(terms=terms, magnitude=magnitude)
        Bs = [f.scaled_B() * (common / n)[:, None] for f, _, n in present]
        As = [f.A.float() for f, _, _ in present]
        merged, info = sparse_merge(
            Bs, As, [w for _, w, _ in present], density=params.density, sparsify=Sparsify.TRIM, combine=Combine.TIES, seed=ctx.seed_for(-1)
        )
        return ModuleResult(dense=merged, magnitude=magnitude, sketch=torch.cat(As, 0), info=info)
