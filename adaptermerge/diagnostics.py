"""Interference diagnostics: before any evaluation, which task a merge will lose, and why.

Per module and adapter pair (i, j), all from the LoRA factors (`delta = scale * B @ A`):

- sign conflict: of the entries significant in both dense deltas (each delta's top `density`
  fraction by magnitude, TIES' trim), the fraction whose signs disagree. Independent deltas give
  about 0.5; what a sign-electing merge (TIES) throws away grows with it. The only statistic that
  needs the dense deltas: computed one module at a time.
- subspace overlap: principal angles between the row spaces of A_i and A_j (the inputs each
  delta reads) and between the column spaces of B_i and B_j (the outputs it writes). The cosines
  are the singular values of Q_i^T Q_j, with Q an orthonormal basis of the small factor ([in, r]
  or [out, r]); overlap = mean cos^2 in [0, 1] (1: the same subspace).
- norms: ||delta||_F^2 = trace((B^T B)(A A^T)) exactly from the factors, and the ratio per pair.
- cross-activation (with calibration records): how strongly adapter i's delta fires on task j's
  inputs X_j [tokens, in], relative to task j's own delta: ||delta_i X_j^T||_F / ||delta_j X_j^T||_F.
  With the Gram G_j = mean x x^T of those inputs, ||delta X^T||^2 is proportional to
  trace(delta G delta^T) = trace((B^T B)(A G A^T)), again from the factors.

All of these are entries of one small matrix per module: the inner products of the deltas,
K[i, k] = <delta_i, delta_k>_G = trace(delta_i G delta_k^T) (G = I without calibration).

Predicted interference of task j under a merge whose delta is sum_i c_i delta_i, or any merged
adapter M: the relative error of the merged layer outputs on task j's inputs, summed over the
model's modules,

    P_j = sqrt( sum_modules ||(delta_M - delta_j) X_j^T||^2 / sum_modules ||delta_j X_j^T||^2 )
        = sqrt( sum_m (c - e_j)^T K_j^m (c - e_j) / sum_m K_j^m[j, j] )

0 when the merge leaves task j's outputs as adapter j made them; 1 as far off as no adapter at
all. Without calibration records G = I (the deltas' Frobenius geometry: norms, overlaps and
signs, but blind to which inputs each task sends). The report gives P_j for the plain sum
(c = weights, task arithmetic), the average (c = weights / sum(weights), linear) and each merged
adapter given, whatever its method (c = e_M with delta_M appended to K).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from .adapter import Adapter, LoraFactors

log = logging.getLogger(__name__)

DENSITY = 0.2  # TIES' default trim: the significant entries of a delta

# ---------------------------------------------------------------- the math: tensors in, numbers out


def significant(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Mask of the `density` fraction of entries with the largest magnitude (ties at the threshold
    included), zero entries never. density 1: every nonzero entry. # [out, in] bool"""
    magnitude = delta.abs().flatten()
    keep = max(1, math.ceil(density * magnitude.numel()))
    if keep >= magnitude.numel():
        return delta != 0
    threshold = torch.kthvalue(magnitude, magnitude.numel() - keep + 1).values
    return (delta.abs() >= threshold) & (delta != 0)


def sign_conflicts(delta_i: torch.Tensor, delta_j: torch.Tensor, density: float = DENSITY) -> tuple[int, int]:
    """(entries significant in both deltas whose signs disagree, entries significant in both).
    Counts, not a rate, so that a model-wide rate is their sums' ratio."""
    return _conflicts(delta_i, delta_j, significant(delta_i, density), significant(delta_j, density))


def _conflicts(delta_i, delta_j, mask_i, mask_j) -> tuple[int, int]:
    both = mask_i & mask_j
    return int((both & ((delta_i > 0) != (delta_j > 0))).sum()), int(both.sum())


