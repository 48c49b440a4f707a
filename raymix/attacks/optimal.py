"""Optimised tailored attacks: against one known rule, and against a MixTailor pool whose
members (and weights) are known but whose per-step draw is not (MixTailor, appendix A.4).

Both search a scalar lambda for crafted rows B(lambda) = a + lambda * v (all f rows equal):

- ``search=epsilon``: a = 0, v = -mean(honest)                    (IPM with epsilon = lambda)
- ``search=sign``:    a = 0, v = -sign(mean) * ||mean||_2 / sqrt(d) (Fang's direction, norm-matched)
- ``search=alie``:    a = mean, v = -std(honest)                   (ALIE with z = lambda)

and pick the lambda minimising the damage objective, i.e. the inner product of the aggregate of
G(lambda) = [visible honest; B(lambda)] with the visible honest mean mu:
``optimal``: <rule(G), mu>; ``pool_aware``: E_{rule ~ pool}[<rule(G), mu>] (``expected``, a
variant) or max_{rule in pool} <rule(G), mu> (``worst``: the paper's problem P3, a robust attack
against the least-hurt member).

Grid: the given list, or log-spaced points from 1e-3 to 1e3 (all powers of ten included), then
``refine`` rounds of ``refine_points`` log-spaced points between the best point's grid
neighbours. A non-finite objective value counts as +inf (never chosen); ties go to the
smaller lambda. A lambda whose cheap members already bound its value above the least value
found skips its costly members (branch and bound, ``_Searching._evaluator``): the choice is
that of evaluating every member at every lambda, at a fraction of the cost for ``worst``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import numpy as np
import torch

from raymix import checks
from raymix.attacks.base import ATTACKS, AdversaryView, Attack, check_simulation, spec_text
from raymix.attacks.pool_values import PoolValues
from raymix.rules.base import as_rule, build_rule
from raymix.spec import parse_spec

__all__ = ["Optimal", "PoolAware", "Search", "crafted_direction", "lambda_search", "every", "default_grid"]

SEARCHES = ("epsilon", "sign", "alie")


def default_grid(per_decade: int, lo_exp: int = -3, hi_exp: int = 3) -> tuple[float, ...]:
    """Log-spaced 10^lo_exp .. 10^hi_exp, per_decade points a decade; powers of ten exact."""
    out = []
    for i in range((hi_exp - lo_exp) * per_decade + 1):
        q, r = divmod(i, per_decade)
        out.append(float(10.0 ** (lo_exp + q)) if r == 0 else float(10.0 ** (lo_exp + i / per_decade)))
    return tuple(out)


def crafted_direction(view: AdversaryView, search: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, v) with crafted row a + lambda * v for the given search family."""
    H = view.honest
    mu = H.mean(dim=0)
    if search == "epsilon":
        return torch.zeros_like(mu), -mu
    if search == "sign":
        scale = torch.linalg.vector_norm(mu) / math.sqrt(view.d)
        return torch.zeros_like(mu), -torch.sign(mu) * scale
    sigma = H.std(dim=0, correction=1) if view.k >= 2 else torch.zeros_like(mu)
    return mu, -sigma


def _refine_points(grid: tuple[float, ...], i: int, points: int) -> list[float]:
    lo = grid[max(i - 1, 0)]
    hi = grid[min(i + 1, len(grid) - 1)]
    if hi <= lo:
        return []
    if lo > 0:
        pts = np.logspace(math.log10(lo), math.log10(hi), points + 2)[1:-1]
    else:
        pts = np.linspace(lo, hi, points + 2)[1:-1]
    return [float(x) for x in pts]


class Search(NamedTuple):
    """A search's result: the chosen lambda, its objective value, every lambda's exact value
    (``table``), and the lambdas ruled out by a lower bound on their value (``bounds``: each
    bound above ``value``, so none of them could have been chosen)."""

    lam: float
    value: float
    table: dict
    bounds: dict


# evaluate(lams, best) -> (exact, bounds): the objective at each of ``lams``, exact, except
# that a lambda may get a lower bound on its value instead, one strictly above ``best`` (the
# least value found so far) or above an exact value of the same call.
Evaluate = Callable[[list, float], "tuple[dict[float, float], dict[float, float]]"]


def every(objective: Callable[[float], float]) -> Evaluate:
    """An ``Evaluate`` that computes ``objective`` at every lambda (no bound)."""
    return lambda lams, best: ({lam: objective(lam) for lam in lams}, {})


