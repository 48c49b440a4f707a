"""Min-Max / Min-Sum and mimic (attacks) and Divide-and-Conquer (a rule): each against a loop
written from its paper's pseudocode, their preconditions, pickling, specs, the listings, and
what they do (the crafted row meets its constraint with a maximal gamma; DnC removes planted
outliers and draws only from the generator it is given). Small inputs: runs in seconds."""
import math
import pickle
import re

import numpy as np
import pytest
import torch

from raymix.attacks import AdversaryView, Mimic, MinMax, MinSum, build_attack
from raymix.rules import DnC, build_rule, dnc
from raymix.rules.dnc import dnc_kept, dnc_removed_count
from raymix.spec import SpecError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N, F = 12, 2


def honest(seed: int, k: int = 10, d: int = 40, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(d, generator=g, dtype=torch.float64)
    return (mu + 2.0 * torch.randn(k, d, generator=g, dtype=torch.float64)).to(dtype)


def view(H: torch.Tensor, n: int = N, f: int = F, seed: int = 0) -> AdversaryView:
    return AdversaryView(H, n, f, 0, None, torch.Generator().manual_seed(seed))


def sq(a: np.ndarray, b: np.ndarray) -> float:
    return float(sum((x - y) ** 2 for x, y in zip(a.tolist(), b.tolist())))


# ----------------------------------------------------------------------------------------
# References: loops written from the papers, numpy float64, nothing shared with raymix
# ----------------------------------------------------------------------------------------
def ref_mean(X: np.ndarray) -> np.ndarray:
    total = np.zeros(X.shape[1])
    for row in X:
        total = total + row
    return total / X.shape[0]


def ref_agr_agnostic(H: torch.Tensor, kind: str, direction: str = "std", gamma_init: float = 10.0,
                     tau: float = 1e-5, bound: str = "max") -> tuple[float, np.ndarray]:
    """Shejwalkar & Houmansadr (NDSS 2021), Algorithm 1 and their released code:
    p from the direction, then lamda = gamma_init, lamda_fail = gamma_init, lamda_succ = 0;
    while |lamda_succ - lamda| > tau: test mu + lamda * p, move by lamda_fail / 2, halve."""
    X = H.double().numpy()
    k = X.shape[0]
    mu = ref_mean(X)
    if direction == "unit":
        p = -mu / math.sqrt(float(mu @ mu))
    elif direction == "sign":
        p = -np.sign(mu)
    else:
        var = np.zeros_like(mu)
        for row in X:
            var = var + (row - mu) ** 2
        p = -np.sqrt(var / (k - 1))
    if kind == "min_max":
        limit = max(sq(X[i], X[j]) for i in range(k) for j in range(k))

        def ok(g):
            return max(sq(mu + g * p, X[i]) for i in range(k)) <= limit
    else:
        sums = [sum(sq(X[i], X[j]) for j in range(k)) for i in range(k)]
        limit = max(sums) if bound == "max" else min(sums)

        def ok(g):
            return sum(sq(mu + g * p, X[i]) for i in range(k)) <= limit

    lam, lam_fail, lam_succ = gamma_init, gamma_init, 0.0
    while abs(lam_succ - lam) > tau:
        if ok(lam):
            lam_succ = lam
            lam = lam + lam_fail / 2
        else:
            lam = lam - lam_fail / 2
        lam_fail = lam_fail / 2
    return lam_succ, mu + lam_succ * p


def ref_mimic_target(H: torch.Tensor) -> int:
    """Karimireddy, He & Jaggi (ICLR 2022): the worker most extreme along the top principal
    direction z of the centred honest gradients (z by numpy's SVD), |<h_i - mu, z>|."""
    X = H.double().numpy()
    mu = ref_mean(X)
    _, _, Vt = np.linalg.svd(X - mu, full_matrices=False)
    z = Vt[0]
    proj = [abs(float((X[i] - mu) @ z)) for i in range(X.shape[0])]
    return max(range(len(proj)), key=lambda i: (proj[i], -i))


def ref_dnc(G: torch.Tensor, f: int, iters: int, sub_dim: int, c: float, seed: int) -> tuple[list[int], np.ndarray]:
    """Shejwalkar & Houmansadr (NDSS 2021), Algorithm 3: per iteration, b coordinates without
    replacement (torch.randperm from the same seed, the only thing shared), centred
    sub-matrix, top right singular vector by numpy's SVD, scores <x_i - mu, v>^2, keep the
    n - c*f lowest; intersect; average the kept rows."""
    X = G.double().numpy()
    n, d = X.shape
    g = torch.Generator().manual_seed(seed)
    good = set(range(n))
    removed = int(round(c * f))  # the test values make c*f an integer
    for _ in range(iters):
        r = torch.randperm(d, generator=g)[:sub_dim].numpy() if sub_dim < d else np.arange(d)
        S = X[:, r]
        mu = ref_mean(S)
        _, _, Vt = np.linalg.svd(S - mu, full_matrices=False)
        v = Vt[0]
        s = [float((S[i] - mu) @ v) ** 2 for i in range(n)]
        kept = sorted(range(n), key=lambda i: (s[i], i))[: n - removed]
        good &= set(kept)
    rows = sorted(good)
    return rows, ref_mean(X[rows])


# ----------------------------------------------------------------------------------------
# Min-Max and Min-Sum
# ----------------------------------------------------------------------------------------
# gamma is compared for equality: both searches test the same dyadic gammas in the same
# order, so they agree exactly unless some tested gamma lies within rounding (~1e-15
# relative) of the boundary, which random inputs do not produce. The rows are mu + gamma p
# summed in another order: float64 rounding, 1e-12.
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("direction", ["unit", "sign", "std"])
@pytest.mark.parametrize("kind", ["min_max", "min_sum"])
def test_min_max_and_min_sum_match_the_papers_search(seed, direction, kind):
    H = honest(seed, k=7 + seed, d=30 + 5 * seed)
    a = build_attack(f"{kind}(direction={direction})")
    out = a(view(H))
    gamma, row = ref_agr_agnostic(H, kind, direction)
    assert a.last_gamma == gamma and gamma > 0
    assert out.shape == (F, H.shape[1]) and torch.equal(out[0], out[1])
    np.testing.assert_allclose(out[0].numpy(), row, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spec, args", [
    ("min_sum(bound=min)", dict(kind="min_sum", bound="min")),
    ("min_max(gamma_init=1, tau=0.001)", dict(kind="min_max", gamma_init=1.0, tau=1e-3)),  # gamma* beyond 2: the cap
    ("min_sum(direction=unit, gamma_init=50, tau=1e-7)", dict(kind="min_sum", direction="unit", gamma_init=50.0, tau=1e-7)),
])
def test_min_max_and_min_sum_arguments_match_the_reference(spec, args):
    H = honest(5)
    a = build_attack(spec)
    out = a(view(H))
    gamma, row = ref_agr_agnostic(H, **args)
    assert a.last_gamma == gamma
    np.testing.assert_allclose(out[0].numpy(), row, rtol=1e-12, atol=1e-12)