def column_basis(M: torch.Tensor, rtol: float = 1e-6) -> torch.Tensor:
    """An orthonormal basis of M's column space, from the SVD of the small factor (rank
    revealing: a rank-deficient factor gives fewer columns, where plain QR would add arbitrary
    directions). M: [d, r] -> [d, rank]."""
    U, S, _ = torch.linalg.svd(M.double(), full_matrices=False)
    if S.numel() == 0 or not float(S[0]) > 0:
        return U[:, :0]
    return U[:, S > rtol * S[0]]


def principal_cosines(M_i: torch.Tensor, M_j: torch.Tensor) -> torch.Tensor:
    """Cosines of the principal angles between the column spaces of M_i [d, r_i] and M_j [d, r_j],
    largest first: the singular values of Q_i^T Q_j (r_i x r_j, no d x d matrix), clipped to
    [0, 1]. # [min(rank_i, rank_j)]"""
    Q_i, Q_j = column_basis(M_i), column_basis(M_j)
    return torch.linalg.svdvals(Q_i.T @ Q_j).clamp(0.0, 1.0)


def overlap(cosines: torch.Tensor) -> float:
    """Mean squared cosine of the principal angles: 1 for the same subspace, 0 for orthogonal ones
    (for random r-dimensional subspaces of d dimensions, about r / d)."""
    return float(cosines.pow(2).mean()) if cosines.numel() else 0.0


def inner_products(factors: Sequence[tuple[torch.Tensor, torch.Tensor]], gram: torch.Tensor | None = None) -> torch.Tensor:
    """K[i, k] = trace(delta_i G delta_k^T) with delta_i = B_i @ A_i (B scaled), from the factors:
    trace((B_k^T B_i)(A_i G A_k^T)), never a dense [out, in] or [in, in] product beyond A G.
    factors: per delta (B [out, r_i], A [r_i, in]); gram: G [in, in], None for the identity
    (then K holds the Frobenius inner products). float64. # [n, n]"""
    if not factors:
        return torch.zeros(0, 0, dtype=torch.float64)
    B = torch.cat([b.double() for b, _ in factors], 1)  # [out, R]
    A = torch.cat([a.double() for _, a in factors], 0)  # [R, in]
    right = A.T if gram is None else gram.double() @ A.T  # [in, R]
    blocks = (A @ right) * (B.T @ B)  # elementwise: [R, R]
    edges = [0]
    for _, a in factors:
        edges.append(edges[-1] + a.shape[0])
    n = len(factors)
    K = torch.empty(n, n, dtype=torch.float64)
    for i in range(n):
        rows = blocks[edges[i] : edges[i + 1]]
        for k in range(n):
            K[i, k] = rows[:, edges[k] : edges[k + 1]].sum()
    return (K + K.T) / 2  # exact symmetry; round-off only


def relative_error(K: torch.Tensor, coefficients: Sequence[float], target: int) -> float:
    """||sum_i c_i delta_i - delta_target||_G / ||delta_target||_G from the inner products K
    (the quadratic form (c - e_t)^T K (c - e_t)); nan when delta_target is zero."""
    c = torch.as_tensor(list(coefficients), dtype=torch.float64)
    c = c - torch.nn.functional.one_hot(torch.tensor(target), K.shape[0]).double()
    own = float(K[target, target])
    if not own > 0:
        return math.nan
    return math.sqrt(max(float(c @ K @ c), 0.0) / own)


def decompose(K: torch.Tensor, coefficients: Sequence[float], target: int) -> tuple[float, float]:
    """(kept, interference) of the merged delta sum_i c_i delta_i on task `target`'s inputs:
    kept = <merged, delta_t>_G / ||delta_t||_G^2, the share of the task's own effect that survives
    (1: all of it; an average of n adapters keeps 1/n); interference = the rest of the merged
    output, orthogonal to the task's own, relative to ||delta_t||_G. relative_error^2 =
    (1 - kept)^2 + interference^2. (nan, nan) when delta_t is zero."""
    c = torch.as_tensor(list(coefficients), dtype=torch.float64)
    own = float(K[target, target])
    if not own > 0:
        return math.nan, math.nan
    kept = float(c @ K[:, target]) / own
    return kept, math.sqrt(max(float(c @ K @ c) / own - kept * kept, 0.0))