def lambda_search(evaluate: Evaluate, grid: tuple[float, ...], refine: int, refine_points: int) -> Search:
    """Minimise the objective over ``grid`` then ``refine`` rounds around the best point.

    Each round's new lambdas go to ``evaluate`` in one call, with the least value so far; a
    lambda it bounds instead of evaluating has a value above that least value, so the choice,
    its value and the refine rounds (around the least value, whose neighbours are the grid's)
    are those of evaluating every lambda."""
    table: dict[float, float] = {}
    bounds: dict[float, float] = {}

    def run(lams) -> None:
        new = [lam for lam in lams if lam not in table and lam not in bounds]
        if new:
            exact, bound = evaluate(new, min(table.values(), default=math.inf))
            table.update((lam, v if math.isfinite(v) else math.inf) for lam, v in exact.items())
            bounds.update(bound)

    def key(x: float) -> tuple[float, float]:
        return (table[x], x) if x in table else (bounds[x], x)

    current = tuple(sorted(set(grid)))
    run(current)
    for _ in range(refine):
        best = min(current, key=key)
        i = current.index(best)
        pts = _refine_points(current, i, refine_points)
        run(pts)
        lo, hi = current[max(i - 1, 0)], current[min(i + 1, len(current) - 1)]
        current = tuple(sorted({lo, hi, best, *pts}))
    best = min(table, key=lambda x: (table[x], x))
    return Search(best, table[best], table, bounds)


def _rows(a: torch.Tensor, v: torch.Tensor, lam: float, f: int) -> torch.Tensor:
    return (a + lam * v).unsqueeze(0).expand(f, -1)


def on_cpu(view: AdversaryView) -> AdversaryView:
    """The view with its honest rows in host memory: the searches' fast paths are numpy and C
    (raymix/attacks/pool_values.py), so on a GPU the rows cross once per step, and the crafted
    rows go back to the honest rows' device (``Attack.__call__``)."""
    return view if view.honest.device.type == "cpu" else dataclasses.replace(view, honest=view.honest.cpu())


