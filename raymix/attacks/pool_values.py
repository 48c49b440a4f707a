"""The searching attacks' inner loop: ``<rule(G(lambda)), mu>`` for every rule of a pool and
many lambdas, from what the lambdas and the rules share.

``G(lambda) = [H; b x f]``: the k visible honest rows H and f crafted rows, all equal to
``b = a + lambda * v`` (:func:`raymix.attacks.optimal.crafted_direction`). The reference is
the rule itself on the materialised ``G(lambda)``, member by member and lambda by lambda
(``PoolValues(..., fast=False)``); the fast paths compute the same inner products from parts
computed once per view or once per lambda:

========================  ====================================================================
once per view             mu in float64, each honest row's <h_i, mu>, H's Gram matrix and its
                          products with a and v, H's sorted columns, H's pairwise l^p distances
once per lambda           b, <b, mu>, the (m, m) Gram matrix (from the parts above: no pass
                          over d), the l^p distances |h_i - b|_p for every p in the pool (one
                          chain of products over k x d entries serves all p), each Bulyan
                          selection (shared by the four aggregations that follow it)
========================  ====================================================================

Per rule (exact type and arguments, never spec text):

- ``mean``: the average of the rows' inner products.
- ``comed``: b inserted into H's sorted columns (the rule's own float32 midpoint, bit for bit).
- ``krum(p)`` (p = 2 from the Gram matrix, integer p <= 64 or inf from the l^p distances):
  the rule's scores on the (m, m) matrix, the picked row's inner product.
- ``geomed(p=2)``: the rule's Weiszfeld on the (m, m) Gram matrix.
- ``geomed(p != 2)``: the rule's smoothed Weiszfeld iterates on the k + 1 distinct rows (b's
  weight counted f times), from the mean, stopped by the rule's own test.
- ``bulyan(select=krum(p)|mean|geomed(p=2)|comed, agg=...)``: the selection rounds on the
  (m, m) matrices (comed: per round on the remaining rows), then ``agg`` on the picked rows by
  the paths above (anything else: ``agg`` on those rows).
- anything else, and any view with a non-finite entry: the rule on ``G(lambda)``.

What differs from the reference, and why it is within tolerance: products accumulated in
float64 where the rule accumulates float32 products in float64 (Gram matrices, l^p sums; the
relative difference is ~1e-7, below the rules' float32 inputs' own rounding), and sums over
k + 1 rows where the rule sums over k + f. A Krum near-tie within that difference may pick the other row: the chosen lambda
then moves only if the two rows' inner products decide it. ``tests/test_pool_values.py``
compares both paths on saved cases from before the fast paths existed.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from raymix.rules import _kernels as K
from raymix.rules.base import Rule
from raymix.rules.basic import CoordinateMedian, Mean
from raymix.rules.bulyan import Bulyan, bulyan_classic_agg
from raymix.rules.geomed import GeometricMedian, weiszfeld_coefficients
from raymix.rules.krum import Krum, krum_scores

__all__ = ["PoolValues"]

_INF = float("inf")
_CHAIN_FLOOR = 1e-18  # |x| / max|x| below this: every power p >= 1 is negligible in the sum


def _chain_p(rule: Rule) -> "float | None":
    """The l^p exponent a fast path can serve (integer 1..64 or inf), else None."""
    p = float(rule.p)
    if math.isinf(p) or (p.is_integer() and 1 <= p <= 64):
        return p
    return None


def _lp_from_diffs(D: torch.Tensor, ps: Sequence[float]) -> dict[float, torch.Tensor]:
    """{p: (r,) float64 l^p norms} of the rows of D = |x| (float64, overwritten), every p at
    once: each row is divided by its own max (so no power overflows or underflows), then one
    chain of products D, D^2, D^3, ... gives every integer p's sum; p = inf is the max."""
    out: dict[float, torch.Tensor] = {}
    s = D.amax(1)
    if any(math.isinf(p) for p in ps):
        out[_INF] = s.clone()
    finite = sorted({int(p) for p in ps if not math.isinf(p)})
    if not finite:
        return out
    safe = torch.where(s > 0, s, torch.ones_like(s))
    D.div_(safe[:, None])
    torch.threshold_(D, _CHAIN_FLOOR, 0.0)
    P = D.clone()
    for e in range(1, finite[-1] + 1):
        if e > 1:
            P.mul_(D)
        if e in finite:
            out[float(e)] = s * P.sum(1) ** (1.0 / e)
    return out


