"""The pool-aware attack's fast inner loop (raymix/attacks/pool_values.py) against saved cases
of the attack as it was before the fast paths existed (commit baaffa3: every member run on the
materialised G(lambda)), and against that reference path, which stays in the code.

The saved cases (tests/data/pool_aware_cases.json, made by benchmarks/pool_aware_cases.py) are
real MNIST gradients of the paper's CNN (10 honest workers, 1,000 of its 21,840 coordinates,
at initialisation and after 400 steps), n = 12, f = 2, every search family and both
objectives, on the paper's pool, its no_krum composition, a weighted pool with members that
have no fast path (centered clipping), and a view of 7 honest rows (Bulyan then drops out).

Tolerance: the fast paths accumulate the Gram matrices and l^p sums in float64 where the rules
accumulate float32 products, and sum k + 1 rows where the rules sum k + f. Those differ by
~1e-7 relative per entry; through Weiszfeld's and Krum's geometry the members' inner products
moved by at most ~3e-6 of ||mu||^2 on the full 21,840 coordinates (measured). The objective
is compared to 2e-5 of ||mu||^2, and the chosen lambda must be the saved one or a tie at that
precision: a lambda whose saved value is within 2e-5 of ||mu||^2 of the saved optimum (where the
objective is flat, two lambdas 6e-10 apart in value, 2e-8 of ||mu||^2, order either way; seen
when the l^p Weiszfeld moved to C, raymix/rules/_native.py). A worse choice still fails.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from raymix.attacks import AdversaryView, build_attack
from raymix.attacks.optimal import crafted_direction, every, lambda_search
from raymix.attacks.pool_values import PoolValues
from raymix.pool import MixTailorPool
from raymix.seeding import torch_generator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from pool_aware_cases import aligned  # noqa: E402  (the saved cases' own comparison of lambdas)

DATA = Path(__file__).parent / "data"
SAVED = json.loads((DATA / "pool_aware_cases.json").read_text())
with np.load(DATA / "pool_aware_honest.npz", allow_pickle=False) as z:
    HONEST = {k: torch.from_numpy(z[k]) for k in z.files}


def view_of(case) -> AdversaryView:
    pool = MixTailorPool.from_spec(case["pool"], n=SAVED["n"], f=SAVED["f"])
    H = HONEST[case["honest"]][: case["rows"]]
    return AdversaryView(honest=H, n=SAVED["n"], f=SAVED["f"], step=0, pool=pool.public(), generator=torch_generator(0, "a", 0))


def case_id(c) -> str:
    pool = c["pool"].split("(")[0] if not c["pool"].startswith("mixtailor(") else c["pool"][len("mixtailor(composition="):-1]
    attack = c["attack"][len("pool_aware("):-1].replace("objective=", "").replace("search=", "").replace(", ", "-")
    return f'{c["honest"]}-k{c["rows"]}-{pool}-{attack}'


# The suite checks the cases below (every search family and objective, both sets of rows, the
# weighted pool with reference-path members, 7 visible rows); each full-pool case costs ~20 s on
# one thread. `python benchmarks/pool_aware_cases.py --check` compares all 44.
SUITE = {"trained-k10-mixtailor-expected-epsilon", "init-k10-mixtailor-worst-sign", "trained-k7-mixtailor-worst-alie"}
CASES = [c for c in SAVED["cases"] if c["pool"].startswith("pool(") or case_id(c) in SUITE]


@pytest.mark.slow  # the saved cases: 8-18 s each, ~70 s in all
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_the_fast_search_chooses_what_the_attack_chose_before(case, one_torch_thread):
    view = view_of(case)
    mm = float(view.honest.mean(0).double().square().sum())
    attack = build_attack(case["attack"])
    lam, value, table, bounds = attack.optimise(view)
    saved = dict((l, v) for l, v in case["table"])
    twin = aligned([*table, *bounds], saved)  # each lambda's saved twin, to its last bits (REL)
    assert twin is not None  # the same lambdas were tried (the same refine rounds)
    assert twin[lam] == case["lambda"] or saved[twin[lam]] - case["value"] <= 2e-5 * mm  # the same choice, or a tie
    assert value == pytest.approx(case["value"], rel=0, abs=2e-5 * mm)
    worst = max(abs(table[l] - saved[twin[l]]) for l in table)
    assert worst <= 2e-5 * mm, worst / mm
    # a lambda ruled out by a bound: the bound is at most its value, and above the chosen one
    assert all(b <= saved[twin[l]] + 2e-5 * mm and b > value for l, b in bounds.items())


# Costly members with and without a floor (geomed p != 2 and Bulyan aggregating with mean: convex;
# Bulyan aggregating with comed, centered clipping: not), cheap ones, one that ties across lambdas.
MIXED = ("pool(members=[krum, comed, mean, geomed(p=3), bulyan(select=comed, agg=comed), bulyan(select=geomed, agg=mean), "
         "centered_clipping, krum(p=1)], weights=[2, 3, 1, 1, 1, 1, 1, 2])")


@pytest.mark.parametrize("objective", ["expected", "worst"])
@pytest.mark.parametrize("search", ["epsilon", "sign", "alie"])
def test_bounding_lambdas_chooses_what_evaluating_every_lambda_chooses(objective, search, one_torch_thread):
    """The search skips a lambda's costly members once a bound shows it cannot be chosen; it
    must choose the lambda, with the value, that evaluating every member at every lambda
    chooses (ties to the smaller lambda included), and each skipped lambda's bound must be
    at most its value and above the chosen one. Random rows, a view with a NaN entry (no fast
    path, no floors), the paper pool on real gradients."""
    g = torch.Generator().manual_seed(11)
    views = []
    for seed in range(4):
        mu = torch.randn(200, generator=g)
        H = (mu + (1.0 + seed) * torch.randn(10, 200, generator=g)).float()
        if seed == 3:
            H[4, 7] = float("nan")
        pool = MixTailorPool.from_spec(MIXED, n=12, f=2)
        views.append(AdversaryView(honest=H, n=12, f=2, step=0, pool=pool.public(), generator=torch_generator(0, "a", 0)))
    views.append(view_of({"pool": "mixtailor", "honest": "trained", "rows": 10}))
    bounded = 0
    for v in views:
        attack = build_attack(f"pool_aware(objective={objective}, search={search}, grid=[0.001, 0.01, 0.1, 0.3, 1, 3, 10, 100], refine=2, refine_points=3)")
        got = attack.optimise(v)
        members = attack.members_for(v)
        probs = [p for _, p in members]
        pv = PoolValues(v.honest, *crafted_direction(v, search), v.f, [r for r, _ in members])
        values = {}

        def objective_at(lam):
            values[lam] = pv.values(lam)
            return attack.reduce_values(values[lam], probs)

        want = lambda_search(every(objective_at), attack.grid, attack.refine, attack.refine_points)
        assert (got.lam, got.value) == (want.lam, want.value)
        assert sorted([*got.table, *got.bounds]) == sorted(want.table)
        assert all(got.table[lam] == want.table[lam] for lam in got.table)
        assert all(b <= want.table[lam] and b > got.value for lam, b in got.bounds.items())
        assert attack.last_choice["worst"] * float(pv.mu64 @ pv.mu64) == pytest.approx(float(values[got.lam].max()), rel=1e-12, nan_ok=True)
        bounded += len(got.bounds)
    assert bounded > 0  # the bound did skip lambdas on these views


def test_a_floor_is_below_the_member_s_value(one_torch_thread):
    """PoolValues.floor: the least row's inner product, less a margin, for the rules whose
    output is a convex combination of the rows; at lambdas where the crafted rows sit inside
    the honest cloud, at its edge and far outside it."""
    members = [r for r, _ in build_attack("pool_aware").members_for(view_of({"pool": "mixtailor", "honest": "trained", "rows": 10}))]
    H = HONEST["trained"][:10]
    for search in ("epsilon", "alie"):
        a, v = crafted_direction(view_of({"pool": "mixtailor", "honest": "trained", "rows": 10}), search)
        pv = PoolValues(H, a, v, 2, members)
        convex = 0
        for lam in (0.001, 0.5, 1.5, 1000.0):
            pt = pv.point(lam)
            for i, rule in enumerate(members):
                fl = pv.floor(i, pt)
                if fl > -float("inf"):
                    convex += 1
                    assert fl <= pv.value(i, pt), (rule.spec, lam)
        assert convex >= 4 * 30  # krum, geomed and Bulyan's mean, krum and geomed aggregations


def test_every_member_s_fast_value_equals_the_rule_run_on_g(one_torch_thread):
    """Per member and lambda, the fast value against the rule on the materialised G(lambda)."""
    for hname, search in (("trained", "epsilon"), ("init", "sign"), ("trained", "alie")):
        case = {"pool": "mixtailor", "honest": hname, "rows": 10}
        view = view_of(case)
        members = [r for r, _ in build_attack("pool_aware").members_for(view)]
        a, v = crafted_direction(view, search)
        fast = PoolValues(view.honest, a, v, view.f, members)
        ref = PoolValues(view.honest, a, v, view.f, members, fast=False)
        assert not ref.fast and fast.fast
        mm = float(fast.mu64 @ fast.mu64)
        for lam in (0.003, 0.6, 40.0):
            got, want = fast.values(lam), ref.values(lam)
            bad = [(m.spec, g / mm, w / mm) for m, g, w in zip(members, got, want) if abs(g - w) > 2e-5 * mm]
            assert not bad, (search, lam, bad)


def test_a_view_with_a_non_finite_row_takes_the_reference_path():
    H = HONEST["init"][:10].clone()
    H[3, 5] = float("nan")
    members = [r for r, _ in build_attack("pool_aware").members_for(view_of({"pool": "mixtailor", "honest": "init", "rows": 10}))]
    pv = PoolValues(H, torch.zeros(H.shape[1]), -H.mean(0), 2, members)
    assert not pv.fast


def test_the_attack_reports_its_choice(one_torch_thread):
    """last_choice: the chosen lambda, the expected and worst member inner products relative to
    ||mu||^2 and the probability fooled, consistent with the objective it minimised."""
    case = next(c for c in SAVED["cases"] if c["pool"] == "mixtailor" and c["rows"] == 10 and c["honest"] == "trained")
    view = view_of(case)
    mm = float(view.honest.mean(0).double().square().sum())
    for objective in ("expected", "worst"):
        a = build_attack(f"pool_aware(objective={objective}, grid=[0.1, 1, 10], refine=0)")
        a(view)
        ch = a.last_choice
        assert set(ch) == {"lambda", "expected", "worst", "fooled"} and ch["lambda"] in (0.1, 1.0, 10.0)
        assert ch[objective] == pytest.approx(a.last_value / mm, rel=1e-12)
        assert ch["worst"] >= ch["expected"] and 0.0 <= ch["fooled"] <= 1.0
        vals = a.pool_values(view, ch["lambda"], fast=False)
        probs = {r.spec: p for r, p in a.members_for(view)}
        fooled = sum(probs[s] for s, x in vals.items() if x < 0)
        assert ch["fooled"] == pytest.approx(fooled, abs=1e-12)


def test_records_carry_the_attacker_s_choice_and_it_matches_the_server_s_diagnostic(one_torch_thread):
    """A run under a searching attack writes record["attack"] at each evaluation (and
    progress.csv has its columns); with every honest row visible, the attacker's expected inner
    product and fooled share at its lambda are the server's own diagnostics of that step."""
    from raymix.config import ExperimentConfig
    from raymix.records import ATTACK_KEYS, columns
    from raymix.step import run_local

    c = ExperimentConfig(dataset="synthetic", model="mlp", n=12, f=2, aggregator="mixtailor", attack="pool_aware(grid=[0.1, 1, 10], refine=0)",
                         steps=4, eval_every=2, seed=1, batch_size=16, diagnostics=True)
    local = run_local(c).records
    assert [set(r["attack"]) for r in local] == [set(ATTACK_KEYS)] * 2
    for r in local:
        assert r["attack"]["lambda"] in (0.1, 1.0, 10.0) and r["attack"]["lambda_geomean"] > 0
        assert r["attack"]["expected"] == pytest.approx(r["diag_expected_inner_product"], abs=1e-5)
        assert r["attack"]["fooled"] == pytest.approx(r["diag_fooled_fraction"], abs=1e-12)
    assert c.records_attack_choice and {f"attack.{k}" for k in ATTACK_KEYS} <= set(columns(c.build_pool(), True, True))
    plain = c.replace(attack="ipm(epsilon=0.1)")
    assert not plain.records_attack_choice and "attack" not in run_local(plain).records[0]


def test_comed_and_trimmed_mean_fast_paths_are_the_rules_bit_for_bit():
    """G's sorted columns built from H's by max/min, then the rules' own float32 arithmetic:
    the same bits as the rules on G (ties and both signs of lambda included)."""
    from raymix.rules import build_rule

    rules = [build_rule(s) for s in ("comed", "trimmed_mean", "bulyan(select=comed, agg=comed)")]
    H = HONEST["trained"][:10].clone()
    H[:, :50] = H[0, :50]  # ties across every row
    for search in ("epsilon", "alie"):
        view = AdversaryView(honest=H, n=12, f=2, step=0, pool=None, generator=torch_generator(0, "a", 0))
        a, v = crafted_direction(view, search)
        fast, ref = PoolValues(H, a, v, 2, rules), PoolValues(H, a, v, 2, rules, fast=False)
        for lam in (0.0, 1e-3, 0.5, 3.0, -2.0, 1e3):
            assert fast.values(lam).tolist() == ref.values(lam).tolist(), (search, lam)
