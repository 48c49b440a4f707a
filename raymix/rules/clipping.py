"""Centered clipping (Karimireddy et al., 2021) and nearest-neighbour mixing (Allouah et al., 2023)."""
from __future__ import annotations

import torch

from raymix.rules import _kernels as K
from raymix.rules._common import check, float_arg, int_arg, need_more_than_2f, rule_arg, spec_text
from raymix.rules.base import RULES, Rule
from raymix.spec import Spec

__all__ = ["centered_clipping", "nnm", "nearest_neighbour_mixing"]


def _cc(G: torch.Tensor, f: int, tau: float, iters: int, center: torch.Tensor | None) -> torch.Tensor:
    n = G.shape[0]
    z = K.coordinate_median_rows(G) if center is None else center.to(G.dtype)
    bad = K.bad_rows(G)
    rows = torch.nonzero(~bad).flatten() if bool(bad.any()) else None
    for _ in range(iters):
        dist = K.lp_dist_to(G, z, 2.0, rows)
        # clip(x_i - z) = (x_i - z) * min(1, tau/||x_i - z||); rows with non-finite
        # entries contribute nothing; infinite distances give a factor of 0.
        scale = torch.where(dist > 0, (tau / dist).clamp(max=1.0), torch.ones_like(dist)) / n
        z = z * (1.0 - float(scale.sum())) + K.combine_rows(G, scale, rows)
    return z


def centered_clipping(G: torch.Tensor, f: int, tau: float = 10.0, iters: int = 1, center: torch.Tensor | None = None) -> torch.Tensor:
    """``iters`` steps of z <- z + (1/n) sum_i (x_i - z) min(1, tau / ||x_i - z||_2) from
    ``center`` (default: the coordinate-wise median; the runtime may pass the previous
    aggregate). Rows with non-finite entries contribute nothing. Needs n > 2f."""
    tau = float_arg("centered_clipping", "tau", tau, 0.0, strict=True)
    iters = int_arg("centered_clipping", "iters", iters, 1)
    check("centered_clipping", G, f, need_more_than_2f)
    if center is not None and (center.shape != G.shape[1:] or not bool(torch.isfinite(center).all())):
        raise ValueError(f"rule centered_clipping: center must be a finite ({G.shape[1]},) tensor")
    return _cc(G, f, tau, iters, center)


@RULES.register("centered_clipping")
def _cc_factory(tau=10.0, iters=1, center=None) -> Rule:
    tv = float_arg("centered_clipping", "tau", tau, 0.0, strict=True)
    iv = int_arg("centered_clipping", "iters", iters, 1)
    zero = isinstance(center, (Spec, str)) and str(center) == "zero"
    crule = None if center is None or zero else rule_arg("centered_clipping", "center", center)

    def fn(G, f, generator=None):
        if zero:
            c = torch.zeros(G.shape[1], dtype=G.dtype, device=G.device)
        elif crule is None:
            c = None
        else:
            c = crule.fn(G, f, generator=generator)
        return _cc(G, f, tv, iv, c)

    def requirement(n: int, f: int) -> str | None:
        needs = need_more_than_2f(n, f)
        if needs is None and crule is not None:
            inner = crule.requirement(n, f)
            if inner is not None:
                return f"its center rule {crule.spec}, which needs {inner}"
        return needs

    return Rule(
        spec_text("centered_clipping", {"tau": tau, "iters": iters, "center": center}, {"tau": 10.0, "iters": 1, "center": None}),
        "centered_clipping",
        fn,
        requirement,
    )


def _nnm_mix(G: torch.Tensor, f: int) -> torch.Tensor:
    """Each row replaced by the mean of its n-f nearest rows in l2 (itself included)."""
    n = G.shape[0]
    Kf, bad = K.gram(G)
    D2 = K.sq_dists_from_gram(Kf, bad)
    nb = torch.topk(D2, n - f, dim=1, largest=False, sorted=True).indices
    M = torch.zeros(n, n, dtype=torch.float64, device=D2.device)
    M.scatter_(1, nb, 1.0 / (n - f))
    if not bool(bad.any()):
        return M.to(G.dtype) @ G
    good = torch.nonzero(~bad).flatten()
    out = G.clone()  # bad rows stay as they are (the inner rule must cope with them)
    Mg = M[good][:, good]
    for s, e in K._chunks(G.shape[1], max(1024, (1 << 20) // n)):
        out[good, s:e] = Mg.to(G.dtype) @ G[good, s:e]
    return out


def nearest_neighbour_mixing(G: torch.Tensor, f: int) -> torch.Tensor:
    """The (n, d) stack after nearest-neighbour mixing (needs n > 2f)."""
    check("nnm", G, f, need_more_than_2f)
    return _nnm_mix(G, f)


def nnm(G: torch.Tensor, f: int, rule="comed", generator=None) -> torch.Tensor:
    """Nearest-neighbour mixing, then ``rule`` (default comed) on the mixed rows."""
    inner = rule_arg("nnm", "rule", rule)
    check("nnm", G, f, _nnm_requirement(inner))
    return inner.fn(_nnm_mix(G, f), f, generator=generator)


def _nnm_requirement(inner: Rule):
    def requirement(n: int, f: int) -> str | None:
        needs = need_more_than_2f(n, f)
        if needs is None:
            sub = inner.requirement(n, f)
            if sub is not None:
                return f"its inner rule {inner.spec}, which needs {sub}"
        return needs

    return requirement


@RULES.register("nnm")
def _nnm_factory(rule=None) -> Rule:
    inner = rule_arg("nnm", "rule", "comed" if rule is None else rule)
    return Rule(
        spec_text("nnm", {"rule": rule}, {"rule": None}),
        "nnm",
        lambda G, f, generator=None: inner.fn(_nnm_mix(G, f), f, generator=generator),
        _nnm_requirement(inner),
    )
