"""The searching attacks' time per step beside one training step, in one process on one thread.

The setting of the pool-aware experiments: MNIST, the paper's CNN (d = 21,840), n = 12,
f = 2, the 64-rule pool (49 distinct members). The honest rows are real: 10 workers'
gradients at the initial weights and after ``--trained`` steps of omniscient training. Each
attack crafts its rows from them ``--repeat`` times (median reported). Timed on the same rows:
the attack as it is (raymix/attacks/pool_values.py with the C l^p Weiszfeld of
raymix/rules/_native.py, lambdas ruled out by a bound skipping their costly members); the same
search evaluating every member at every lambda (the attack before the bound); the attack with
torch ops only (``RAYMIX_COMPILE=0``: before the C kernel); and the reference (every member run
on the materialised G(lambda), the attack before the fast paths). The training step is ``raymix.step.LocalSimulation`` under ``ipm(epsilon=0.1)`` (the best single
process: every honest gradient in one vmap pass), timed over ``--train-steps`` steps.

    python benchmarks/attack_cost.py                  # ~6 min on 2 cores (the references are slow)
    python benchmarks/attack_cost.py --no-reference   # the fast paths only
    python benchmarks/attack_cost.py --no-reference --no-torch-ops   # ~2 min: the C paths only
    python benchmarks/attack_cost.py --no-reference --no-torch-ops --composition no_geomed   # another pool
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import torch

from raymix.attacks import AdversaryView, build_attack
from raymix.attacks.optimal import crafted_direction, every, lambda_search
from raymix.attacks.pool_values import PoolValues
from raymix.config import ExperimentConfig
from raymix.pool import COMPOSITIONS
from raymix.seeding import torch_generator
from raymix.step import LocalSimulation

ATTACKS = (
    "ipm(epsilon=0.1)",
    "pool_aware(grid=[0.1, 1, 10], refine=0)",
    "pool_aware(objective=worst, grid=[0.1, 1, 10], refine=0)",
    "pool_aware",
    "pool_aware(objective=worst)",
)


def setting(**kw) -> ExperimentConfig:
    return ExperimentConfig(dataset="mnist", n=12, f=2, batch_size=50, lr=0.001, momentum=0.9, weight_decay=1e-4, **kw)


def honest_rows(trained: int) -> dict[str, torch.Tensor]:
    """10 honest gradients at the initial weights and after ``trained`` omniscient steps."""
    sim = LocalSimulation(setting(aggregator="omniscient", attack="none", steps=max(trained, 1), eval_every=max(trained, 1)))
    out = {"init": sim.workers.compute(sim.server.weights(), 10**6)[0]}
    if trained:
        sim.advance()
        out[f"after {trained} steps"] = sim.workers.compute(sim.server.weights(), 10**6 + 1)[0]
    return out


def train_step_seconds(steps: int) -> float:
    """A training step's busy time from the run's own record: gradients, attack, draw and
    aggregation, update, averaged over ``steps`` steps (the one evaluation left out)."""
    sim = LocalSimulation(setting(aggregator="mixtailor", attack="ipm(epsilon=0.1)", steps=steps, eval_every=steps, eval_test_limit=500))
    rec = sim.advance()
    return sum(rec[k] for k in ("time_gradients", "time_attack", "time_aggregation", "time_update"))


def every_lambda_seconds(spec: str, view: AdversaryView, fast: bool) -> float:
    """The same search with every member evaluated at every lambda (no bound): by the fast
    paths (the attack before the bound) or, ``fast=False``, by each member run on G(lambda)
    (the attack before the fast paths)."""
    a = build_attack(spec)
    members = a.members_for(view)
    probs = [p for _, p in members]
    t = time.perf_counter()
    pv = PoolValues(view.honest, *crafted_direction(view, a.search), view.f, [r for r, _ in members], fast=fast)
    lambda_search(every(lambda lam: a.reduce_values(pv.values(lam), probs)), a.grid, a.refine, a.refine_points)
    return time.perf_counter() - t


def timed(spec: str, view: AdversaryView, repeat: int, compile_on: bool) -> float:
    """Median seconds of ``repeat`` calls of a fresh attack, RAYMIX_COMPILE set for them."""
    before = os.environ.get("RAYMIX_COMPILE")
    os.environ["RAYMIX_COMPILE"] = "1" if compile_on else "0"
    try:
        a, times = build_attack(spec), []
        for _ in range(repeat):
            t = time.perf_counter()
            a(view)
            times.append(time.perf_counter() - t)
        return statistics.median(times)
    finally:
        if before is None:
            del os.environ["RAYMIX_COMPILE"]
        else:
            os.environ["RAYMIX_COMPILE"] = before


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trained", type=int, default=400, help="omniscient steps before the second set of rows (0: init only)")
    ap.add_argument("--train-steps", type=int, default=40, help="training steps timed")
    ap.add_argument("--repeat", type=int, default=3, help="timed calls per attack and rows (median)")
    ap.add_argument("--no-reference", action="store_true", help="skip the reference path (slow: ~10-40 s per default search)")
    ap.add_argument("--no-torch-ops", action="store_true", help="skip the fast path with torch ops only (~3x the C path)")
    ap.add_argument("--composition", default="full", choices=COMPOSITIONS,
                    help="the pool the attacker knows: the paper's 64 rules (full) or a leave-one-class-out pool")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if not os.environ.get("RAYMIX_DATA_DIR"):
        print("attack_cost: set RAYMIX_DATA_DIR to a directory holding MNIST/raw", file=sys.stderr)
        return 2
    train = train_step_seconds(args.train_steps)
    print(f"training step (LocalSimulation, mixtailor, ipm(epsilon=0.1), 1 thread): {train * 1e3:.1f} ms")
    aggregator = f"mixtailor(composition={args.composition})"
    pool = setting(aggregator=aggregator, attack="none").build_pool().public()
    print(f"pool: {aggregator}, {len(pool.members)} rules")
    print("| rows | attack | fast, C (ms) | x training step | every lambda, C (ms) | fast, torch ops (ms) | reference (ms) | bound's gain | C vs torch ops | C vs reference |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, H in honest_rows(args.trained).items():
        view = AdversaryView(honest=H, n=12, f=2, step=0, pool=pool, generator=torch_generator(0, "adversary", 0))
        for spec in ATTACKS:
            fast = timed(spec, view, args.repeat, True)
            searching = spec.startswith("pool_aware")
            every_c = statistics.median(every_lambda_seconds(spec, view, True) for _ in range(args.repeat)) if searching else math.nan
            torch_ops = timed(spec, view, args.repeat, False) if searching and not args.no_torch_ops else math.nan
            ref = math.nan if args.no_reference or not searching else every_lambda_seconds(spec, view, False)
            cell = lambda x: "" if math.isnan(x) else f"{x * 1e3:.0f}"  # noqa: E731
            ratio = lambda x: "" if math.isnan(x) else f"{x / fast:.1f}x"  # noqa: E731
            print(f"| {name} | `{spec}` | {fast * 1e3:.1f} | {fast / train:.2f} | {cell(every_c)} | {cell(torch_ops)} | {cell(ref)} | {ratio(every_c)} | {ratio(torch_ops)} | {ratio(ref)} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