# ---------------------------------------------------------------- per module


@dataclass
class ModuleDetail:
    """One module's statistics. Indices follow the adapters, then the merged adapters."""

    module: str
    present: list[bool]  # adapters, then merged
    norms: list[float]  # ||delta||_F (0 where absent)
    pairs: dict[tuple[int, int], dict] = field(default_factory=dict)  # i < j among the adapters
    frobenius: torch.Tensor | None = None  # K with G = I, [n + m, n + m]
    tasks: list[torch.Tensor] | None = None  # per task j: K with G_j, [n + m, n + m]
    base: list[float] | None = None  # per task j: ||W0 X_j^T||^2 (trace(W0 G_j W0^T)), when the base weight is given


def _factors(f: LoraFactors | None, like: LoraFactors) -> tuple[torch.Tensor, torch.Tensor]:
    """(scaled B, A) in float32; a zero rank-1 pair where an adapter lacks the module."""
    if f is None:
        out, inp = like.shape
        return torch.zeros(out, 1), torch.zeros(1, inp)
    return f.scaled_B(), f.A.float()


def module_detail(module: str, adapters: Sequence[LoraFactors | None], merged: Sequence[LoraFactors | None] = (),
                  grams: Sequence[torch.Tensor] | None = None, density: float = DENSITY,
                  base_weight: torch.Tensor | None = None) -> ModuleDetail:
    """The statistics of one module: pairs of adapters, norms, inner products (per task Gram).
    adapters / merged: each one's factors here, None where it lacks the module; grams: task j's
    input Gram [in, in] per adapter j, or None (no calibration); base_weight: W0 [out, in], for
    the base's own output energy on each task's inputs (the scale the deltas perturb)."""
    everything = [*adapters, *merged]
    like = next(f for f in everything if f is not None)
    factors = [_factors(f, like) for f in everything]
    frobenius = inner_products(factors)
    detail = ModuleDetail(module, [f is not None for f in everything],
                          [math.sqrt(max(float(frobenius[i, i]), 0.0)) for i in range(len(everything))], frobenius=frobenius)
    n = len(adapters)
    deltas, masks = {}, {}  # one module's dense deltas, each dropped once its last pair is done
    for i in range(n):
        for j in range(i + 1, n):
            if adapters[i] is None or adapters[j] is None:
                continue
            for k in (i, j):
                if k not in deltas:
                    deltas[k] = adapters[k].delta()
                    masks[k] = significant(deltas[k], density)
            conflicts, both = _conflicts(deltas[i], deltas[j], masks[i], masks[j])
            cos_a = principal_cosines(adapters[i].A.float().T, adapters[j].A.float().T)
            cos_b = principal_cosines(adapters[i].B.float(), adapters[j].B.float())
            norm_i, norm_j = detail.norms[i], detail.norms[j]
            detail.pairs[(i, j)] = {
                "sign_conflict": conflicts / both if both else math.nan, "conflicts": conflicts, "significant_both": both,
                "overlap_A": overlap(cos_a), "overlap_B": overlap(cos_b),
                "max_cos_A": float(cos_a[0]) if cos_a.numel() else 0.0, "max_cos_B": float(cos_b[0]) if cos_b.numel() else 0.0,
                "norm_ratio": norm_i / norm_j if norm_j > 0 else math.nan,
                "cosine": float(frobenius[i, j]) / (norm_i * norm_j) if norm_i > 0 and norm_j > 0 else math.nan,
            }
        deltas.pop(i, None)
        masks.pop(i, None)
    if grams is not None:
        detail.tasks = [inner_products(factors, g) for g in grams]
        if base_weight is not None:
            w0 = base_weight.float()
            detail.base = [float(((w0 @ g.float()) * w0).sum()) for g in grams]
    return detail


# ---------------------------------------------------------------- the model


LAYER = re.compile(r"\.(\d+)\.")


