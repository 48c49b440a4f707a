"""Centered clipping (Karimireddy et al., 2021) and nearest-neighbour mixing (Allouah et al., 2023)."""
from __future__ import annotations

import torch

from raymix.rules import _kernels as K
from raymix import checks
from raymix.rules.base import RULES, Rule, as_rule, need_more_than_2f
from raymix.spec import Spec

__all__ = ["CenteredClipping", "NNM", "centered_clipping", "nnm", "nearest_neighbour_mixing"]


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
    rule = CenteredClipping(tau=tau, iters=iters)
    if center is None:
        return rule(G, f)
    rule.check_input(G, f)
    if not isinstance(center, torch.Tensor) or center.shape != G.shape[1:] or not bool(torch.isfinite(center).all()):
        raise checks.fail("rule centered_clipping", "center", f"a finite ({G.shape[1]},) tensor", center)
    return _cc(G, f, rule.tau, rule.iters, center)


@RULES.register("centered_clipping")
class CenteredClipping(Rule):
    """Centered clipping (Karimireddy et al., 2021), stateless: clipped steps from a robust centre.

    ``iters`` steps of ``z <- z + (1/n) sum_i (G_i - z) min(1, tau / ||G_i - z||_2)`` from
    ``center``: the coordinate-wise median of G (default), ``zero`` (the origin) or any rule's
    output (``center=geomed``). Rows with non-finite entries contribute nothing; a finite far
    row moves z by at most tau/n. ``tau`` > 0, ``iters`` >= 1. Needs n > 2f (and the centre
    rule's precondition).
    """

    needs = "n > 2f (and the centre rule's)"

    def __init__(self, tau: float = 10.0, iters: int = 1, center=None):
        owner = f"rule {self.name}"
        self.tau = checks.number(owner, "tau", tau, lo=0.0, strict=True)
        self.iters = checks.integer(owner, "iters", iters, lo=1)
        if isinstance(center, (Spec, str)) and str(center) == "zero":
            self.center = "zero"
        else:
            self.center = None if center is None else as_rule(owner, "center", center)

    def spec_args(self):
        args = super().spec_args()
        if self.center == "zero":
            args["center"] = Spec("zero")
        return args

    def requirement(self, n, f):
        needs = need_more_than_2f(n, f)
        if needs is None and isinstance(self.center, Rule):
            inner = self.center.requirement(n, f)
            if inner is not None:
                return f"its center rule {self.center.spec}, which needs {inner}"
        return needs

    def aggregate(self, G, f, generator=None):
        if self.center == "zero":
            c = torch.zeros(G.shape[1], dtype=G.dtype, device=G.device)
        elif self.center is None:
            c = None
        else:
            c = self.center.aggregate(G, f, generator=generator)
        return _cc(G, f, self.tau, self.iters, c)


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
    for s, e in K.column_chunks(G.shape[1], max(1024, (1 << 20) // n)):
        out[good, s:e] = Mg.to(G.dtype) @ G[good, s:e]
    return out


def nearest_neighbour_mixing(G: torch.Tensor, f: int) -> torch.Tensor:
    """The (n, d) stack after nearest-neighbour mixing (needs n > 2f)."""
    NNM().check_input(G, f)
    return _nnm_mix(G, f)


def nnm(G: torch.Tensor, f: int, rule="comed", generator=None) -> torch.Tensor:
    """Nearest-neighbour mixing, then ``rule`` (default comed) on the mixed rows."""
    return NNM(rule=rule)(G, f, generator)


@RULES.register("nnm")
class NNM(Rule):
    """Nearest-neighbour mixing (Allouah et al., 2023), then any rule on the mixed rows.

    Each row is replaced by the mean of its n-f nearest rows in l2 (itself included):
    ``M_i = (1/(n-f)) sum_{j in N_i} G_j``; then ``rule`` (default comed) is applied to M
    with the same f. A row with non-finite entries is never a neighbour of a finite row and
    is passed on unmixed. Needs n > 2f and the inner rule's precondition.
    """

    needs = "n > 2f and the inner rule's"

    def __init__(self, rule="comed"):
        self.rule = as_rule(f"rule {self.name}", "rule", "comed" if rule is None else rule)

    def requirement(self, n, f):
        needs = need_more_than_2f(n, f)
        if needs is None:
            sub = self.rule.requirement(n, f)
            if sub is not None:
                return f"its inner rule {self.rule.spec}, which needs {sub}"
        return needs

    def aggregate(self, G, f, generator=None):
        return self.rule.aggregate(_nnm_mix(G, f), f, generator=generator)