class _Searching(Attack):
    per_decade = 10
    reports_choice = True

    def _init_search(self, search, grid, refine, refine_points) -> None:
        owner = f"attack {self.name}"
        self.search = checks.choice(owner, "search", search, SEARCHES)
        g = checks.grid(owner, "grid", grid, lo=0.0)
        self.grid = g if g is not None else default_grid(self.per_decade)
        self.refine = checks.integer(owner, "refine", refine, lo=0)
        self.refine_points = checks.integer(owner, "refine_points", refine_points, lo=1)
        self.last_lambda: float | None = None
        self.last_value: float | None = None
        self.last_choice: dict | None = None

    def _members(self, view: AdversaryView) -> list[tuple[object, float]]:  # pragma: no cover
        """(rule, probability) of the rules the objective weighs."""
        raise NotImplementedError

    def reduce_values(self, vals: np.ndarray, probs: list[float]) -> float:
        """The objective from the members' inner products: their expectation (default)."""
        return math.fsum(float(x) * p for x, p in zip(vals, probs))

    def lower_bound(self, vals: np.ndarray, known: np.ndarray, floors: np.ndarray, probs: list[float]) -> float:
        """A lower bound on ``reduce_values`` from the members ``known`` so far and a lower
        bound (``floors``) on each of the others: the expectation with floors in place of the
        unknown values; +inf where a known value is NaN (the objective is then NaN, counted
        +inf), -inf where a term is not finite otherwise (no bound)."""
        if np.isnan(vals[known]).any():
            return math.inf
        terms = np.where(known, vals, floors)
        if not np.isfinite(terms).all():
            return -math.inf
        return math.fsum(float(x) * p for x, p in zip(terms, probs))

    def gain(self, hint: np.ndarray, floors: np.ndarray, probs: list[float]) -> np.ndarray:
        """How much knowing each member would raise ``lower_bound``, guessed from its value
        at the last lambda evaluated (``hint``): members without a floor first (no bound
        without them), then the largest p_i (hint_i - floor_i)."""
        with np.errstate(invalid="ignore"):
            g = np.asarray(probs) * (hint - floors)
        return np.where(np.isfinite(floors), np.nan_to_num(g, nan=math.inf), math.inf)

    def optimise(self, view: AdversaryView) -> Search:
        """The search for this view: the chosen lambda, its objective value, every evaluated
        lambda's value and the lambdas ruled out by a bound (:class:`Search`). Sets
        ``last_choice``: the chosen lambda, the expected and the worst member inner product
        there (relative to ||mu||^2, mu the visible honest mean, as the records'
        ``diag_expected_inner_product``) and the probability of the members it fools (inner
        product < 0 or not finite), all as the attacker computes them."""
        view = on_cpu(view)
        members = self._members(view)
        probs = [p for _, p in members]
        values = PoolValues(view.honest, *crafted_direction(view, self.search), view.f, [r for r, _ in members])
        seen: dict[float, np.ndarray] = {}
        found = lambda_search(self._evaluator(values, probs, seen), self.grid, self.refine, self.refine_points)
        lam, val, vals, mm = found.lam, found.value, seen[found.lam], float(values.mu64 @ values.mu64)
        rel = (lambda x: x / mm) if mm > 0 else (lambda x: float("nan"))
        self.last_lambda, self.last_value = lam, val
        self.last_choice = {
            "lambda": lam,
            "expected": rel(_Searching.reduce_values(self, vals, probs)),  # whatever this attack minimised
            "worst": rel(float(vals.max())),
            "fooled": math.fsum(p for x, p in zip(vals, probs) if not (math.isfinite(x) and x >= 0)),
        }
        return found

    def _evaluator(self, values: PoolValues, probs: list[float], seen: dict) -> Evaluate:
        """Branch and bound over a batch of lambdas: every member but the costly ones
        (``values.costly``) at every lambda; then the lambdas in the order of their
        ``lower_bound``, each one's costly members one at a time until the bound exceeds the
        least value found (the lambda is then bounded, not evaluated) or all are known (its
        value exact, by ``reduce_values`` on all members as without the bound). The values of
        the lambdas evaluated are those of evaluating every member; ``seen`` gets them."""
        costly = [i for i, c in enumerate(values.costly) if c]
        cheap = [i for i, c in enumerate(values.costly) if not c]
        m = len(values.rules)
        hint = np.zeros(m)  # the members' values at the last lambda evaluated: bound the likely-high first

        def evaluate(lams: list, best: float) -> tuple[dict, dict]:
            pts, vals, known, floors = {}, {}, {}, {}
            for lam in lams:
                pt = pts[lam] = values.point(lam)
                vals[lam], known[lam] = np.full(m, np.nan), np.zeros(m, dtype=bool)
                for i in cheap:
                    vals[lam][i] = values.value(i, pt)
                known[lam][cheap] = True
                floors[lam] = np.array([values.floor(i, pt) if values.costly[i] else 0.0 for i in range(m)])
                pt.release()
            bound = {lam: self.lower_bound(vals[lam], known[lam], floors[lam], probs) for lam in lams}
            exact, bounded = {}, {}
            for lam in sorted(lams, key=lambda x: (bound[x], x)):
                b = bound[lam]
                gain = self.gain(hint, floors[lam], probs)
                order = sorted(costly, key=lambda i: -gain[i])
                for i in order:
                    if b > best:
                        break
                    vals[lam][i] = values.value(i, pts[lam])
                    known[lam][i] = True
                    b = self.lower_bound(vals[lam], known[lam], floors[lam], probs)
                pts.pop(lam).release()
                if not known[lam].all():
                    bounded[lam] = b
                    continue
                v = self.reduce_values(vals[lam], probs)
                exact[lam] = v
                seen[lam] = vals[lam]
                hint[:] = np.nan_to_num(vals[lam], nan=math.inf, posinf=math.inf, neginf=-math.inf)
                if math.isfinite(v) and v < best:
                    best = v
            return exact, bounded

        return evaluate

    def craft(self, view: AdversaryView) -> torch.Tensor:
        view = on_cpu(view)
        lam = self.optimise(view).lam
        a, v = crafted_direction(view, self.search)
        return _rows(a, v, lam, view.f).clone()


@ATTACKS.register("optimal")
class Optimal(_Searching):
    """The most damaging tailored attack against one known rule, by a search over lambda.

    ``optimal(rule=krum, search=epsilon, grid=none, refine=3, refine_points=9)``: crafted rows
    ``b(lambda) = a + lambda * v`` (``search``: epsilon: a = 0, v = -mu; sign: a = 0,
    v = -sign(mu) ||mu||_2 / sqrt(d); alie: a = mu, v = -sigma), lambda minimising
    ``<rule([H; b(lambda) x f], f), mu>`` over ``grid`` (default: 61 log-spaced points 1e-3..1e3)
    and ``refine`` rounds of ``refine_points`` points around the best one. Full knowledge of the
    rule and the honest gradients. Cost: 61 + 9 * refine = 88 rule calls per step with the
    defaults. Needs the rule's precondition, on the k + f simulated rows too.
    """

    name = "optimal"
    needs = "the rule's precondition, on n and on the k + f simulated rows"

    def __init__(self, rule="krum", search: str = "epsilon", grid=None, refine: int = 3, refine_points: int = 9):
        self.rule = as_rule(f"attack {self.name}", "rule", rule)
        self._init_search(search, grid, refine, refine_points)
        self._args = {"rule": parse_spec(self.rule.spec), "search": self.search, "grid": grid, "refine": refine, "refine_points": refine_points}
        self.spec = spec_text(self.name, self._args)

    def check(self, n: int, f: int) -> None:
        super().check(n, f)
        self.rule.check(n, f)

    def _members(self, view: AdversaryView) -> list[tuple[object, float]]:
        check_simulation(self.spec, self.rule, view)
        return [(self.rule, 1.0)]