class _Lambda:
    """The parts of one lambda's G shared by the rules (computed on first use)."""

    def __init__(self, pv: "PoolValues", lam: float):
        self.pv, self.lam = pv, lam
        self.b = (pv.a + lam * pv.v)  # the crafted row, as optimal._rows builds it
        self.bmu = float(self.b.double() @ pv.mu64)
        self.vals = np.concatenate([pv.hmu, np.full(pv.f, self.bmu)])  # each row's <x_i, mu>
        self._G = self._gram = None
        self._d2: dict[float, torch.Tensor] = {}
        self.picks: dict[Rule, list[int]] = {}

    @property
    def G(self) -> torch.Tensor:
        if self._G is None:
            self._G = torch.cat([self.pv.H, self.b.unsqueeze(0).expand(self.pv.f, -1)])
        return self._G

    @property
    def gram(self) -> torch.Tensor:
        """(m, m) float64 Gram matrix of G, from H's and b's products (no pass over d but H b)."""
        if self._gram is None:
            pv, k, f = self.pv, self.pv.k, self.pv.f
            b64 = self.b.double()
            hb = pv.H64 @ b64
            Kg = torch.empty(k + f, k + f, dtype=torch.float64)
            Kg[:k, :k] = pv.KH
            Kg[:k, k:] = hb[:, None]
            Kg[k:, :k] = hb[None, :]
            Kg[k:, k:] = float(b64 @ b64)
            self._gram = Kg
        return self._gram

    def d2(self, p: float) -> torch.Tensor:
        """(m, m) float64 squared l^p distances of G (crafted rows at distance 0 from each other)."""
        if p not in self._d2:
            pv, k = self.pv, self.pv.k
            if p == 2:
                self._d2[p] = K.sq_dists_from_gram(self.gram, torch.zeros(k + pv.f, dtype=torch.bool))
            else:
                ps = [q for q in pv.chain_ps if q not in self._d2] or [p]
                D = (pv.H - self.b).abs_().double()
                for q, hb in _lp_from_diffs(D, ps).items():
                    M = torch.zeros(k + pv.f, k + pv.f, dtype=torch.float64)
                    M[:k, :k] = pv.hh(q)
                    M[:k, k:] = hb[:, None]
                    M[k:, :k] = hb[None, :]
                    self._d2[q] = M * M
        return self._d2[p]