def layer_of(module: str) -> int | None:
    """The block index in a module name (model.layers.12.mlp.down_proj -> 12), None if none."""
    found = LAYER.search(module)
    return int(found.group(1)) if found else None


def _finite(x: float) -> float | None:
    return x if isinstance(x, float) and math.isfinite(x) else None


def _ratio(num: float, den: float) -> float | None:
    return math.sqrt(num / den) if den > 0 and num >= 0 else None


def diagnose_adapters(adapters: Sequence[Adapter], modules: Sequence[str], weights: Sequence[float], *,
                      merged: Sequence[Adapter] = (), grams: Callable[[str], list[torch.Tensor]] | None = None,
                      base_weight: Callable[[str], torch.Tensor] | None = None, density: float = DENSITY,
                      progress=None) -> dict:
    """The diagnostics report (a JSON-able dict) of `adapters` over `modules`, one module at a time.
    weights: the merge's weight per adapter (for the sum and average predictions); merged: merged
    adapters to score; grams(module): task j's input Gram per adapter j at that module (None: no
    calibration); base_weight(module): W0, with grams, for the base's output energy per task.
    progress(done, total, module)."""
    n, m = len(adapters), len(merged)
    names = [a.name for a in adapters]
    frobenius = torch.zeros(n + m, n + m, dtype=torch.float64)
    tasks = [torch.zeros(n + m, n + m, dtype=torch.float64) for _ in range(n)] if grams is not None else None
    totals = {(i, j): {"conflicts": 0, "significant_both": 0, "overlap_A": [], "overlap_B": []} for i in range(n) for j in range(i + 1, n)}
    per_module = []
    base = None  # per task: sum over modules of ||W0 X_j^T||^2
    for done, module in enumerate(modules):
        inputs = [a.factors(module) if module in a.specs else None for a in adapters]
        scored = [a.factors(module) if module in a.specs else None for a in merged]
        detail = module_detail(module, inputs, scored, grams(module) if grams is not None else None, density,
                               base_weight(module) if grams is not None and base_weight is not None else None)
        frobenius += detail.frobenius
        if detail.base is not None:
            base = [b + x for b, x in zip(base or [0.0] * n, detail.base)]
        for pair, stats in detail.pairs.items():
            total = totals[pair]
            total["conflicts"] += stats["conflicts"]
            total["significant_both"] += stats["significant_both"]
            total["overlap_A"].append(stats["overlap_A"])
            total["overlap_B"].append(stats["overlap_B"])
        row = {"module": module, "layer": layer_of(module), "norms": {names[i]: detail.norms[i] for i in range(n) if detail.present[i]},
               "pairs": [{"a": names[i], "b": names[j], **{k: _finite(v) if isinstance(v, float) else v for k, v in s.items()}}
                         for (i, j), s in detail.pairs.items()]}
        if detail.tasks is not None:
            for j, K in enumerate(detail.tasks):
                tasks[j] += K
            row["own_energy"] = {names[j]: float(detail.tasks[j][j, j]) for j in range(n)}
            # cross[i][j]: ||delta_i X_j|| / ||delta_j X_j|| at this module
            row["cross_activation"] = {names[j]: {names[i]: _ratio(float(detail.tasks[j][i, i]), float(detail.tasks[j][j, j]))
                                                  for i in range(n) if i != j} for j in range(n)}
        per_module.append(row)
        if progress:
            progress(done + 1, len(modules), module)
    report = _summary(names, [a.name for a in merged], list(weights), frobenius, tasks, totals, per_module, density)
    if base is not None:
        # ||delta_j X_j|| / ||W0 X_j||: how large a change of the layer outputs each task's own delta is
        report["own_strength"] = {name: _ratio(float(tasks[j][j, j]), base[j]) for j, name in enumerate(names)}
    return report