def test_float32_rows_are_the_float64_search_rounded():
    H = honest(3, dtype=torch.float32)
    out = build_attack("min_max")(view(H))
    _, row = ref_agr_agnostic(H, "min_max")
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out[0].numpy(), row, rtol=1e-6, atol=1e-6)  # one float32 rounding


@pytest.mark.parametrize("kind", ["min_max", "min_sum"])
@pytest.mark.parametrize("direction", ["unit", "sign", "std"])
def test_the_crafted_row_meets_its_constraint_and_gamma_is_maximal_within_tau(kind, direction):
    H = honest(11, k=9, d=60)
    X = H.numpy()
    a = build_attack(f"{kind}(direction={direction})")
    gamma, row = a.choose(view(H))
    row = row.numpy()
    mu, p = ref_mean(X), (row - ref_mean(X)) / gamma
    k = X.shape[0]
    if kind == "min_max":
        limit = max(sq(X[i], X[j]) for i in range(k) for j in range(k))
        value = lambda g: max(sq(mu + g * p, X[i]) for i in range(k))  # noqa: E731
    else:
        limit = max(sum(sq(X[i], X[j]) for j in range(k)) for i in range(k))
        value = lambda g: sum(sq(mu + g * p, X[i]) for i in range(k))  # noqa: E731
    assert gamma < 2 * a.gamma_init - 2 * a.tau  # not at the search's cap
    assert value(gamma) <= limit * (1 + 1e-12)
    assert value(gamma + 2 * a.tau) > limit  # the bisection's bracket: [gamma, gamma + 2 tau]
    if kind == "min_sum":  # sum_i (h_i - mu) = 0: the boundary in closed form
        base = sum(sq(X[i], mu) for i in range(k))
        exact = math.sqrt((limit - base) / (k * float(p @ p)))
        assert exact - 2 * a.tau <= gamma <= exact * (1 + 1e-12)


