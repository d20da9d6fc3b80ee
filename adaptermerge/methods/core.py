"""Core Space merging (Panariello et al. 2025, "Accurate and Efficient Low-Rank Model Merging in
Core Space"): any data-free merge run on the small core matrices of a shared basis, then mapped
back exactly.

Per module (see subspace.py): the reference bases are the left singular vectors U [out, p] of the
stacked B's and the right singular vectors V [in, q] of the stacked A's (p, q <= R = sum of
ranks); input i becomes the LoRA `b_i = U^T scale_i B_i` [p, r_i], `a_i = A_i V` [r_i, q] of a
p x q "module", with `d_i = U (b_i a_i) V^T` exactly (no information lost: every delta lies in
those bases). The inner method merges those core inputs as it would merge the real ones (same
weights, seed and parameters) into a p x q result M, and the delta is `U M V^T`: at most rank
min(p, q), written exactly (output_exact).

What changes with the space:
- ties, dare_ties, dare_linear: their trims and drops act on the p x q core entries instead of
  the out x in delta entries (an entrywise operation is not rotation invariant); this is the
  paper's point: in the core space the tasks share one basis, so entries line up. Sign flips or
  reordering of the reference vectors do not change the merge (trim, drop and sign election
  are equivariant to them). density: a fraction of the core's p * q entries.
- task_arithmetic, iso_c, iso_cts: rotation invariant, so the merge is the same as in the full
  space (a check on the reconstruction, and what the paper's Iso results in core space rely on).
- tsv: the same except its per-task share of the width, min(p, q) / T here (the core's width,
  as in the authors' TSV on cores) against min(out, in) / T in the full space.
The inner method's other parameters take their defaults; `density` (0: the inner method's
default, ties 0.2 and dare 0.5) and `lambda` are passed on when the inner method has them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..errors import AdapterMergeError
from .base import ExactLowRank, ModuleResult, check_choice, param
from .iso import IsoC, IsoCts
from .linear import TaskArithmetic
from .sparse import DareLinear, DareTies, Ties
from .subspace import core_space, weighted_factors
from .tsv import Tsv

INNER = {m.name: m for m in (Ties(), DareTies(), DareLinear(), TaskArithmetic(), Tsv(), IsoC(), IsoCts())}


class Core(ExactLowRank):
    """Core Space merging (Panariello et al. 2025): the inner method merges the inputs' r x r-sized
    cores in the shared reference bases of their factors; exact reconstruction, low rank."""

    name = "core"
    summary = "run a merge (ties, dare_ties, tsv, iso_c, ...) on the core matrices of a shared basis (exact, low rank)"

    @dataclass(frozen=True)
    class Params:
        inner: str = param("ties", "the merge run in the core space", choices=tuple(INNER))
        density: float = param(0.0, "the inner trim or drop's density, in (0, 1]; 0: the inner method's default")
        lambda_: float = param(1.0, "scaling of the merged delta (passed to the inner method)")

        def __post_init__(self):
            check_choice(self.inner, tuple(INNER), "inner")
            if not (isinstance(self.density, (int, float)) and 0.0 <= self.density <= 1.0):
                raise AdapterMergeError(f"density must be in (0, 1], or 0 for the inner method's default; got {self.density}")

    def inner_params(self, params):
        """The inner method's Params: its defaults, with density and lambda passed on where it has them."""
        inner = INNER[params.inner]
        names = {f.name for f in fields(inner.Params)}
        given = {"lambda_": params.lambda_}
        if params.density > 0:
            given["density"] = params.density
        return inner.Params(**{k: v for k, v in given.items() if k in names})

    def merge_module(self, inputs, weights, base_weight, params, ctx) -> ModuleResult:
        from ..adapter import LoraFactors  # a merge's work: describing the method loads no adapters (or torch)

        index, Bs, As = weighted_factors(inputs, [1.0] * len(inputs))
        cs = core_space(Bs, As)
        core_inputs = [None] * len(inputs)  # positions kept: DARE's generators follow the input index
        for j, i in enumerate(index):
            b, a = cs.b[j].float(), cs.a[j].float()
            core_inputs[i] = LoraFactors(a, b, float(b.shape[1]), 1.0)
        inner = INNER[params.inner]
        result = inner.merge_module(core_inputs, weights, None, self.inner_params(params), ctx)
        if result.dense is not None:
            terms = [(cs.U.float() @ result.dense.float(), cs.V.T.float())]
        else:
            terms = [(cs.U.float() @ b, a @ cs.V.T.float()) for b, a in result.terms]
        return ModuleResult(terms=terms, info=result.info)