def pool_distribution(pool) -> list[tuple[str, float]]:
    """(distinct member spec, probability) from a public pool description: duplicates merged,
    weights None = uniform over the listed members."""
    members = list(pool.members)
    w = [1.0] * len(members) if pool.weights is None else [float(x) for x in pool.weights]
    total = sum(w)
    out: dict[str, float] = {}
    for m, x in zip(members, w):
        out[m] = out.get(m, 0.0) + x / total
    return list(out.items())


@ATTACKS.register("pool_aware")
class PoolAware(_Searching):
    """The pool-aware attack on MixTailor (paper appendix A.4): knows the pool, not the draw.

    ``pool_aware(objective=expected, search=epsilon, grid=none, refine=3, refine_points=6)``:
    the attacker knows the pool's members and weights (``view.pool``), not the draw, and picks
    lambda (crafted rows as :class:`Optimal`'s) minimising E_{rule~pool}[<rule(G(lambda)), mu>]
    (``expected``, a variant) or max_{rule in pool, weight > 0} <rule(G(lambda)), mu>
    (``worst``: MixTailor's problem P3). Needs ``view.pool`` and at least one member that can
    run on the k + f simulated rows.

    Each DISTINCT member is evaluated once per lambda and weighted by its total probability
    (the paper pool's 16 comed entries are one evaluation). Members that cannot run on the
    simulated (k + f) rows are left out and the rest renormalised. Cost per step: at most
    (#lambda) x (#distinct members) rule calls (fewer where a bound rules a lambda out): 25 + 6 * refine = 43 lambdas with the default grid
    (4 points a decade), times 49 for the paper pool.
    """

    name = "pool_aware"
    needs = "view.pool, and a member that can run on the k + f simulated rows"
    uses_pool = True
    per_decade = 4

    def __init__(self, objective: str = "expected", search: str = "epsilon", grid=None, refine: int = 3, refine_points: int = 6):
        self.objective = checks.choice(f"attack {self.name}", "objective", objective, ("expected", "worst"))
        self._init_search(search, grid, refine, refine_points)
        self._args = {"objective": self.objective, "search": self.search, "grid": grid, "refine": refine, "refine_points": refine_points}
        self.spec = spec_text(self.name, self._args)
        self._rules: dict = {}

    def _rule(self, spec: str):
        rule = self._rules.get(spec)
        if rule is None:
            rule = self._rules[spec] = build_rule(spec)
        return rule

    def members_for(self, view: AdversaryView) -> list[tuple[object, float]]:
        """(rule, probability) for the distinct pool members that can run on k + f rows."""
        if view.pool is None:
            raise ValueError(f"attack {self.spec} is pool-aware: it needs view.pool, got None")
        m = view.k + view.f
        kept, dropped = [], []
        for spec, p in pool_distribution(view.pool):
            if p <= 0:
                continue
            rule = self._rule(spec)
            try:
                rule.check(m, view.f)
            except ValueError:
                dropped.append(spec)
                continue
            kept.append((rule, p))
        if not kept:
            raise ValueError(f"attack {self.spec}: no pool member can run on {m} rows with f={view.f} (all of {dropped})")
        total = sum(p for _, p in kept)
        return [(r, p / total) for r, p in kept]

    def _members(self, view: AdversaryView) -> list[tuple[object, float]]:
        return self.members_for(view)

    def reduce_values(self, vals: np.ndarray, probs: list[float]) -> float:
        return float(vals.max()) if self.objective == "worst" else super().reduce_values(vals, probs)

    def gain(self, hint: np.ndarray, floors: np.ndarray, probs: list[float]) -> np.ndarray:
        """``worst``: the members likely highest first."""
        return hint if self.objective == "worst" else super().gain(hint, floors, probs)

    def lower_bound(self, vals: np.ndarray, known: np.ndarray, floors: np.ndarray, probs: list[float]) -> float:
        """``worst``: the largest known value (NaN: +inf, as the objective counts it)."""
        if self.objective != "worst":
            return super().lower_bound(vals, known, floors, probs)
        if not known.any():
            return -math.inf
        got = vals[known]
        return math.inf if np.isnan(got).any() else float(got.max())

    def pool_values(self, view: AdversaryView, lam: float, fast: bool = True) -> dict[str, float]:
        """<rule(G(lambda)), mu> for each distinct member (diagnostics and tests); ``fast=False``:
        each member run on the materialised G(lambda)."""
        view = on_cpu(view)
        members = [r for r, _ in self.members_for(view)]
        vals = PoolValues(view.honest, *crafted_direction(view, self.search), view.f, members, fast=fast).values(lam)
        return {rule.spec: float(x) for rule, x in zip(members, vals)}