def test_min_max_and_min_sum_use_no_randomness_and_partial_knowledge():
    H = honest(4)
    for spec in ("min_max", "min_sum(direction=sign)", "mimic"):
        a = build_attack(spec)
        rows = [a(view(H, seed=s)) for s in (1, 2)]
        assert torch.equal(rows[0], rows[1]), spec
    part = build_attack("min_max(direction=unit)")
    out = part(view(H[:3]))  # the adversary sees 3 of the 10 honest rows: it searches on those
    gamma, row = ref_agr_agnostic(H[:3], "min_max", "unit")
    assert part.last_gamma == gamma
    np.testing.assert_allclose(out[0].numpy(), row, rtol=1e-12, atol=1e-12)


def test_a_zero_direction_leaves_the_mean():
    H = torch.ones(4, 6, dtype=torch.float64)  # equal rows: sigma = 0
    out = build_attack("min_max")(view(H))
    assert torch.equal(out, torch.ones(F, 6, dtype=torch.float64))
    H = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)  # mu = 0: p = 0 for unit and sign
    for spec in ("min_max(direction=unit)", "min_sum(direction=sign)"):
        assert torch.equal(build_attack(spec)(view(H)), torch.zeros(F, 2, dtype=torch.float64)), spec


# ----------------------------------------------------------------------------------------
# Mimic
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_mimic_copies_the_worker_the_reference_picks(seed):
    H = honest(20 + seed, k=5 + seed, d=25)
    a = build_attack("mimic")
    out = a(view(H))
    i = ref_mimic_target(H)
    assert a.last_target == i
    assert torch.equal(out, H[i].expand(F, -1))  # an exact copy


def test_mimic_picks_the_most_heterogeneous_worker_and_a_fixed_target():
    g = torch.Generator().manual_seed(0)
    d = 50
    u = torch.zeros(d, dtype=torch.float64)
    u[:10] = 1.0  # the direction of heterogeneity
    shift = torch.tensor([0.0, 1.0, -6.0, 2.0, 1.5, -0.5, 3.0], dtype=torch.float64)  # mean 1/7: worker 2 is farthest
    H = 0.05 * torch.randn(7, d, generator=g, dtype=torch.float64) + shift[:, None] * u
    a = Mimic()
    a(view(H))
    assert a.last_target == 2
    fixed = build_attack("mimic(target=4)")
    assert torch.equal(fixed(view(H)), H[4].expand(F, -1)) and fixed.last_target == 4
    assert torch.equal(build_attack("mimic")(view(H[:1])), H[:1].expand(F, -1))  # one row: that row


