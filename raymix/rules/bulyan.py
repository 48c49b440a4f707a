"""Bulyan (El Mhamdi et al., 2018) with any selection rule and any aggregation rule."""
from __future__ import annotations

import torch

from raymix.rules import _kernels as K
from raymix.rules.base import RULES, Rule, as_rule, need_4f_plus_3
from raymix.rules.basic import CoordinateMedian, Mean
from raymix.rules.geomed import GeometricMedian
from raymix.rules.krum import Krum

__all__ = ["Bulyan", "bulyan", "bulyan_select", "bulyan_classic_agg"]

# Families whose unchecked function still ranks rows on a set below their own bound
# (Krum's neighbour count is clamped to >= 1): Bulyan may run them on its shrinking set.
_SHRINK_SAFE = ("krum", "multi_krum", "mean")


def bulyan_select(G: torch.Tensor, f: int, select: Rule, generator=None) -> torch.Tensor:
    """The theta = n-2f row indices Bulyan picks, in the order picked: each round applies
    ``select`` to the remaining rows (with the same f) and removes the row it picks; a rule
    that does not return one of its rows picks the remaining row closest in l2 to its output.
    Rows at infinite distance (NaN/Inf entries, overflow) are never picked while a finite
    row remains.

    Krum, mean, l2 geomed and comed have incremental paths (the same picks as the rounds
    below, at the cost of about one round); the path is chosen by the rule's exact type and
    arguments, so a subclass or a wrapper (bucketing, whose family is its inner rule's) runs
    its own ``aggregate`` each round.

    On a GPU the (n, n) matrix of the Krum and Gram paths is computed there and its rounds run
    on the CPU: one copy of n^2 floats, where each round on the GPU would be a dozen small
    kernels and a host sync for its pick; comed's rounds stay on the GPU, without a sync."""
    n = G.shape[0]
    theta = n - 2 * f
    kind = type(select)
    if kind is Krum:
        # One distance matrix; the rounds update each row's neighbour sum in O(n)
        # (the same picks as krum_scores(D2[rem][:, rem], f, shrinking=True) per round).
        D2 = K.pairwise_sq_dists(G, float(select.p)).cpu()
        return torch.tensor(K.bulyan_krum_rounds(D2, f, theta), device=G.device)
    if kind is Mean or (kind is GeometricMedian and float(select.p) == 2):
        # One Gram matrix; mean: row sums updated per round; geomed: Weiszfeld warm-started
        # from the previous round (more than f bad rows: they come last, in order).
        Kf, bad = K.gram(G)
        wz = None if kind is Mean else (float(select.nu), int(select.iters), float(select.tol))
        return torch.tensor(K.bulyan_gram_rounds(Kf.cpu(), bad.cpu(), theta, wz), device=G.device)
    if kind is CoordinateMedian:
        # Per-column sorted lists with a moving median pointer; distances screened by one
        # matrix-vector product per round, candidates measured exactly.
        if G.device.type != "cpu":  # every round as tensor ops, no host sync
            return K.bulyan_comed_rounds_on_device(G, theta)
        return torch.tensor(K.bulyan_comed_rounds(G, theta))
    picked: list[int] = []
    rem_t = torch.arange(n)
    for _ in range(theta):
        sub = G.index_select(0, rem_t.to(G.device))
        z = select.aggregate(sub, f, generator=generator)
        i = int(torch.argmin(K.lp_dist_to(sub, z, 2.0)))
        picked.append(int(rem_t[i]))
        rem_t = torch.cat([rem_t[:i], rem_t[i + 1:]])
    return torch.tensor(picked, device=G.device)


