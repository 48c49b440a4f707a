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
- ``comed``, ``trimmed_mean``: G's sorted columns from H's (the rules' own float32 arithmetic).
- ``krum(p)`` (p = 2 from the Gram matrix, integer p <= 64 or inf from the l^p distances):
  the rule's scores on the (m, m) matrix, the picked row's inner product.
- ``geomed(p=2)``: the rule's Weiszfeld on the (m, m) Gram matrix.
- ``geomed(p != 2)``: the rule's smoothed Weiszfeld iterates on the k + 1 distinct rows (b's
  weight counted f times), from the mean, stopped by the rule's own test.
- ``bulyan(select=krum(p)|mean|geomed(p=2)|comed, agg=...)``: the selection rounds on the
  (m, m) matrices (comed: per round on the remaining rows), then ``agg`` on the picked rows by
  the paths above (anything else: ``agg`` on those rows).
- anything else, and any view with a non-finite entry: the rule on ``G(lambda)``.

For the search's branch and bound (raymix/attacks/optimal.py): ``costly`` says which rules to
leave until the others are known, ``floor`` gives a lower bound on a rule's value without
computing it (the least row's, for the rules whose output is a convex combination of rows).

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
from raymix.rules import _native
from raymix.rules.base import Rule
from raymix.rules.basic import CoordinateMedian, Mean, TrimmedMean
from raymix.rules.bulyan import Bulyan, bulyan_classic_agg
from raymix.rules.geomed import GeometricMedian
from raymix.rules.krum import Krum

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


def _lp_norms(A: torch.Tensor, ia, B: torch.Tensor, ib, ps: Sequence[float]) -> dict[float, torch.Tensor]:
    """{p: (r,) float64 l^p norms of A[ia[t]] - B[ib[t]]}: :func:`_lp_from_diffs`'s values, by
    the C kernel (``_native.lp_chain``: every power of a 256-column block while it is in L1)
    or, where that is not built, by the torch chain on the (r, d) float64 differences."""
    finite = sorted({int(p) for p in ps if not math.isinf(p)})
    got = _native.lp_chain(A, ia, B, ib, finite[-1], _CHAIN_FLOOR) if finite else None
    if got is None:
        ia, ib = (torch.as_tensor(np.asarray(i), dtype=torch.int64) for i in (ia, ib))
        return _lp_from_diffs((A.index_select(0, ia) - B.index_select(0, ib)).abs_().double(), ps)
    smax, sums = torch.from_numpy(got[0]), torch.from_numpy(got[1])
    out = {_INF: smax.clone()} if any(math.isinf(p) for p in ps) else {}
    for e in finite:
        out[float(e)] = smax * sums[:, e - 1] ** (1.0 / e)
    return out


def _costly(rule: Rule) -> bool:
    """Whether a search should leave the rule until the others are known: the l^p Weiszfeld
    (milliseconds a lambda), Bulyan (its selection rounds and aggregation: 0.1-7 ms) and every
    rule without a fast path. The others (mean, comed, trimmed mean, Krum, geomed p = 2: tens
    of microseconds each from the shared parts) are evaluated at every lambda and bound it;
    Krum stays among them because its values bound the most lambdas (measured: with Krum left
    until later, P3's default search took 1.3-1.5 s instead of 0.7-0.9)."""
    t = type(rule)
    if t in (Mean, CoordinateMedian, TrimmedMean):
        return False
    if t is Krum:
        return _chain_p(rule) is None
    if t is GeometricMedian:
        return rule.p != 2
    return True


def _convex(rule: Rule) -> bool:
    """Whether the rule's output is a convex combination of its input rows (then its inner
    product with mu is at least the least row's)."""
    t = type(rule)
    if t in (Mean, Krum, GeometricMedian):
        return True
    return t is Bulyan and type(rule.agg) in (Mean, Krum, GeometricMedian)


class _Lambda:
    """The parts of one lambda's G shared by the rules (computed on first use; the (m, m)
    matrices as float64 numpy arrays, for the kernels' small-matrix paths)."""

    def __init__(self, pv: "PoolValues", lam: float):
        self.pv, self.lam = pv, lam
        self.b = (pv.a + lam * pv.v)  # the crafted row, as optimal._rows builds it
        self.bmu = float(self.b.double() @ pv.mu64)
        self.vals = np.concatenate([pv.hmu, np.full(pv.f, self.bmu)])  # each row's <x_i, mu>
        self._G = self._gram = self.sorted_g = self._distinct = None
        self._d2: dict[float, np.ndarray] = {}
        self.picks: dict[Rule, list[int]] = {}
        self.least: "float | None" = None  # PoolValues.floor's bound, shared by the convex rules

    def release(self) -> None:
        """Drop the (m, d) parts (G, its sorted columns, the scaled distinct rows); they are
        made again on next use. The small parts (Gram and distance matrices, Bulyan's picks)
        stay: a search holds every lambda of a batch at once."""
        self._G = self.sorted_g = self._distinct = None

    @property
    def G(self) -> torch.Tensor:
        if self._G is None:
            self._G = torch.cat([self.pv.H, self.b.unsqueeze(0).expand(self.pv.f, -1)])
        return self._G

    @property
    def distinct(self) -> tuple[torch.Tensor, float, torch.Tensor]:
        """(X, s, mult): the k + 1 distinct rows [H; b] scaled by the power of two s that puts
        the largest |entry| in [0.5, 1) (exact), and each row's multiplicity (b's is f)."""
        if self._distinct is None:
            X = torch.cat([self.pv.H, self.b.unsqueeze(0)])
            s = K.pow2_scale(X)
            mult = torch.tensor([1.0] * self.pv.k + [float(self.pv.f)], dtype=torch.float64)
            self._distinct = (X.mul_(s), s, mult)
        return self._distinct

    @property
    def gram(self) -> np.ndarray:
        """(m, m) float64 Gram matrix of G, from H's and b's products (no pass over d but H b)."""
        if self._gram is None:
            pv, k, f = self.pv, self.pv.k, self.pv.f
            b64 = self.b.double()
            hb = (pv.H64 @ b64).numpy()
            Kg = np.empty((k + f, k + f))
            Kg[:k, :k] = pv.KH
            Kg[:k, k:] = hb[:, None]
            Kg[k:, :k] = hb[None, :]
            Kg[k:, k:] = float(b64 @ b64)
            self._gram = Kg
        return self._gram

    def d2(self, p: float) -> np.ndarray:
        """(m, m) float64 squared l^p distances of G (crafted rows at distance 0 from each other)."""
        if p not in self._d2:
            pv, k, m = self.pv, self.pv.k, self.pv.k + self.pv.f
            if p == 2:
                Kg = self.gram
                diag = np.diagonal(Kg)
                D = np.maximum(diag[:, None] + diag[None, :] - 2 * Kg, 0)
                np.fill_diagonal(D, 0)
                self._d2[p] = D
            else:
                ps = [q for q in pv.chain_ps if q not in self._d2] or [p]
                b = self.b.unsqueeze(0)
                for q, hb in _lp_norms(pv.H, range(k), b, [0] * k, ps).items():
                    M = np.zeros((m, m))
                    M[:k, :k] = pv.hh(q)
                    M[:k, k:] = hb.numpy()[:, None]
                    M[k:, :k] = hb.numpy()[None, :]
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
        KH = (self.H64 @ self.H64.t()).numpy()
        self.KH = 0.5 * (KH + KH.T)
        ps = set()
        for r in self.rules:
            for q in (r, getattr(r, "select", None), getattr(r, "agg", None)):
                if type(q) is Krum and q.p != 2 and _chain_p(q) is not None:
                    ps.add(_chain_p(q))
        self.chain_ps = sorted(ps)
        self._hh: dict[float, np.ndarray] = {}
        self._sorted: "torch.Tensor | None" = None
        self._no_bad = torch.zeros(self.k + self.f, dtype=torch.bool)  # a fast view has only finite rows
        self.costly = [_costly(r) for r in self.rules]
        self._convex = [self.fast and _convex(r) for r in self.rules]
        self._hnorm = float(np.sqrt(np.clip(np.diagonal(self.KH), 0, None)).sum())
        self._munorm = float(torch.linalg.vector_norm(self.mu64))

    # -- parts shared by every lambda -------------------------------------------------------
    def hh(self, p: float) -> np.ndarray:
        """(k, k) float64 l^p distances between the honest rows (all chain p at once)."""
        if p not in self._hh:
            k = self.k
            iu = torch.triu_indices(k, k, 1)
            ps = [q for q in self.chain_ps if q not in self._hh] or [p]
            for q, dist in _lp_norms(self.H, iu[0], self.H, iu[1], ps).items():
                M = np.zeros((k, k))
                M[iu[0].numpy(), iu[1].numpy()] = dist.numpy()
                self._hh[q] = M + M.T
        return self._hh[p]

    @property
    def sorted_cols(self) -> torch.Tensor:
        """H's columns sorted (finite rows: NaN never arises here)."""
        if self._sorted is None:
            self._sorted = K.sorted_columns(self.H)
        return self._sorted

    # -- per lambda --------------------------------------------------------------------------
    def values(self, lam: float) -> np.ndarray:
        """(len(rules),) float64: each rule's <rule(G(lambda)), mu>."""
        pt = self.point(lam)
        return np.array([self.value(i, pt) for i in range(len(self.rules))], dtype=np.float64)

    def point(self, lam: float) -> _Lambda:
        """The shared parts of G(lambda), for :meth:`value` and :meth:`floor`."""
        return _Lambda(self, float(lam))

    def value(self, i: int, pt: _Lambda) -> float:
        """Rule i's <rule(G(lambda)), mu> at ``pt``."""
        rule = self.rules[i]
        v = self._fast(rule, pt) if self.fast else None
        return self._reference(rule, pt) if v is None else v

    def floor(self, i: int, pt: _Lambda) -> float:
        """A lower bound on :meth:`value` without computing it: for a rule whose output is a
        convex combination of G's rows (mean, Krum, geomed, Bulyan aggregating with one of
        them), the least row's <x_i, mu>, less a margin for the float32 combination (its
        rounding moves the value by at most ~m 2^-24 max_i ||x_i|| ||mu||; the margin is 1e-5
        of sum_i ||x_i|| ||mu|| + max_i |<x_i, mu>|); -inf for any other rule."""
        if not self._convex[i]:
            return -_INF
        if pt.least is None:  # once per lambda: the same bound for every convex rule
            bnorm = float(torch.linalg.vector_norm(pt.b.double()))
            margin = 1e-5 * (self._munorm * (self._hnorm + self.f * bnorm) + float(np.abs(pt.vals).max()))
            pt.least = float(pt.vals.min()) - margin
        return pt.least

    def _reference(self, rule: Rule, pt: _Lambda) -> float:
        return float(rule(pt.G, self.f).double() @ self.mu64)

    def _fast(self, rule: Rule, pt: _Lambda) -> "float | None":
        t = type(rule)
        if t is Mean:
            return float(pt.vals.mean())
        if t is CoordinateMedian:
            return float(self._middle(self._sorted_g(pt)).double() @ self.mu64)
        if t is TrimmedMean and self.k + self.f <= K.NETWORK_MAX_ROWS:
            A = self._sorted_g(pt)[self.f: self.k]  # drop the f smallest and f largest: as the rule sums, in float32
            out = A[0].clone()
            for row in A[1:]:
                out.add_(row)
            return float(out.mul_(1.0 / A.shape[0]).double() @ self.mu64)
        if t is Krum and _chain_p(rule) is not None:
            return float(pt.vals[int(np.argmin(K.small_krum_scores(pt.d2(_chain_p(rule)), self.f)))])
        if t is GeometricMedian:
            return self._geomed(rule, pt)
        if t is Bulyan:
            return self._bulyan(rule, pt)
        return None

    # -- the rules -----------------------------------------------------------------------------
    def _sorted_g(self, pt: _Lambda) -> torch.Tensor:
        """(m, d): G's columns sorted, from H's sorted columns: the i-th smallest of the k
        honest values and f copies of b is ``max(S[i-f], min(b, S[i]))`` (a missing S[.]
        drops its bound), two operations instead of a sort per lambda."""
        if pt.sorted_g is None:
            S, f = self.sorted_cols, self.f
            lo = torch.cat([S.new_full((f,) + tuple(S.shape[1:]), -_INF), S])
            hi = torch.cat([S, S.new_full((f,) + tuple(S.shape[1:]), _INF)])
            pt.sorted_g = torch.maximum(lo, torch.minimum(pt.b, hi))
        return pt.sorted_g

    @staticmethod
    def _middle(A: torch.Tensor) -> torch.Tensor:
        """The rule's median of sorted columns: the middle value, or the float32 midpoint."""
        n = A.shape[0]
        lo, hi = (n - 1) // 2, n // 2
        return A[lo] if lo == hi else (A[lo] + A[hi]) * 0.5

    def _geomed(self, rule: GeometricMedian, pt: _Lambda) -> "float | None":
        if rule.p == 2:
            return float(K.small_weiszfeld(pt.gram, rule.nu, rule.iters, rule.tol) @ pt.vals)
        if _chain_p(rule) is None or math.isinf(rule.p):
            return None
        return self._geomed_lp(rule, pt)

    def _geomed_lp(self, rule: GeometricMedian, pt: _Lambda) -> float:
        """The rule's own smoothed Weiszfeld with l^p weights, from the mean, on the k + 1
        distinct rows (b's weight counted f times), the rows scaled once by a power of two
        (exact: the iterates scale with them): the rule's iterates, as one C loop
        (raymix/rules/_native.py: float32 terms, float64 sums) or, where that is not built,
        with fewer passes per map than the rule (powers by squaring in two reused buffers;
        float32 sums, rows whose sum may have underflowed measured again by the rule's own
        ``lp_dist_to``). Not warm-started nor accelerated: for p != 2 the map can have several
        fixed points, and a warm start from the neighbouring lambda (or Anderson mixing) was
        measured to land on another one than the rule's (0.6% and 21% of ||mu||^2 apart)."""
        p = float(rule.p)
        X, s, mult = pt.distinct
        z = _native.lp_weiszfeld(X, mult, p, rule.nu, rule.iters, rule.tol, s)
        if z is not None:
            return float(z.double() @ self.mu64) / s
        buf, tmp = torch.empty_like(X), torch.empty_like(X)

        def dists(z):  # (k+1,) float64 l^p distances of the unscaled rows to z / s
            S = K.ipow_(torch.sub(X, z, out=buf).abs_(), p, tmp).sum(1).double()
            bad = ~torch.isfinite(S) | (S < 1e-30)
            if bool(bad.any()):
                rows = torch.nonzero(bad).flatten()
                S = S.clone()
                S[rows] = K.lp_dist_to(X, z, p, rows) ** p
            return S ** (1.0 / p) / s

        z = K.combine_rows(X, mult / mult.sum())
        for _ in range(rule.iters):
            w = mult / dists(z).clamp_min(rule.nu)  # infinite distance: weight 0
            total = w.sum()
            if not bool(torch.isfinite(total)) or float(total) <= 0:
                break
            new = K.combine_rows(X, w / total)
            dz = float(torch.linalg.vector_norm((new - z).to(torch.float64)))
            zn = float(torch.linalg.vector_norm(new.to(torch.float64)))
            z = new
            if dz <= rule.tol * zn:
                break
        return float(z.double() @ self.mu64) / s

    def _select(self, select: Rule, pt: _Lambda) -> "list[int] | None":
        """Bulyan's theta = m - 2f picks with ``select``, as ``bulyan_select`` makes them."""
        if select in pt.picks:
            return pt.picks[select]
        k, f = self.k, self.f
        theta = k + f - 2 * f
        t = type(select)
        if t is Krum and _chain_p(select) is not None:
            picks = K.bulyan_krum_rounds(torch.from_numpy(pt.d2(_chain_p(select))), f, theta)
        elif t is Mean:
            picks = K.bulyan_gram_rounds(torch.from_numpy(pt.gram), self._no_bad, theta)
        elif t is GeometricMedian and select.p == 2:
            picks = K.bulyan_gram_rounds(torch.from_numpy(pt.gram), self._no_bad, theta, (select.nu, select.iters, select.tol))
        elif t is CoordinateMedian:
            picks = self._comed_rounds(pt, theta)
        else:
            return None
        pt.picks[select] = picks
        return picks

    def _comed_rounds(self, pt: _Lambda, theta: int) -> list[int]:
        """Each round: the coordinate-wise median of the remaining rows (the rule's own
        selection network), then the remaining row closest to it in l2 (the rule's exact
        ``cdist``, on the k + 1 distinct rows; ties: the lowest index of G)."""
        k, f = self.k, self.f
        G, X = pt.G, torch.cat([self.H, pt.b.unsqueeze(0)])
        rem, picks = list(range(k + f)), []
        for _ in range(theta):
            z = K.coordinate_median_rows(G, torch.tensor(rem))
            dist = torch.cdist(X, z[None], compute_mode="donot_use_mm_for_euclid_dist")[:, 0].tolist()
            j = rem[int(np.argmin([dist[min(r, k)] for r in rem]))]
            picks.append(j)
            rem.remove(j)
        return picks

    def _bulyan(self, rule: Bulyan, pt: _Lambda) -> "float | None":
        picks = self._select(rule.select, pt)
        if picks is None:
            return None
        f, agg = self.f, rule.agg
        t = type(agg)
        if t is Mean:
            return float(pt.vals[picks].mean())
        if t is CoordinateMedian:
            return float(K.coordinate_median_rows(pt.G, torch.tensor(picks)).double() @ self.mu64)
        if t is Krum and _chain_p(agg) is not None:
            sub = pt.d2(_chain_p(agg))[np.ix_(picks, picks)]
            return float(pt.vals[picks[int(np.argmin(K.small_krum_scores(sub, f)))]])
        if t is GeometricMedian and agg.p == 2:
            return float(K.small_weiszfeld(pt.gram[np.ix_(picks, picks)], agg.nu, agg.iters, agg.tol) @ pt.vals[picks])
        P = torch.tensor(picks)
        if agg is None:
            return float(bulyan_classic_agg(pt.G, f, P).double() @ self.mu64)
        return float(agg.aggregate(pt.G.index_select(0, P), f).double() @ self.mu64)