# ----------------------------------------------------------------------------------------
# DnC
# ----------------------------------------------------------------------------------------
# Scores from the eigenproblem of the (n, n) centred Gram matrix against numpy's SVD of the
# (n, b) matrix: 1e-12 relative apart, far below the gaps between random scores, so the
# kept sets are equal; the means then differ by summation order only (1e-12).
@pytest.mark.parametrize("n, f, d, iters, sub_dim, c", [
    (12, 2, 30, 1, 10000, 1.0),   # b capped at d: every coordinate, no draw
    (12, 2, 30, 1, 8, 1.0),
    (15, 3, 40, 3, 10, 1.0),
    (10, 2, 25, 2, 12, 1.5),
    (9, 2, 20, 1, 5, 0.5),
    (7, 0, 10, 2, 4, 1.0),        # f = 0: nothing removed
])
@pytest.mark.parametrize("seed", [0, 1])
def test_dnc_matches_the_papers_algorithm(n, f, d, iters, sub_dim, c, seed):
    g = torch.Generator().manual_seed(100 + seed)
    G = torch.randn(n, d, generator=g, dtype=torch.float64) + torch.linspace(0, 3, n, dtype=torch.float64)[:, None] * torch.randn(d, generator=g, dtype=torch.float64)
    rows, mean = ref_dnc(G, f, iters, sub_dim, c, seed=7)
    rule = build_rule(f"dnc(iters={iters}, sub_dim={sub_dim}, c={c})")
    assert dnc_kept(G, f, iters, sub_dim, c, torch.Generator().manual_seed(7)).tolist() == rows
    out = rule(G, f, generator=torch.Generator().manual_seed(7))
    np.testing.assert_allclose(out.numpy(), mean, rtol=1e-12, atol=1e-12)
    assert torch.equal(out, dnc(G, f, iters, sub_dim, c, generator=torch.Generator().manual_seed(7)))


