"""Time the aggregation rules of the MixTailor paper pool (and a few others) on CPU.

    python benchmarks/aggregators.py            # all three cases (about 10 minutes)
    python benchmarks/aggregators.py --quick    # the small case only, fewer repeats
    python benchmarks/aggregators.py --memory   # also peak extra RSS per rule (subprocesses)
    python benchmarks/aggregators.py --n1000    # n = 1,000, d = 21,840, f = 2 and f = 200 (slow)
    python benchmarks/aggregators.py --vs-byzfl # comed / trimmed mean / Krum / geomed against
                                                # ByzFL's, when ByzFL is importable (optional)
    python benchmarks/aggregators.py --lp-limit # the l^p distance matrix at n = 1,000 against
                                                # its arithmetic limit and torch.cdist

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
# Issue #11, rules that scale in n: one timed call per rule (two for fast ones), f = 2
# and f = 200 (every pool member is valid for both: n >= 4f+3).
CASES_N1000 = [(1000, 21_840, 2), (1000, 21_840, 200)]
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


def run_case(n: int, d: int, repeats: int, budget_s: float, specs: list[str], f: int | None = None) -> dict:
    f = f_for(n) if f is None else f
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
    if any(s not in times for s in pool):  # --specs: no pool average
        return {"n": n, "d": d, "f": f, "times": times, "ratio": ratio}
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


def _split_specs(text: str) -> list[str]:
    """Split "a, b(x=1, y=2)" at top-level commas."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
            continue
        depth += ch in "([" and 1 or (-1 if ch in ")]" else 0)
        cur += ch
    return [x for x in out + [cur] if x.strip()]


def vs_byzfl() -> int:
    """comed, trimmed mean, Krum and geomed against ByzFL's (``byzfl`` importable, never a
    dependency): same float32 input, median of up to 5 calls within 3 s, and each of ours as a
    multiple of ``mean`` on that input (issue #26's goals: comed and trimmed mean at least as
    fast as ByzFL at n = 30, d = 1M; <= 20x mean at n = 100, d = 1M). ByzFL's geomed runs its
    default T = 3 Weiszfeld steps (nu = 0.1); ours runs to tol = 1e-6 (up to 100 steps).
    Krum and geomed are left out at n = 100, d = 1M (ByzFL's distances take minutes there)."""
    try:
        import byzfl
    except ImportError:
        print("byzfl is not importable: install it somewhere and put it on PYTHONPATH (it is not a dependency)")
        return 1
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, byzfl {getattr(byzfl, '__version__', '?')}")
    print("| rule | n | d | f | raymix ms | ByzFL ms | ByzFL / raymix | raymix / mean |")
    print("|---|---|---|---|---|---|---|---|")
    for n, d in [(30, 100_000), (30, 1_000_000), (100, 100_000), (100, 1_000_000)]:
        f = (n - 3) // 4
        G = torch.randn(n, d, generator=torch.Generator().manual_seed(n + d))
        pairs = [
            ("comed", build_rule("comed"), byzfl.Median()),
            ("trimmed_mean", build_rule("trimmed_mean"), byzfl.TrMean(f=f)),
            ("krum", build_rule("krum"), byzfl.Krum(f=f)),
            ("geomed", build_rule("geomed"), byzfl.GeometricMedian()),
        ]
        if n * d > 50_000_000:
            pairs = pairs[:2]
        m = statistics.median(time_call(lambda: G.mean(0), 5, 3.0))
        for name, ours, theirs in pairs:
            a = statistics.median(time_call(lambda: ours(G, f), 5, 3.0))
            b = statistics.median(time_call(lambda: theirs(G), 5, 3.0))
            print(f"| {name} | {n} | {d:,} | {f} | {a:.1f} | {b:.1f} | {b / a:.1f}x | {a / m:.1f}x |", flush=True)
    return 0


def _chain_ns_per_term(p: int, rows: int = 512, cols: int = 1024, repeats: int = 40) -> float:
    """The arithmetic limit of one |x_j - x_i|^p term on this machine: the shortest torch
    chain for it (sub, abs, the powers' multiplies, a float32 sum) on a block that stays
    in L2, so that neither memory nor Python's per-op cost counts. Best of ``repeats``."""
    X = torch.randn(rows, cols, generator=torch.Generator().manual_seed(1))
    x = X[0].clone()
    D, T, s = torch.empty(rows, cols), torch.empty(rows, cols), torch.empty(rows)

    def chain():
        torch.sub(X, x, out=D)
        D.abs_()
        e = p  # D^p by squaring, as the kernel does: even part in place, odd part via T
        while e > 1 and e % 2 == 0:
            D.mul_(D)
            e //= 2
        if e > 1:
            torch.mul(D, D, out=T)
            e >>= 1
            while e:
                if e & 1:
                    D.mul_(T)
                e >>= 1
                if e:
                    T.mul_(T)
        torch.sum(D, 1, out=s)

    best = min(time_call(chain, repeats, 5.0))
    return best * 1e6 / (rows * cols)  # ms -> ns per term


