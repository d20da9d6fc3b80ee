"""Where a TIES merge of small modules spends its time: each stage timed on its own, one thread.

Random rank-16 factors of SmolLM2-135M's module shapes (benchmark case (a): 30 layers, three
adapters, density 0.2, rank-48 output; fresh factors for every module, the same in every run),
run through the stages of the dense path of `adaptermerge.methods._chunked.sparse_merge` and the
truncation that follows it:

    python benchmarks/profile_ties_stages.py
    python benchmarks/profile_ties_stages.py --isa avx2      # as on a CPU without AVX-512
    python benchmarks/profile_ties_stages.py --kernels torch # without the C extension
    python benchmarks/profile_ties_stages.py --optimum       # and the optimal truncation's error

Prints seconds per stage per shape and in all, as the thread's CPU time (time.thread_time: at one
thread every op runs on the calling thread, and CPU time holds still on a machine shared with
other work, where wall time does not), best of --repeat runs; `merge()` itself overlaps two
modules on two workers, so its wall time is below the one-thread total. --isa and --kernels are
those of bench_merge.py.
"""

from __future__ import annotations

import argparse
import os
import time

# (out, in, modules of that shape in 30 layers)
SHAPES = {"q/o 576x576": (576, 576, 60), "k/v 192x576": (192, 576, 60), "gate/up 1536x576": (1536, 576, 60), "down 576x1536": (576, 1536, 30)}
STAGES = ("form", "cut", "combine", "truncate")


def profile(out: int, inp: int, count: int, gen, power_iters: int | None = None, optimum: bool = False, oversample: int | None = None) -> dict[str, float]:
    import torch

    from adaptermerge import lowrank
    from adaptermerge.methods import backends, math

    n = out * inp
    keep = math.keep_count(n, 0.2)
    extra = {} if oversample is None else {"oversample": oversample}
    spent = dict.fromkeys(STAGES, 0.0)
    # the truncation's squared error, the optimal one (with `optimum`) and the deltas' norms, summed
    spent["resid2"] = spent["best2"] = spent["norm2"] = 0.0
    for _ in range(count):
        B = torch.randn(3, out, 16, generator=gen) * 0.01
        A = torch.randn(3, 16, inp, generator=gen) / inp**0.5
        marks = [time.thread_time()]
        values = torch.bmm(B, A).view(3, n)
        marks.append(time.thread_time())
        cuts = backends.magnitude_cut(values, keep)
        marks.append(time.thread_time())
        merged = backends.ties(values, cuts, [1.0, 1.0, 1.0], entries=n)[0].view(out, inp)  # as sparse_merge runs it
        marks.append(time.thread_time())
        stats = lowrank.truncate(merged, 48, sketch=A.reshape(48, inp), power_iters=power_iters, **extra)[2]
        marks.append(time.thread_time())
        for stage, start, stop in zip(STAGES, marks, marks[1:]):
            spent[stage] += stop - start
        norm2 = float(merged.double().pow(2).sum())
        spent["norm2"] += norm2
        spent["resid2"] += stats.rel_error**2 * norm2
        if optimum:
            spent["best2"] += float(torch.linalg.svdvals(merged.double())[48:].pow(2).sum())
    return spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--isa", choices=["native", "avx2"], default="native", help="avx2: emulate a CPU without AVX-512")
    ap.add_argument("--kernels", choices=["native", "torch"], default="native", help="torch: without the C extension")
    ap.add_argument("--repeat", type=int, default=3, help="runs per shape; the fastest counts")
    ap.add_argument("--power-iters", type=int, help="the truncation's power iterations (default: its own choice)")
    ap.add_argument("--oversample", type=int, help="the truncation's extra columns (default: its own choice)")
    ap.add_argument("--optimum", action="store_true", help="also the optimal truncation's error (a float64 SVD of each merge)")
    args = ap.parse_args()
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # as the CLI merges: large tensors on huge pages
    if args.isa == "avx2":  # before torch loads
        os.environ.update(ATEN_CPU_CAPABILITY="avx2", MKL_ENABLE_INSTRUCTIONS="AVX2", ONEDNN_MAX_CPU_ISA="AVX2", ADAPTERMERGE_NATIVE="avx2")
    if args.kernels == "torch":
        os.environ["ADAPTERMERGE_NATIVE"] = "0"
    import torch

    from adaptermerge.methods import _native, backends
    from adaptermerge.workers import heap_reuse

    if args.isa == "avx2":  # no AVX512-BF16 or AMX either: the truncation stays in float32
        torch.cpu._is_avx512_bf16_supported = lambda: False
        torch.cpu._is_amx_tile_supported = lambda: False
    torch.set_num_threads(1)
    lib = _native.library()
    print(f"backend: {backends.choose(torch.zeros(3, 576 * 576), 576 * 576).value}"
          f"{f' ({lib.isa_name} loops)' if lib else ''}, torch {torch.backends.cpu.get_cpu_capability()}; thread CPU seconds")
    with heap_reuse():  # as merge() runs: module-sized blocks from the heap, no fresh page faults
        run(args.repeat, args.power_iters, args.optimum, args.oversample)


def run(repeat: int, power_iters: int | None, optimum: bool, oversample: int | None) -> None:
    import torch

    profile(576, 576, 2, torch.Generator().manual_seed(0))  # warm-up: first calls allocate and load kernels
    total = dict.fromkeys((*STAGES, "resid2", "best2", "norm2"), 0.0)
    print(f"{'shape':<18}" + "".join(f"{s:>10}" for s in STAGES) + f"{'all':>10}")
    for seed, (name, (out, inp, count)) in enumerate(SHAPES.items(), 1):
        # Every run of a shape merges the same factors, so the error printed does not depend on
        # which run was the fastest.
        runs = [profile(out, inp, count, torch.Generator().manual_seed(seed), power_iters, optimum and not r, oversample) for r in range(repeat)]
        spent = {**min(runs, key=lambda r: sum(r[s] for s in STAGES)), "best2": runs[0]["best2"]}
        print(f"{name:<18}" + "".join(f"{spent[s]:>10.3f}" for s in STAGES) + f"{sum(spent[s] for s in STAGES):>10.3f}")
        for s in total:
            total[s] += spent[s]
    print(f"{'all 210 modules':<18}" + "".join(f"{total[s]:>10.3f}" for s in STAGES) + f"{sum(total[s] for s in STAGES):>10.3f}")
    print(f"truncation error over all modules: {(total['resid2'] / total['norm2']) ** 0.5:.8f}"
          + (f" (optimum {(total['best2'] / total['norm2']) ** 0.5:.8f})" if optimum else ""))


if __name__ == "__main__":
    main()