def test_dnc_is_deterministic_given_its_generator_and_draws_only_from_it():
    G = torch.randn(12, 200, generator=torch.Generator().manual_seed(1))
    rule = DnC(sub_dim=20, iters=2)
    before = torch.random.get_rng_state()
    a = rule(G, 2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.random.get_rng_state(), before)  # the global stream is untouched
    assert torch.equal(a, rule(G, 2, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(rule(G, 2), rule(G, 2, generator=torch.Generator().manual_seed(0)))  # none: DEFAULT_SEED 0
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    rule(G, 2, generator=g)
    assert not torch.equal(g.get_state(), state)  # it drew its coordinates from it


def test_dnc_removes_outliers_along_one_direction():
    g = torch.Generator().manual_seed(2)
    n, f, d = 12, 2, 300
    honest_rows = torch.randn(n - f, d, generator=g, dtype=torch.float64)
    outlier = honest_rows.mean(0) + 3.0 * torch.ones(d, dtype=torch.float64)  # 3 sigma in every coordinate
    G = torch.cat([honest_rows[:4], outlier[None], honest_rows[4:], outlier[None]])
    for spec in ("dnc", "dnc(sub_dim=30)", "dnc(sub_dim=30, iters=4)"):
        rule = build_rule(spec)
        kept = dnc_kept(G, f, rule.iters, rule.sub_dim, rule.c, torch.Generator().manual_seed(5))
        assert kept.tolist() == [0, 1, 2, 3, 5, 6, 7, 8, 9, 10], spec
        out = rule(G, f, generator=torch.Generator().manual_seed(5))
        np.testing.assert_allclose(out.numpy(), honest_rows.mean(0).numpy(), rtol=1e-12, atol=1e-12)  # the same 10 rows
    mean_out = G.mean(0)
    assert float((mean_out - honest_rows.mean(0)).norm()) > 5  # the outliers do move the plain mean


def test_dnc_survives_non_finite_rows():
    G = torch.randn(11, 20, generator=torch.Generator().manual_seed(4))
    G[3] = math.nan
    G[7, 2] = math.inf
    for spec in ("dnc", "dnc(sub_dim=5, iters=2)"):
        out = build_rule(spec)(G, 2)
        good = [i for i in range(11) if i not in (3, 7)]
        np.testing.assert_allclose(out.numpy(), G[good].mean(0).numpy(), rtol=1e-5, atol=1e-6, err_msg=spec)  # float32


def test_dnc_in_a_pool_and_in_wrappers_gets_the_servers_generator():
    from raymix.pool import MixTailorPool
    from raymix.seeding import torch_generator
    from raymix.step import aggregate

    G = torch.randn(12, 40, generator=torch.Generator().manual_seed(6))
    pool = MixTailorPool.from_spec("pool(members=[dnc(sub_dim=10), comed])", n=12, f=2)
    assert pool.families == ("dnc", "comed")
    seen = set()
    for step in range(8):
        out, draw = aggregate(pool, G, 2, key=11, step=step)
        again, _ = aggregate(pool, G, 2, key=11, step=step)
        assert torch.equal(out, again)
        if draw.spec.startswith("dnc"):
            expect = DnC(sub_dim=10)(G, 2, generator=torch_generator(11, "resample", step))
            assert torch.equal(out, expect)
        seen.add(draw.family)
    assert seen == {"dnc", "comed"}
    assert MixTailorPool.from_spec("mixtailor(add=[dnc])", n=12, f=2).class_counts()["dnc"] == 16
    for spec in ("bucketing(s=2, rule=dnc(sub_dim=10))", "resampling(s=2, rule=dnc)", "bulyan(select=comed, agg=dnc)"):
        rule = build_rule(spec)
        assert rule(G[:11], 2, generator=torch.Generator().manual_seed(1)).shape == (40,), spec


# ----------------------------------------------------------------------------------------
# Preconditions, arguments, pickling, specs, listings
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, k, need", [
    ("min_max", 1, 2), ("min_sum(bound=min)", 1, 2), ("mimic", 0, 1), ("mimic(target=3)", 3, 4),
])
def test_attack_preconditions_are_one_line_value_errors(spec, k, need):
    a = build_attack(spec)
    with pytest.raises(ValueError) as err:
        a(view(honest(0)[:k]))
    msg = str(err.value)
    assert "\n" not in msg and msg == f"attack {spec} needs at least {need} visible honest gradient(s), got {k}"
    assert a.min_visible == need


@pytest.mark.parametrize("spec, n, f, needs", [
    ("dnc", 2, 2, "n > iters * floor(c*f) = 1 * 2 = 2"),
    ("dnc(iters=3)", 6, 2, "n > iters * floor(c*f) = 3 * 2 = 6"),
    ("dnc(c=1.5)", 3, 2, "n > iters * floor(c*f) = 1 * 3 = 3"),
])
def test_dnc_precondition_is_a_one_line_value_error(spec, n, f, needs):
    rule = build_rule(spec)
    with pytest.raises(ValueError) as err:
        rule(torch.zeros(n, 3), f)
    assert str(err.value) == f"rule {spec} cannot run with n={n}, f={f}: it needs {needs}"
    assert rule(torch.zeros(n + 1, 3), f).shape == (3,)


def test_dnc_removes_floor_of_c_f_as_written():
    assert dnc_removed_count(0.29, 100) == 29 and 0.29 * 100 < 29  # the float product would give 28
    assert dnc_removed_count(0.5, 3) == 1 and dnc_removed_count(1.0, 0) == 0 and dnc_removed_count(2, 3) == 6
    assert DnC(c=0.29).requirement(29, 100) is not None and DnC(c=0.29).requirement(30, 100) is None


