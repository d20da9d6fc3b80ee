"""Where a TIES merge of small modules spends its time: each stage timed on its own, one thread.

Random rank-16 factors of SmolLM2-135M's module shapes (benchmark case (a): 30 layers, three
adapters, density 0.2, rank-48 output), run through the stages of the dense path of
`adaptermerge.methods._chunked.sparse_merge` and the truncation that follows it:

    python benchmarks/profile_ties_stages.py

Prints seconds per stage per shape and in all; `merge()` itself overlaps two modules on two
workers, so its wall time is below the one-thread total.
"""

from __future__ import annotations

import os
import time

import torch

from adaptermerge import lowrank
from adaptermerge.methods import backends, math
from adaptermerge.workers import heap_reuse

# (out, in, modules of that shape in 30 layers)
SHAPES = {"q/o 576x576": (576, 576, 60), "k/v 192x576": (192, 576, 60), "gate/up 1536x576": (1536, 576, 60), "down 576x1536": (576, 1536, 30)}
STAGES = ("form", "cut", "combine", "truncate")


def profile(out: int, inp: int, count: int, gen: torch.Generator) -> dict[str, float]:
    B = torch.randn(3, out, 16, generator=gen) * 0.01
    A = torch.randn(3, 16, inp, generator=gen) / inp**0.5
    n = out * inp
    keep = math.keep_count(n, 0.2)
    spent = dict.fromkeys(STAGES, 0.0)
    for _ in range(count):
        marks = [time.perf_counter()]
        values = torch.bmm(B, A).view(3, n)
        marks.append(time.perf_counter())
        cuts = backends.magnitude_cut(values, keep)
        marks.append(time.perf_counter())
        merged = backends.ties(values, cuts, [1.0, 1.0, 1.0], entries=n)[0].view(out, inp)  # as sparse_merge runs it
        marks.append(time.perf_counter())
        lowrank.truncate(merged, 48, sketch=A.reshape(48, inp))
        marks.append(time.perf_counter())
        for stage, start, stop in zip(STAGES, marks, marks[1:]):
            spent[stage] += stop - start
    return spent


def main() -> None:
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # as the CLI merges: large tensors on huge pages
    torch.set_num_threads(1)
    print(f"backend: {backends.choose(torch.zeros(3, 576 * 576), 576 * 576).value}")
    with heap_reuse():  # as merge() runs: module-sized blocks from the heap, no fresh page faults
        run()


def run() -> None:
    gen = torch.Generator().manual_seed(0)
    profile(576, 576, 2, gen)  # warm-up: first calls allocate and load kernels
    total = dict.fromkeys(STAGES, 0.0)
    print(f"{'shape':<18}" + "".join(f"{s:>10}" for s in STAGES) + f"{'all':>10}")
    for name, (out, inp, count) in SHAPES.items():
        spent = profile(out, inp, count, gen)
        print(f"{name:<18}" + "".join(f"{spent[s]:>10.3f}" for s in STAGES) + f"{sum(spent.values()):>10.3f}")
        for s in STAGES:
            total[s] += spent[s]
    print(f"{'all 210 modules':<18}" + "".join(f"{total[s]:>10.3f}" for s in STAGES) + f"{sum(total.values()):>10.3f}")


if __name__ == "__main__":
    main()
