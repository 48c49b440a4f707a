"""Bulyan (El Mhamdi et al., 2018) with any selection rule and any aggregation rule."""
from __future__ import annotations

import torch

from raymix.rules import _kernels as K
from raymix.rules._common import check, need_4f_plus_3, rule_arg, spec_text
from raymix.rules.base import RULES, Rule
from raymix.rules.geomed import DEFAULTS as GEOMED_DEFAULTS, weiszfeld_coefficients
from raymix.rules.krum import krum_scores
from raymix.spec import parse_spec

__all__ = ["bulyan", "bulyan_select", "bulyan_classic_agg"]

# Families whose unchecked function still ranks rows on a set below their own bound
# (Krum's neighbour count is clamped to >= 1): Bulyan may run them on its shrinking set.
_SHRINK_SAFE = ("krum", "multi_krum", "mean")


def _plain_kwargs(rule: Rule, name: str) -> dict | None:
    spec = parse_spec(rule.spec)
    return spec.kwargs if spec.name == name else None


def bulyan_select(G: torch.Tensor, f: int, select: Rule, generator=None) -> torch.Tensor:
    """The theta = n-2f row indices Bulyan picks, in the order picked: each round applies
    ``select`` to the remaining rows (with the same f) and removes the row it picks; a rule
    that does not return one of its rows picks the remaining row closest in l2 to its output.
    Rows at infinite distance (NaN/Inf entries, overflow) are never picked while a finite
    row remains."""
    n = G.shape[0]
    theta = n - 2 * f
    picked: list[int] = []
    kw_krum = _plain_kwargs(select, "krum")
    kw_geomed = _plain_kwargs(select, "geomed")
    if kw_krum is not None:
        D2 = K.pairwise_sq_dists(G, float(kw_krum.get("p", 2)))
        rem = list(range(n))
        for _ in range(theta):
            idx = torch.tensor(rem)
            i = int(torch.argmin(krum_scores(D2[idx][:, idx], f, shrinking=True)))
            picked.append(rem.pop(i))
        return torch.tensor(picked)
    if select.family == "mean" or (kw_geomed is not None and float(kw_geomed.get("p", 2)) == 2):
        Kf, bad = K.gram(G)
        rem = [i for i in range(n) if not bool(bad[i])]
        tail = [i for i in range(n) if bool(bad[i])]
        g = {k: kw_geomed.get(k, GEOMED_DEFAULTS[k]) for k in ("nu", "iters", "tol")} if kw_geomed is not None else None
        for _ in range(theta):
            if not rem:  # more than f bad rows: fall back to them, in order
                picked.append(tail.pop(0))
                continue
            idx = torch.tensor(rem)
            Ks = Kf[idx][:, idx]
            m = len(rem)
            if g is None:
                alpha = torch.full((m,), 1.0 / m, dtype=torch.float64, device=Ks.device)
            else:
                alpha = weiszfeld_coefficients(Ks, float(g["nu"]), int(g["iters"]), float(g["tol"]))
            Ka = Ks @ alpha
            d2 = torch.diagonal(Ks) - 2 * Ka + alpha @ Ka
            picked.append(rem.pop(int(torch.argmin(d2))))
        return torch.tensor(picked)
    rem_t = torch.arange(n)
    for _ in range(theta):
        if select.family == "comed" and parse_spec(select.spec).name == "comed":
            z = K.coordinate_median_rows(G, rem_t)
            dist = K.lp_dist_to(G, z, 2.0, rem_t)
        else:
            sub = G.index_select(0, rem_t)
            z = select.fn(sub, f, generator=generator)
            dist = K.lp_dist_to(sub, z, 2.0)
        i = int(torch.argmin(dist))
        picked.append(int(rem_t[i]))
        rem_t = torch.cat([rem_t[:i], rem_t[i + 1:]])
    return torch.tensor(picked)


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
    if agg.family == "mean":
        return K.combine_rows(G, torch.full((picked.numel(),), 1.0 / picked.numel(), dtype=torch.float64), picked)
    if agg.family == "comed" and parse_spec(agg.spec).name == "comed":
        return K.coordinate_median_rows(G, picked)
    return agg.fn(G.index_select(0, picked), f, generator=generator)


def _requirement(select: Rule, agg: Rule | None):
    def requirement(n: int, f: int) -> str | None:
        needs = need_4f_plus_3(n, f)
        if needs is not None:
            return needs
        theta = n - 2 * f
        if agg is not None:
            inner = agg.requirement(theta, f)
            if inner is not None:
                return f"its agg {agg.spec} to run on the theta = n-2f = {theta} selected rows, which needs {inner}"
        if select.family not in _SHRINK_SAFE:
            inner = select.requirement(2 * f + 1, f)
            if inner is not None:
                return f"its select {select.spec} to run on down to 2f+1 = {2 * f + 1} rows, which needs {inner}"
        return None

    return requirement


def bulyan(G: torch.Tensor, f: int, select="krum", agg=None, generator=None) -> torch.Tensor:
    """Bulyan: theta = n-2f rounds of ``select`` (default Krum) on the remaining rows, then
    ``agg`` over the theta picked rows (default: the beta = theta-2f values closest to the
    coordinate-wise median, averaged). ``select``/``agg`` are rules or spec strings.
    Needs n >= 4f+3."""
    sel = rule_arg("bulyan", "select", select)
    ag = None if agg is None else rule_arg("bulyan", "agg", agg)
    check("bulyan", G, f, _requirement(sel, ag))
    return _bulyan(G, f, sel, ag, generator)


@RULES.register("bulyan")
def _bulyan_factory(select=None, agg=None) -> Rule:
    sel = rule_arg("bulyan", "select", "krum" if select is None else select)
    ag = None if agg is None else rule_arg("bulyan", "agg", agg)
    return Rule(
        spec_text("bulyan", {"select": select, "agg": agg}, {"select": None, "agg": None}),
        "bulyan",
        lambda G, f, generator=None: _bulyan(G, f, sel, ag, generator),
        _requirement(sel, ag),
    )