@pytest.mark.parametrize("spec, message", [
    ("min_max(direction=up)", "attack min_max: direction must be one of unit, sign, std, got 'up'"),
    ("min_max(gamma_init=0)", "attack min_max: gamma_init must be a finite number > 0, got 0"),
    ("min_max(gamma_init=inf)", "attack min_max: gamma_init must be a finite number > 0, got inf"),
    ("min_sum(tau=0)", "attack min_sum: tau must be a finite number > 0, got 0"),
    ("min_max(tau=20)", "attack min_max: tau must be a finite number > 0 and < gamma_init = 10, got 20"),
    ("min_sum(bound=mean)", "attack min_sum: bound must be one of max, min, got 'mean'"),
    ("mimic(target=-1)", "attack mimic: target must be an integer >= 0 or none, got -1"),
    ("mimic(target=1.5)", "attack mimic: target must be an integer >= 0 or none, got 1.5"),
])
def test_bad_attack_arguments_fail_at_construction(spec, message):
    with pytest.raises(SpecError, match=f"^{re.escape(message)}$"):
        build_attack(spec)


@pytest.mark.parametrize("spec, message", [
    ("dnc(iters=0)", "rule dnc: iters must be an integer >= 1, got 0"),
    ("dnc(sub_dim=2.5)", "rule dnc: sub_dim must be an integer >= 1, got 2.5"),
    ("dnc(c=-1)", "rule dnc: c must be a finite number >= 0, got -1"),
    ("dnc(c=nan)", "rule dnc: c must be a finite number >= 0, got nan"),
])
def test_bad_dnc_arguments_fail_at_construction(spec, message):
    with pytest.raises(SpecError, match=f"^{re.escape(message)}$"):
        build_rule(spec)


@pytest.mark.parametrize("spec", ["min_max", "min_max(direction=unit, gamma_init=5)", "min_sum(direction=sign, bound=min)",
                                  "mimic", "mimic(target=2)"])
def test_attacks_round_trip_through_pickle_and_their_spec(spec):
    a = build_attack(spec)
    assert a.spec == spec
    H = honest(8)
    out = a(view(H))
    b = pickle.loads(pickle.dumps(a))
    assert type(b) is type(a) and b.spec == spec and torch.equal(b(view(H)), out)
    rebuilt = build_attack(type(a)(**a._args).spec)  # the class's own spec text builds the same attack
    assert torch.equal(rebuilt(view(H)), out)


def test_class_built_specs():
    assert MinMax().spec == "min_max(direction='std', gamma_init=10.0, tau=1e-05)"
    assert MinSum(direction="unit", bound="min").spec == "min_sum(direction='unit', gamma_init=10.0, tau=1e-05, bound='min')"
    assert Mimic().spec == "mimic(target=none)" and Mimic(target=3).spec == "mimic(target=3)"
    assert DnC().spec == "dnc" and DnC(iters=2, c=0.5).spec == "dnc(iters=2, c=0.5)" and DnC(c=1).spec == "dnc"
    assert build_rule("dnc(sub_dim=100, iters=2)") == DnC(iters=2, sub_dim=100)
    assert build_rule(DnC(iters=2, sub_dim=100).canonical_spec()) == DnC(iters=2, sub_dim=100)


@pytest.mark.parametrize("spec", ["dnc", "dnc(iters=2, sub_dim=7, c=0.5)"])
def test_dnc_round_trips_through_pickle(spec):
    rule = build_rule(spec)
    back = pickle.loads(pickle.dumps(rule))
    assert back == rule and back.spec == rule.spec and back.family == "dnc"
    G = torch.randn(12, 30, generator=torch.Generator().manual_seed(9))
    assert torch.equal(rule(G, 2, generator=torch.Generator().manual_seed(1)), back(G, 2, generator=torch.Generator().manual_seed(1)))


def test_the_listings_name_them(capsys):
    from raymix.cli import main

    assert main(["attacks"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert {"min_max", "min_sum", "mimic"} <= set(rows)
    assert "two visible honest rows" in rows["min_max"] and "Min-Sum" in rows["min_sum"] and "Mimic" in rows["mimic"]
    assert main(["rules"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert "n > iters * floor(c*f)" in rows["dnc"] and "Divide-and-Conquer" in rows["dnc"]
