"""RegMean: the merge that best reproduces each adapter's layer outputs on its own inputs.

Per linear module, with `G_i` adapter i's input Gram on its calibration records (mean x x^T,
see adaptermerge.calibration) and `w_i` its weight (how much its inputs count), the merged delta
minimizes `sum_i w_i * mean over i's tokens ||(delta - delta_i) x||^2` (Jin et al. 2023, applied
to the deltas: the base weight cancels). The closed form is

    delta = lambda * sum_i delta_i @ (w_i * G~_i) @ S^-1,     S = sum_j w_j * G~_j + ridge * mean(diag S) * I

(where float32 round-off left eigenvalues of S below that ridge, they are floored there instead)

with `G~ = offdiag * G + (1 - offdiag) * diag(G)` (RegMean's alpha: 1 is the exact regression;
0 is a per-input-feature weighted average; the paper shrinks the off-diagonal entries where
the calibration set is small). `lambda` (default 1) scales the result, as in task arithmetic.

Conventions, each pinned by a test:
- Equal Grams give the weighted *average* of the deltas (linear); Grams on disjoint input
  subspaces give each adapter's own delta on its own inputs, at full strength.
- The weights are relative: scaling all of them changes nothing (they weigh the objective).
- The result is exactly low rank: `delta_i G~_i S^-1 = (scale_i B_i) (A_i G~_i S^-1)`, so the
  merged factors are the sum of rank r_i terms, recompressed by QR as for linear merges.
- An adapter without a module contributes a zero delta there but its Gram still counts: its
  inputs are to keep the base's outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import AdapterMergeError
from ..lazy import torch
from .base import ExactLowRank, MergeContext, ModuleResult, param

# Above this input width the S solve runs in float32 (a float64 14336 x 14336 matrix is 1.6 GB).
FLOAT64_MAX_IN = 4096


def shrink_offdiag(gram: torch.Tensor, offdiag: float) -> torch.Tensor:
    """`offdiag * G + (1 - offdiag) * diag(G)`."""
    if offdiag == 1.0:
        return gram
    out = gram * offdiag
    out.diagonal().add_(gram.diagonal(), alpha=1.0 - offdiag)
    return out


def _solver(S: torch.Tensor, ridge: float):
    """x -> (S + ridge * mean(diag S) * I)^-1 x. Grams summed in float32 can have eigenvalues a
    little below zero where the inputs have (next to) no energy; when the ridge does not cover
    them, the eigenvalues are floored at the ridge instead (eigh): the well-determined directions,
    small ones included, stay as they are (a larger ridge on all of them cost the demo's domain
    task most of its gain)."""
    mean = float(S.diagonal().mean())
    if not mean > 0:
        raise AdapterMergeError("the calibration Grams are zero: the calibration records never reached this module")
    floor = ridge * mean
    shifted = S.clone()
    shifted.diagonal().add_(floor)
    L, info = torch.linalg.cholesky_ex(shifted)
    if int(info) == 0:
        return lambda x: torch.cholesky_solve(x, L)
    values, vectors = torch.linalg.eigh(S)
    inverse = 1.0 / values.clamp_min(max(floor, float(values.max()) * torch.finfo(torch.float32).eps))
    return lambda x: vectors @ (inverse[:, None] * (vectors.T @ x))


def regmean_system(grams, weights, *, offdiag: float = 1.0, ridge: float = 1e-6):
    """(the weighted Grams w_i G~_i, x -> S^-1 x): what modules reading the same input share."""
    dtype = torch.float64 if grams[0].shape[0] <= FLOAT64_MAX_IN else torch.float32
    weighted = [w * shrink_offdiag(g.to(dtype), offdiag) for g, w in zip(grams, weights)]
    return weighted, _solver(torch.stack(weighted).sum(0), ridge)


def regmean_terms(factors, grams, weights, *, offdiag: float = 1.0, ridge: float = 1e-6, strength: float = 1.0, system=None):
    """The merged delta as factor pairs [(B', A')] (see the module docstring).

    factors: per adapter `(scaled_B [out, r], A [r, in])`, or None where the adapter lacks the module.
    grams: per adapter its input Gram [in, in]; weights: per adapter w_i >= 0, not all zero.
    system: regmean_system's result for these Grams, when already at hand (grams is then unused).
    """
    weighted, solve = system if system is not None else regmean_system(grams, weights, offdiag=offdiag, ridge=ridge)
    dtype = weighted[0].dtype
    terms = []
    for f, g in zip(factors, weighted):
        if f is None:
            continue
        B, A = f
        # A' = A G~ S^-1, i.e. (S^-1 G~ A^T)^T with S and G~ symmetric
        A_new = solve(g @ A.to(dtype).T).T
        terms.append((B.float() * strength, A_new.float()))
    return terms


class RegMean(ExactLowRank):
    name = "regmean"
    summary = "activation-aware regression merge: each adapter's outputs kept on its own inputs (needs calibration data)"

    @dataclass(frozen=True)
    class Params:
        offdiag: float = param(1.0, "scale of the Grams' off-diagonal entries in [0, 1] (RegMean's alpha; 1 = exact regression)")
        lambda_: float = param(1.0, "scale of the merged delta")
        ridge: float = param(1e-6, "ridge added to the summed Gram, relative to its mean diagonal")
        calib: str = param("", "calibration JSONL files (chat records), comma-separated, one per input; empty = each adapter's training data from its training.json")
        calib_size: int = param(64, "calibration records per adapter")
        calib_max_length: int = param(512, "tokens per calibration record at most")
        refine: int = param(0, "times the Grams are collected again with the merge so far folded in (each adapter's records; its own delta stays the target)")

        def __post_init__(self):
            if not 0.0 <= self.offdiag <= 1.0:
                raise AdapterMergeError(f"offdiag must be in [0, 1], got {self.offdiag}")
            if not self.ridge >= 0.0:
                raise AdapterMergeError(f"ridge must be >= 0, got {self.ridge}")
            for name in ("calib_size", "calib_max_length"):
                if int(getattr(self, name)) < 1:
                    raise AdapterMergeError(f"{name} must be a positive integer, got {getattr(self, name)}")
            if int(self.refine) < 0:
                raise AdapterMergeError(f"refine must be >= 0, got {self.refine}")

    def prepare(self, plan):
        """Each adapter's calibration Grams (computed once per adapter and records, then cached)."""
        from .. import calibration  # a merge's work: describing the method must not load models or torch

        if any(w < 0 for w in plan.weights) or not any(w > 0 for w in plan.weights):
            raise AdapterMergeError(f"regmean weights weigh each adapter's inputs: expected non-negative weights, not all zero, got {plan.weights}")
        files = [f.strip() for f in plan.params.calib.split(",")] if plan.params.calib else None
        calibs = calibration.resolve(plan.adapters, files, plan.params.calib_size, plan.seed)
        store = calibration.gram_store(plan.adapters, calibs, plan.base_model, plan.modules,
                                       max_length=plan.params.calib_max_length, progress=plan.progress)
        for round_ in range(int(plan.params.refine)):
            merged = self._merged_adapter(plan, store)
            store = calibration.gram_store(plan.adapters, calibs, plan.base_model, plan.modules, max_length=plan.params.calib_max_length,
                                           fold=merged, progress=plan.progress, label=f"{calibration.PROGRESS_LABEL}, refine {round_ + 1}")
        return store

    def _merged_adapter(self, plan, store):
        """The merge with `store`'s Grams, in memory (its terms side by side, scale 1)."""
        from ..adapter import Adapter, LoraFactors

        factors = {}
        for module in plan.modules:
            inputs = [a.factors(module) if module in a.specs else None for a in plan.adapters]
            ctx = MergeContext(module, plan.seed, torch.device("cpu"), store)  # folded into a CPU model
            merged = self.merge_module(inputs, plan.weights, None, plan.params, ctx)
            B = torch.cat([b for b, _ in merged.terms], 1)
            A = torch.cat([a for _, a in merged.terms], 0)
            factors[module] = LoraFactors(A, B, alpha=float(A.shape[0]), scale=1.0)
        return Adapter.from_factors("regmean-so-far", factors, base_model=plan.adapters[0].base_model)

    def merge_module(self, inputs, weights, base_weight, params, ctx) -> ModuleResult:
        factors = [None if f is None else (f.scaled_B(), f.A.float()) for f in inputs]
        terms = regmean_terms(factors, None, weights, strength=params.lambda_, system=_shared_system(ctx, weights, params))
        return ModuleResult(terms=terms)


def _shared_system(ctx, weights, params):
    """regmean_system for ctx.module, solved once for the modules that read the same input (q/k/v,
    gate/up: one Gram per adapter). A solved system is kept only until its last sharing module has
    taken it, so memory holds no more than the modules in flight need; the engine runs small modules
    on several threads, in any order, so two of them may solve the same system at once (harmless)."""
    store = ctx.prepared
    key = (store.key(ctx.module), tuple(weights), params.offdiag, params.ridge, str(ctx.device))

    def take(entry):  # under the lock
        entry[1] -= 1
        if entry[1] <= 0:
            del store.memo[key]
        return entry[0]

    with store.lock:
        if key in store.memo:
            return take(store.memo[key])
    system = regmean_system(store.grams(ctx.module, ctx.device), weights, offdiag=params.offdiag, ridge=params.ridge)
    with store.lock:
        if key in store.memo:  # another thread solved it meanwhile: count this module's use there
            take(store.memo[key])
        elif store.sharing(ctx.module) > 1:
            store.memo[key] = [system, store.sharing(ctx.module) - 1]
    return system