def bulyan_classic_agg(G: torch.Tensor, f: int, rows: torch.Tensor | None = None) -> torch.Tensor:
    """El Mhamdi et al.'s aggregation of the theta rows (``rows``): per coordinate, the mean
    of the beta = theta-2f values closest to the coordinate-wise median (for even theta the
    average of the two middle values); ties go to the smaller value. NaN counts as +inf."""
    theta = G.shape[0] if rows is None else int(rows.numel())
    beta = theta - 2 * f
    lo_mid, hi_mid = (theta - 1) // 2, theta // 2

    def reduce(wires, out):
        S = torch.stack(wires)  # (theta, c), sorted along dim 0
        c = S.shape[1]
        med = (S[lo_mid] + S[hi_mid]) * 0.5
        L = torch.full((1, c), lo_mid, dtype=torch.long, device=S.device)
        R = L + 1
        acc = torch.zeros(c, dtype=S.dtype, device=S.device)
        inf = torch.tensor(float("inf"), dtype=S.dtype, device=S.device)
        for _ in range(beta):
            vl = S.gather(0, L.clamp(min=0))[0]
            vr = S.gather(0, R.clamp(max=theta - 1))[0]
            dl = torch.where(L[0] >= 0, (vl - med).abs(), inf)
            dr = torch.where(R[0] < theta, (vr - med).abs(), inf)
            left = dl <= dr
            acc += torch.where(left, vl, vr)
            L -= left.long()
            R += (~left).long()
        out.copy_(acc / beta)

    return K.order_statistics(G, range(theta), reduce, rows)


def _bulyan(G, f, select: Rule, agg: Rule | None, generator=None) -> torch.Tensor:
    picked = bulyan_select(G, f, select, generator)
    if agg is None:
        return bulyan_classic_agg(G, f, picked)
    if type(agg) is Mean:
        return K.combine_rows(G, torch.full((picked.numel(),), 1.0 / picked.numel(), dtype=torch.float64), picked)
    if type(agg) is CoordinateMedian:
        return K.coordinate_median_rows(G, picked)
    return agg.aggregate(G.index_select(0, picked.to(G.device)), f, generator=generator)


def bulyan(G: torch.Tensor, f: int, select="krum", agg=None, generator=None) -> torch.Tensor:
    """Bulyan: theta = n-2f rounds of ``select`` (default Krum) on the remaining rows, then
    ``agg`` over the theta picked rows (default: the beta = theta-2f values closest to the
    coordinate-wise median, averaged). ``select``/``agg`` are rules or spec strings.
    Needs n >= 4f+3."""
    return Bulyan(select=select, agg=agg)(G, f, generator)


@RULES.register("bulyan")
class Bulyan(Rule):
    """Bulyan (El Mhamdi et al., 2018): theta = n-2f rounds of a selection rule, then an aggregation.

    1. theta = n-2f rounds; each applies ``select`` (default Krum) to the remaining rows with
       the same f and removes the row it picks (a rule that does not return one of its rows
       picks the remaining row closest in l2 to its output; rows at infinite distance are
       never picked while a finite row remains).
    2. ``agg`` over the theta picked rows with the same f; default (``agg=None``), the classic
       aggregation: per coordinate, the mean of the beta = theta-2f values closest to the
       coordinate-wise median of the picked rows.

    Needs n >= 4f+3, ``agg``'s precondition on theta rows, and (for a selection rule other
    than Krum, Multi-Krum or mean) the selection rule's on 2f+1 rows.
    """

    needs = "n >= 4f+3 (and agg's own on n-2f rows)"

    def __init__(self, select="krum", agg=None):
        self.select = as_rule(f"rule {self.name}", "select", "krum" if select is None else select)
        self.agg = None if agg is None else as_rule(f"rule {self.name}", "agg", agg)

    def requirement(self, n, f):
        needs = need_4f_plus_3(n, f)
        if needs is not None:
            return needs
        theta = n - 2 * f
        if self.agg is not None:
            inner = self.agg.requirement(theta, f)
            if inner is not None:
                return f"its agg {self.agg.spec} to run on the theta = n-2f = {theta} selected rows, which needs {inner}"
        if self.select.family not in _SHRINK_SAFE:
            inner = self.select.requirement(2 * f + 1, f)
            if inner is not None:
                return f"its select {self.select.spec} to run on down to 2f+1 = {2 * f + 1} rows, which needs {inner}"
        return None

    def aggregate(self, G, f, generator=None):
        return _bulyan(G, f, self.select, self.agg, generator)