class PoolValues:
    """``values(lam)``: each rule's ``<rule(G(lambda)), mu>`` (float64, mu = the visible honest
    mean), by the fast paths of this module or, with ``fast=False`` or where none applies, by
    the rule on ``G(lambda)``."""

    def __init__(self, H: torch.Tensor, a: torch.Tensor, v: torch.Tensor, f: int, rules: Sequence[Rule], fast: bool = True):
        self.H, self.a, self.v, self.f = H, a, v, int(f)
        self.k = int(H.shape[0])
        self.rules = list(rules)
        self.mu64 = H.mean(dim=0).double()
        self.fast = fast and bool(torch.isfinite(H).all() and torch.isfinite(a).all() and torch.isfinite(v).all())
        self.H64 = H.double()
        self.hmu = np.array([float(h.double() @ self.mu64) for h in H])
        KH = self.H64 @ self.H64.t()
        self.KH = 0.5 * (KH + KH.t())
        ps = set()
        for r in self.rules:
            for q in (r, getattr(r, "select", None), getattr(r, "agg", None)):
                if type(q) is Krum and q.p != 2 and _chain_p(q) is not None:
                    ps.add(_chain_p(q))
        self.chain_ps = sorted(ps)
        self._hh: dict[float, torch.Tensor] = {}
        self._sorted: torch.Tensor | None = None

    # -- parts shared by every lambda -------------------------------------------------------
    def hh(self, p: float) -> torch.Tensor:
        """(k, k) float64 l^p distances between the honest rows (all chain p at once)."""
        if p not in self._hh:
            k = self.k
            iu = torch.triu_indices(k, k, 1)
            ps = [q for q in self.chain_ps if q not in self._hh] or [p]
            D = (self.H[iu[0]] - self.H[iu[1]]).abs_().double()
            for q, dist in _lp_from_diffs(D, ps).items():
                M = torch.zeros(k, k, dtype=torch.float64)
                M[iu[0], iu[1]] = dist
                self._hh[q] = M + M.t()
        return self._hh[p]

    @property
    def sorted_cols(self) -> torch.Tensor:
        if self._sorted is None:
            self._sorted = torch.sort(self.H, dim=0).values
        return self._sorted

    # -- per lambda --------------------------------------------------------------------------
    def values(self, lam: float) -> np.ndarray:
        """(len(rules),) float64: each rule's <rule(G(lambda)), mu>."""
        pt = _Lambda(self, float(lam))
        out = np.empty(len(self.rules))
        for i, rule in enumerate(self.rules):
            v = self._fast(rule, pt) if self.fast else None
            out[i] = self._reference(rule, pt) if v is None else v
        return out

    def _reference(self, rule: Rule, pt: _Lambda) -> float:
        return float(rule(pt.G, self.f).double() @ self.mu64)

    def _fast(self, rule: Rule, pt: _Lambda) -> "float | None":
        t = type(rule)
        if t is Mean:
            return float(pt.vals.mean())
        if t is CoordinateMedian:
            return self._comed(pt)
        if t is Krum and _chain_p(rule) is not None:
            return float(pt.vals[self._krum_pick(pt.d2(_chain_p(rule)), self.f)])
        if t is GeometricMedian:
            return self._geomed(rule, pt)
        if t is Bulyan:
            return self._bulyan(rule, pt)
        return None

    # -- the rules -----------------------------------------------------------------------------
    def _comed(self, pt: _Lambda) -> float:
        """The median of k sorted honest values and f copies of b per column (float32
        midpoint as the rule's), by b's rank among the sorted honest values."""
        S, b, f, k = self.sorted_cols, pt.b, self.f, self.k
        m = k + f
        r = (S < b).sum(0)  # honest values below b, per column

        def order_stat(t: int) -> torch.Tensor:
            lo = S[min(t, k - 1)]
            hi = S[max(min(t - f, k - 1), 0)]
            return torch.where(t < r, lo, torch.where(t < r + f, b, hi))

        lo, hi = (m - 1) // 2, m // 2
        z = order_stat(lo) if lo == hi else (order_stat(lo) + order_stat(hi)) * 0.5
        return float(z.double() @ self.mu64)

    @staticmethod
    def _krum_pick(D2: torch.Tensor, f: int) -> int:
        return int(torch.argmin(krum_scores(D2, f)))

    def _geomed(self, rule: GeometricMedian, pt: _Lambda) -> "float | None":
        if rule.p == 2:
            alpha = weiszfeld_coefficients(pt.gram, rule.nu, rule.iters, rule.tol)
            return float(alpha.numpy() @ pt.vals)
        if _chain_p(rule) is None or math.isinf(rule.p):
            return None
        return self._geomed_lp(rule, pt)

    def _geomed_lp(self, rule: GeometricMedian, pt: _Lambda) -> float:
        """The rule's own smoothed Weiszfeld with l^p weights, from the mean, on the k + 1
        distinct rows (b's weight counted f times): the rule's iterates, one row fewer per
        pass. Not warm-started nor accelerated: for p != 2 the map can have several fixed
        points, and a warm start from the neighbouring lambda (or Anderson mixing) was measured
        to land on another one than the rule's (0.6% and 21% of ||mu||^2 apart)."""
        k, f = self.k, self.f
        X = torch.cat([self.H, pt.b.unsqueeze(0)])
        mult = torch.tensor([1.0] * k + [float(f)], dtype=torch.float64)
        z = K.combine_rows(X, mult / mult.sum())
        for _ in range(rule.iters):
            w = mult / K.lp_dist_to(X, z, rule.p).clamp_min(rule.nu)  # infinite distance: weight 0
            total = w.sum()
            if not bool(torch.isfinite(total)) or float(total) <= 0:
                break
            new = K.combine_rows(X, w / total)
            dz = float(torch.linalg.vector_norm((new - z).to(torch.float64)))
            zn = float(torch.linalg.vector_norm(new.to(torch.float64)))
            z = new
            if dz <= rule.tol * zn:
                break
        return float(z.double() @ self.mu64)

    def _select(self, select: Rule, pt: _Lambda) -> "list[int] | None":
        """Bulyan's theta = m - 2f picks with ``select``, as bulyan_select makes them."""
        if select in pt.picks:
            return pt.picks[select]
        m, f = self.k + self.f, self.f
        theta = m - 2 * f
        t = type(select)
        if t is Krum and _chain_p(select) is not None:
            picks = K.bulyan_krum_rounds(pt.d2(_chain_p(select)), f, theta)
        elif t is Mean:
            picks = K.bulyan_gram_rounds(pt.gram, torch.zeros(m, dtype=torch.bool), theta)
        elif t is GeometricMedian and select.p == 2:
            picks = K.bulyan_gram_rounds(pt.gram, torch.zeros(m, dtype=torch.bool), theta, (select.nu, select.iters, select.tol))
        elif t is CoordinateMedian:
            G, rem, picks = pt.G, list(range(m)), []
            for _ in range(theta):
                rows = torch.tensor(rem)
                z = K.coordinate_median_rows(G, rows)
                i = int(torch.argmin(K.lp_dist_to(G, z, 2.0, rows)))
                picks.append(rem.pop(i))
        else:
            return None
        pt.picks[select] = picks
        return picks

    def _bulyan(self, rule: Bulyan, pt: _Lambda) -> "float | None":
        picks = self._select(rule.select, pt)
        if picks is None:
            return None
        f, agg = self.f, rule.agg
        P = torch.tensor(picks)
        t = type(agg)
        if agg is None:
            return float(bulyan_classic_agg(pt.G, f, P).double() @ self.mu64)
        if t is Mean:
            return float(pt.vals[picks].mean())
        if t is CoordinateMedian:
            return float(K.coordinate_median_rows(pt.G, P).double() @ self.mu64)
        if t is Krum and _chain_p(agg) is not None:
            sub = pt.d2(_chain_p(agg))[P][:, P]
            return float(pt.vals[picks[self._krum_pick(sub, f)]])
        if t is GeometricMedian and agg.p == 2:
            alpha = weiszfeld_coefficients(pt.gram[P][:, P], agg.nu, agg.iters, agg.tol)
            return float(alpha.numpy() @ pt.vals[picks])
        return float(agg.aggregate(pt.G.index_select(0, P), f).double() @ self.mu64)