def _prediction(K: torch.Tensor, j: int, weights: list[float], merged_names: list[str]) -> dict:
    """P_j, and its split into kept and interference, for the sum, the average and each merged
    adapter, from task j's summed inner products K."""
    n, total, pad = len(weights), sum(weights), [0.0] * len(merged_names)
    merges = {"sum": [*weights, *pad]}
    if total:
        merges["average"] = [w / total for w in weights] + pad
    for k, name in enumerate(merged_names):
        merges[name] = [0.0] * n + [1.0 if q == k else 0.0 for q in range(len(merged_names))]
    error = {label: _finite(relative_error(K, c, j)) for label, c in merges.items()}
    split = {label: decompose(K, c, j) for label, c in merges.items()}
    return {
        "sum": error["sum"], "average": error.get("average"),
        "merged": {name: error[name] for name in merged_names},
        "kept": {label: _finite(kept) for label, (kept, _) in split.items()},
        "interference": {label: _finite(rest) for label, (_, rest) in split.items()},
    }


def _summary(names, merged_names, weights, frobenius, tasks, totals, per_module, density) -> dict:
    n = len(names)
    pairs = []
    for (i, j), t in totals.items():
        norm_i, norm_j = float(frobenius[i, i]), float(frobenius[j, j])
        entry = {
            "a": names[i], "b": names[j],
            "sign_conflict": t["conflicts"] / t["significant_both"] if t["significant_both"] else None,
            "overlap_A": sum(t["overlap_A"]) / len(t["overlap_A"]) if t["overlap_A"] else None,
            "overlap_B": sum(t["overlap_B"]) / len(t["overlap_B"]) if t["overlap_B"] else None,
            "norm_ratio": _ratio(norm_i, norm_j),
            "cosine": float(frobenius[i, j]) / math.sqrt(norm_i * norm_j) if norm_i > 0 and norm_j > 0 else None,
            "modules": len(t["overlap_A"]),
        }
        if tasks is not None:  # both directions: a on b's inputs, b on a's
            entry["cross_activation"] = {f"{names[i]} on {names[j]}": _ratio(float(tasks[j][i, i]), float(tasks[j][j, j])),
                                         f"{names[j]} on {names[i]}": _ratio(float(tasks[i][j, j]), float(tasks[i][i, i]))}
        pairs.append(entry)
    K_for = (lambda j: tasks[j]) if tasks is not None else (lambda j: frobenius)
    predicted = {}
    for j, name in enumerate(names):
        predicted[name] = _prediction(K_for(j), j, weights, merged_names)
        others = [(names[i], _ratio(float(K_for(j)[i, i]), float(K_for(j)[j, j]))) for i in range(n) if i != j]
        strongest = max((o for o in others if o[1] is not None), key=lambda o: o[1], default=(None, None))
        predicted[name]["strongest_other"] = {"adapter": strongest[0], "ratio": strongest[1]}
        predicted[name]["worst_layers"] = _worst_layers(per_module, name, strongest[0]) if tasks is not None else []
    return {
        "adapters": names, "merged": merged_names, "weights": weights, "density": density,
        "calibrated": tasks is not None, "modules": len(per_module),
        "norms": {name: math.sqrt(max(float(frobenius[i, i]), 0.0)) for i, name in enumerate(names)},
        "pairs": pairs,
        "predicted_interference": predicted,
        # the summed inner products, rows and columns `labels`: any other merge's prediction from them
        "inner_products": {"labels": [*names, *merged_names], "frobenius": frobenius.tolist(),
                           "tasks": {name: tasks[j].tolist() for j, name in enumerate(names)} if tasks is not None else None},
        "per_module": per_module,
    }


def _worst_layers(per_module: list[dict], task: str, other: str | None, top: int = 3) -> list[dict]:
    """The layers where `other`'s delta fires hardest on `task`'s inputs, relative to task's own."""
    if other is None:
        return []
    energy: dict[int, list[float]] = {}
    for row in per_module:
        ratio = row["cross_activation"][task].get(other)
        own = row["own_energy"][task]
        if row["layer"] is None or ratio is None:
            continue
        slot = energy.setdefault(row["layer"], [0.0, 0.0])
        slot[0] += ratio * ratio * own
        slot[1] += own
    ranked = sorted(((layer, math.sqrt(a / b)) for layer, (a, b) in energy.items() if b > 0), key=lambda t: -t[1])
    return [{"layer": layer, "ratio": r} for layer, r in ranked[:top]]


