"""Time the aggregation rules of the MixTailor paper pool (and a few others) on CPU.

    python benchmarks/aggregators.py            # all three cases (about 10 minutes)
    python benchmarks/aggregators.py --quick    # the small case only, fewer repeats
    python benchmarks/aggregators.py --memory   # also peak extra RSS per rule (subprocesses)

For each case (n workers, d coordinates, f = the largest f for which every pool member is
valid, i.e. n >= 4f+3) every distinct spec of the paper pool (and a few other rules) is
timed on the same random float32 input (median and minimum milliseconds per call) and
reported as a ratio to ``mean`` on that input, timed just before it. "pool draw" is the
average ratio of one draw from the 64-entry pool (comed counts 16 times).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

from raymix.pool import paper_pool_specs
from raymix.rules import build_rule

CASES = [(12, 21_840), (12, 11_700_000), (100, 1_000_000)]
EXTRA = ["trimmed_mean", "multi_krum", "centered_clipping", "nnm", "bucketing(s=2, rule=comed)"]


def f_for(n: int) -> int:
    return max(0, (n - 3) // 4)


def threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def time_call(fn, repeats: int, budget_s: float) -> list[float]:
    """Up to ``repeats`` + 1 timed calls, stopping once ``budget_s`` is spent; the first
    call is a warm-up and dropped when there are at least 3 (a slow rule is called once)."""
    out: list[float] = []
    start = time.perf_counter()
    while len(out) < repeats + 1:
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - start > budget_s:
            break
    return out[1:] if len(out) >= 3 else out


def run_case(n: int, d: int, repeats: int, budget_s: float, specs: list[str]) -> dict:
    f = f_for(n)
    g = torch.Generator().manual_seed(n * 1_000_003 + d)
    G = torch.randn(n, d, generator=g)
    mean_fn = lambda: G.mean(0)  # noqa: E731
    mean_samples = time_call(mean_fn, max(repeats, 5), budget_s)
    times, mins, ratio, ratio_min = {}, {}, {}, {}
    for spec in specs:
        rule = build_rule(spec)
        t0 = time.perf_counter()
        # mean is timed again right before each rule: the ratio compares neighbours in
        # time, which matters on a machine shared with other jobs.
        local = time_call(mean_fn, 3, 0.5)
        samples = time_call(lambda: rule(G, f), repeats, budget_s)
        mean_samples += local
        times[spec], mins[spec] = statistics.median(samples), min(samples)
        ratio[spec] = times[spec] / statistics.median(local)
        ratio_min[spec] = mins[spec] / min(local)
        print(
            f"  n={n} d={d} f={f} {spec:42s} {times[spec]:10.2f} ms (min {mins[spec]:.2f}) "
            f"{ratio[spec]:7.1f}x / {ratio_min[spec]:7.1f}x  ({time.perf_counter() - t0:.1f} s)",
            flush=True,
        )
    pool = [s for s, _ in paper_pool_specs()]
    return {
        "n": n, "d": d, "f": f, "times": times, "mins": mins, "ratio": ratio, "ratio_min": ratio_min,
        "mean_ms": statistics.median(mean_samples), "mean_min": min(mean_samples),
        "pool_ms": sum(times[s] for s in pool) / len(pool),
        "pool_ratio": sum(ratio[s] for s in pool) / len(pool),
        "pool_ratio_min": sum(ratio_min[s] for s in pool) / len(pool),
    }


_MEM_CHILD = r"""
import resource, sys, torch
torch.set_num_threads(int(sys.argv[4]))
from raymix.rules import build_rule
n, d, spec = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
G = torch.randn(n, d)
rule = build_rule(spec)
G.mean(0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rule(G, max(0, (n - 3) // 4))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) / 1024.0)
"""


def peak_memory(n: int, d: int, spec: str) -> float:
    """Peak RSS growth (MiB) of one call in a fresh process, beyond the input."""
    out = subprocess.run(
        [sys.executable, "-c", _MEM_CHILD, str(n), str(d), spec, str(torch.get_num_threads())],
        capture_output=True, text=True, check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="only the small case, fewer repeats")
    ap.add_argument("--memory", action="store_true", help="also peak extra memory per rule class (n=12, d=11.7M)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the CPUs this process may use)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads or threads())
    pool = list(dict.fromkeys(s for s, _ in paper_pool_specs()))
    specs = ["mean"] + pool + EXTRA
    cases = CASES[:1] if args.quick else CASES
    results = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(pool)} distinct pool specs", flush=True)
    for n, d in cases:
        small = n * d < 1e6
        repeats = (5 if args.quick else 15) if small else 3
        budget = 1.0 if small else 2.0
        results.append(run_case(n, d, repeats, budget, specs))

    print()
    print("Cells: time / time of mean, from medians / from minima (median ms per call).")
    print("mean is re-timed just before each rule and each ratio uses those neighbouring timings.")
    print()
    print("| spec | " + " | ".join(f"n={r['n']}, d={r['d']:,}, f={r['f']}" for r in results) + " |")
    print("|---|" + "---|" * len(results))
    print("| mean | " + " | ".join(f"1x (median {r['mean_ms']:.3g} ms, min {r['mean_min']:.3g} ms)" for r in results) + " |")
    for spec in specs[1:]:
        print(f"| {spec} | " + " | ".join(
            f"{r['ratio'][spec]:.1f}x / {r['ratio_min'][spec]:.1f}x ({r['times'][spec]:.3g} ms)" for r in results) + " |")
    print("| **pool draw (average over the 64)** | " + " | ".join(
        f"**{r['pool_ratio']:.1f}x / {r['pool_ratio_min']:.1f}x** ({r['pool_ms']:.3g} ms)" for r in results) + " |")
    for cls in ("comed", "krum", "geomed", "bulyan"):
        members = [s for s, c in paper_pool_specs() if c == cls]
        print(f"| class {cls} (average over its 16) | " + " | ".join(
            f"{sum(r['ratio'][s] for s in members) / 16:.1f}x / {sum(r['ratio_min'][s] for s in members) / 16:.1f}x" for r in results) + " |")

    if args.memory:
        n, d = 12, 11_700_000
        print(f"\nPeak extra RSS of one call (MiB), n={n}, d={d:,} (input: {n * d * 4 / 2**20:.0f} MiB):")
        for spec in ["mean", "comed", "trimmed_mean", "krum", "krum(p=3)", "geomed", "geomed(p=3)", "bulyan", "bulyan(select=comed, agg=comed)", "bulyan(select=geomed, agg=geomed)"]:
            print(f"| {spec} | {peak_memory(n, d, spec):.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
