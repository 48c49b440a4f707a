"""Saved cases of the pool-aware attack's search: made with the reference path, checked with the fast one.

``--make``: 10 honest MNIST gradients of the paper's CNN at initialisation and after 400
omniscient steps (seed 0), 1,000 of the 21,840 coordinates (a fixed random choice), saved to
tests/data/pool_aware_honest.npz; then, for four pools (the paper's, no_krum, a weighted pool
with members that have no fast path, the paper's seen through 7 honest rows), every search
family and both objectives, the default search run with every member on the materialised
G(lambda) (``PoolValues(fast=False)``, the attack as it was before the fast paths), written to
tests/data/pool_aware_cases.json. The saved file was made at commit baaffa3, before the fast
paths existed (~10 min on one thread).

``--check``: the attack as it is now on every saved case: the chosen lambda (the saved one, or a
tie: its saved value within 2e-5 of ||mu||^2 of the saved optimum), the objective and every
evaluated value (to 2e-5 of ||mu||^2; tests/test_pool_values.py says why).
The test suite runs a subset; this runs all of them (~15 min on one thread).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from raymix.attacks import AdversaryView, build_attack
from raymix.attacks.optimal import crafted_direction, every, lambda_search
from raymix.attacks.pool_values import PoolValues
from raymix.pool import MixTailorPool
from raymix.seeding import torch_generator

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
POOLS = (
    ("mixtailor", 10),
    ("mixtailor(composition=no_krum)", 10),
    ("pool(members=[comed, krum(p=3), geomed(p=5), centered_clipping, bulyan(select=comed, agg=mean)], weights=[1, 2, 1, 1, 1])", 10),
    ("mixtailor", 7),
)



# The refine rounds' lambdas come from np.logspace, whose vectorised power rounds the last bit
# otherwise on an AVX-512 machine than on the AVX2 one the cases were saved on (seen:
# 477.0582696143927 against 477.05826961439277). A tried lambda is its saved twin when the two
# agree to REL, far below the spacing of the lambdas one search tries (1e-3 relative at least).
REL = 1e-12


def aligned(tried, saved) -> "dict | None":
    """Each tried lambda's saved twin (the same to REL, relative), or None when the two sets of
    lambdas differ (another refine round was tried)."""
    tried, saved = sorted(tried), sorted(saved)
    if len(tried) != len(saved) or any(abs(t - s) > REL * max(abs(t), abs(s)) for t, s in zip(tried, saved)):
        return None
    return dict(zip(tried, saved))

def make_rows() -> dict[str, torch.Tensor]:
    from raymix.config import ExperimentConfig
    from raymix.step import LocalSimulation

    c = ExperimentConfig(dataset="mnist", n=12, f=2, aggregator="omniscient", attack="none", steps=400, eval_every=400, seed=0)
    sim = LocalSimulation(c)
    H0 = sim.workers.compute(sim.server.weights(), 0)[0]
    sim.advance()
    H1 = sim.workers.compute(sim.server.weights(), 401)[0]
    cols = torch.randperm(H0.shape[1], generator=torch.Generator().manual_seed(7))[:1000]
    return {"init": H0[:, cols].contiguous(), "trained": H1[:, cols].contiguous()}


def view_of(H: torch.Tensor, pool_spec: str, rows: int) -> AdversaryView:
    pool = MixTailorPool.from_spec(pool_spec, n=12, f=2)
    return AdversaryView(honest=H[:rows], n=12, f=2, step=0, pool=pool.public(), generator=torch_generator(0, "a", 0))


def reference_search(spec: str, view: AdversaryView):
    a = build_attack(spec)
    members = a.members_for(view)
    probs = [p for _, p in members]
    ref = PoolValues(view.honest, *crafted_direction(view, a.search), view.f, [r for r, _ in members], fast=False)
    return lambda_search(every(lambda lam: a.reduce_values(ref.values(lam), probs)), a.grid, a.refine, a.refine_points)[:3]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--make", action="store_true", help="write new saved cases with the reference path (needs RAYMIX_DATA_DIR)")
    ap.add_argument("--check", action="store_true", help="compare the attack as it is now with every saved case")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.make:
        rows = make_rows()
        np.savez_compressed(DATA / "pool_aware_honest.npz", **{k: v.numpy() for k, v in rows.items()})
        cases = []
        for hname, H in rows.items():
            for pool_spec, k in POOLS:
                for search in ("epsilon", "sign", "alie"):
                    for objective in ("expected", "worst"):
                        if k == 7 and search == "sign":
                            continue
                        spec = f"pool_aware(objective={objective}, search={search})"
                        t = time.perf_counter()
                        lam, val, table = reference_search(spec, view_of(H, pool_spec, k))
                        cases.append({"honest": hname, "rows": k, "pool": pool_spec, "attack": spec, "lambda": lam, "value": val,
                                      "table": sorted(table.items()), "seconds": round(time.perf_counter() - t, 3)})
                        print(hname, k, pool_spec[:30], spec, lam, val, flush=True)
        (DATA / "pool_aware_cases.json").write_text(json.dumps({"n": 12, "f": 2, "d": 1000, "cases": cases}, indent=1))
    if args.check:
        saved = json.loads((DATA / "pool_aware_cases.json").read_text())
        with np.load(DATA / "pool_aware_honest.npz", allow_pickle=False) as z:
            rows = {k: torch.from_numpy(z[k]) for k in z.files}
        bad = 0
        for c in saved["cases"]:
            view = view_of(rows[c["honest"]], c["pool"], c["rows"])
            mm = float(view.honest.mean(0).double().square().sum())
            t = time.perf_counter()
            lam, val, table, bounds = build_attack(c["attack"]).optimise(view)
            dt = time.perf_counter() - t
            ref = dict(c["table"])
            twin = aligned([*table, *bounds], ref) or {}
            worst = max((abs(table[l] - ref[twin[l]]) for l in table if l in twin), default=float("inf")) / mm
            same = lam in twin and (twin[lam] == c["lambda"] or ref[twin[lam]] - c["value"] <= 2e-5 * mm)  # or a tie
            # a bounded lambda: its bound at most its saved value, above the chosen value
            sound = all(l in twin and b <= ref[twin[l]] + 2e-5 * mm and b > val for l, b in bounds.items())
            ok = bool(twin) and same and worst <= 2e-5 and sound
            bad += not ok
            print(f"{'ok ' if ok else 'BAD'} {c['honest']:7s} k={c['rows']:2d} {c['pool'][:30]:30s} {c['attack']:45s} "
                  f"lambda {lam:.6g} (saved {c['lambda']:.6g}) max |diff|/||mu||^2 {worst:.1e} bounded {len(bounds)}/{len(ref)}  {dt:.1f}s "
                  f"(saved at baaffa3: {c.get('seconds_at_baaffa3', c.get('seconds'))}s)", flush=True)
        print(f"{len(saved['cases']) - bad} of {len(saved['cases'])} cases agree")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