def _fused_ns_per_term(p: int, rows: int = 128, cols: int = 1024, repeats: int = 40) -> float:
    """The same limit for the compiled loop (``_kernels._lp_block``): one block pair of the
    kernel's own shape, in L2, called ``repeats`` times; best of them. Includes the compile
    on the first call, which is not timed."""
    from raymix.rules._kernels import distances as KD

    gen = torch.Generator().manual_seed(1)
    A, B = torch.randn(rows, cols, generator=gen), torch.randn(rows, cols, generator=gen)
    fn = KD._lp_block(p)
    fn(A, B)
    best = min(time_call(lambda: fn(A, B), repeats, 5.0))
    return best * 1e6 / (rows * rows * cols)


def lp_limit(n: int = 1000, d: int = 21_840, ps=(1, 3, 16)) -> int:
    """Issue #11: the l^p distance matrix (n(n-1)/2 * d terms) for Krum with p != 2, timed
    whole (``_kernels.lp_pairwise``, and ``krum(p)`` around it) against two limits for that
    many terms: the torch chain's (:func:`_chain_ns_per_term`) and the compiled loop's
    (:func:`_fused_ns_per_term`, the arithmetic of the kernel lp_pairwise now runs at this
    size), and ``torch.cdist`` (timed on 300 rows and scaled by the terms, since at n = 1,000
    it takes a minute), all in this process. lp_pairwise is timed after one call that
    compiles its kernel (the compile is a one-off per p and process: reported apart)."""
    from raymix.rules import _kernels as K
    from raymix.rules._kernels import distances as KD

    G = torch.randn(n, d, generator=torch.Generator().manual_seed(0)) * 1e-3
    terms = n * (n - 1) / 2 * d
    sub = G[:300].contiguous()
    sub_terms = 300 * 299 / 2 * d
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, n={n}, d={d:,}: {terms:.3g} terms a matrix")
    print("| p | chain limit s | compiled limit s | lp_pairwise s (first call) | krum(p) s | lp_pairwise / compiled limit "
          "| lp_pairwise / chain limit | torch.cdist s (scaled) | cdist / compiled limit |")
    print("|---|---|---|---|---|---|---|---|---|")
    for p in ps:
        chain = _chain_ns_per_term(p) * terms * 1e-9
        fused = _fused_ns_per_term(p) * terms * 1e-9
        first = min(time_call(lambda: K.lp_pairwise(G, float(p)), 1, 0.0)) / 1e3
        ours = min(time_call(lambda: K.lp_pairwise(G, float(p)), 1, 0.0)) / 1e3
        krum = min(time_call(lambda: build_rule(f"krum(p={p})")(G, 2), 1, 0.0)) / 1e3
        cd = min(time_call(lambda: torch.cdist(sub, sub, p=float(p)), 1, 0.0)) / 1e3 * terms / sub_terms
        print(f"| {p} | {chain:.2f} | {fused:.2f} | {ours:.2f} ({first:.2f}) | {krum:.2f} | {ours / fused:.2f}x | {ours / chain:.2f}x "
              f"| {cd:.1f} | {cd / fused:.1f}x |", flush=True)
    if KD._fused_failed:
        print(f"the compiled kernel failed here ({KD._fused_failed[0]}): lp_pairwise ran the torch chain")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="only the small case, fewer repeats")
    ap.add_argument("--memory", action="store_true", help="also peak extra memory per rule class (n=12, d=11.7M)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the CPUs this process may use)")
    ap.add_argument("--n1000", action="store_true", help="only n = 1,000, d = 21,840 with f = 2 and f = 200 (slow)")
    ap.add_argument("--vs-byzfl", action="store_true", help="only the table against ByzFL's rules (needs byzfl importable)")
    ap.add_argument("--lp-limit", action="store_true", help="only the l^p distance matrix at n = 1,000 against its limit and torch.cdist")
    ap.add_argument("--specs", default=None, help="comma-separated specs to time instead of the pool (mean is always timed)")
    args = ap.parse_args(argv)
    if args.vs_byzfl:
        torch.set_num_threads(args.threads or threads())
        return vs_byzfl()
    torch.set_num_threads(args.threads or threads())
    if args.lp_limit:
        return lp_limit()
    pool = list(dict.fromkeys(s for s, _ in paper_pool_specs()))
    specs = ["mean"] + pool + EXTRA
    if args.specs:
        specs = ["mean"] + [x.strip() for x in _split_specs(args.specs)]
    cases = [(n, d, None) for n, d in (CASES[:1] if args.quick else CASES)]
    if args.n1000:
        cases = CASES_N1000
    results = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(pool)} distinct pool specs", flush=True)
    for n, d, f in cases:
        small = n * d < 1e6
        repeats = (5 if args.quick else 15) if small else (1 if n >= 1000 else 3)
        budget = 1.0 if small else 2.0
        results.append(run_case(n, d, repeats, budget, specs, f))
    if args.specs:
        return 0

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