# ---------------------------------------------------------------- the chart


def layer_matrix(report: dict) -> tuple[list[str], list[int], list[list[float | None]], str]:
    """(row labels, layers, values, what the values are) for the per-layer heatmap: with
    calibration, cross-activation `a on b` per ordered pair; without, the sign-conflict rate per
    pair. Modules of a layer are pooled (energy-weighted ratios; conflict counts summed)."""
    layers = sorted({r["layer"] for r in report["per_module"] if r["layer"] is not None})
    names = report["adapters"]
    if report["calibrated"]:
        labels = [f"{a} on {b}" for b in names for a in names if a != b]
        sums = {(lab, layer): [0.0, 0.0] for lab in labels for layer in layers}
        for row in report["per_module"]:
            if row["layer"] is None:
                continue
            for b, ratios in row["cross_activation"].items():
                for a, ratio in ratios.items():
                    if ratio is not None:
                        slot = sums[(f"{a} on {b}", row["layer"])]
                        slot[0] += ratio * ratio * row["own_energy"][b]
                        slot[1] += row["own_energy"][b]
        values = [[math.sqrt(s[0] / s[1]) if s[1] > 0 else None for s in (sums[(lab, layer)] for layer in layers)] for lab in labels]
        return labels, layers, values, "cross-activation ||delta_a x_b|| / ||delta_b x_b||"
    labels = [f"{p['a']} / {p['b']}" for p in report["pairs"]]
    counts = {(lab, layer): [0, 0] for lab in labels for layer in layers}
    for row in report["per_module"]:
        if row["layer"] is None:
            continue
        for p in row["pairs"]:
            slot = counts[(f"{p['a']} / {p['b']}", row["layer"])]
            slot[0] += p["conflicts"]
            slot[1] += p["significant_both"]
    values = [[c[0] / c[1] if c[1] else None for c in (counts[(lab, layer)] for layer in layers)] for lab in labels]
    return labels, layers, values, f"sign-conflict rate (top {report['density']:g} of entries)"


def heatmap(path: Path, report: dict, *, title: str = "interference diagnostics") -> Path:
    """Write the PNG: per layer (columns) and adapter pair (rows), cross-activation with
    calibration, else the sign-conflict rate. matplotlib without pyplot, style local to the figure."""
    import matplotlib
    from matplotlib.figure import Figure

    from .charts import MAX_WIDTH_IN, STYLE

    labels, layers, values, what = layer_matrix(report)
    # no value (an adapter without the layer's modules) and, on the log scale, a zero: grey
    grid = [[math.nan if v is None or (report["calibrated"] and v <= 0) else v for v in row] for row in values] or [[math.nan]]
    width = min(MAX_WIDTH_IN, 3.0 + 0.32 * max(len(layers), 1))
    height = 1.6 + 0.34 * max(len(labels), 1)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(width, height))
        ax = fig.subplots()
        if report["calibrated"]:  # ratio 1: as strong as the task's own delta; log scale, centred there
            from matplotlib.colors import LogNorm

            finite = [v for row in values for v in row if v is not None and v > 0]
            span = max([2.0, *(max(v, 1 / v) for v in finite)])
            norm, cmap = LogNorm(vmin=1 / span, vmax=span), matplotlib.colormaps["RdBu_r"]
        else:
            norm, cmap = matplotlib.colors.Normalize(vmin=0.0, vmax=1.0), matplotlib.colormaps["RdBu_r"]
        image = ax.imshow(grid, cmap=cmap.with_extremes(bad="#eeeeee"), norm=norm, aspect="auto")
        ax.set_xticks(range(len(layers)), [str(layer) for layer in layers])
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("layer")
        ax.tick_params(length=0)
        bar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
        bar.set_label(what)
        ax.set_title(title)
        fig.tight_layout()
        fig.savefig(path)
    return path

