"""Geometric median by smoothed Weiszfeld, with an l^p generalization."""
from __future__ import annotations

import torch

from raymix.rules import _kernels as K
from raymix import checks
from raymix.rules.base import RULES, Rule, need_more_than_2f

__all__ = ["GeometricMedian", "geometric_median", "weiszfeld_coefficients"]


def weiszfeld_coefficients(Kg: torch.Tensor, nu: float, iters: int, tol: float) -> torch.Tensor:
    """Smoothed Weiszfeld for l2 run entirely on the (m, m) float64 Gram matrix of m finite
    rows: the iterate is z = sum_i alpha_i x_i, so ||x_i - z||^2 = K_ii - 2 (K alpha)_i +
    alpha' K alpha and each step costs O(m^2), not O(m d). Starts at the mean; returns alpha."""
    m = Kg.shape[0]
    if m <= K.SMALL_ROWS and Kg.device.type == "cpu":
        return torch.from_numpy(K.small_weiszfeld(Kg.to(torch.float64).numpy(), nu, iters, tol))
    alpha = torch.full((m,), 1.0 / m, dtype=torch.float64, device=Kg.device)
    diag = torch.diagonal(Kg)
    for _ in range(iters):
        Ka = Kg @ alpha
        dist = (diag - 2 * Ka + alpha @ Ka).clamp_min(0).sqrt()
        w = 1.0 / dist.clamp_min(nu)
        new = w / w.sum()
        step = new - alpha
        dz2 = float((step @ (Kg @ step)).clamp_min(0))
        z2 = float((new @ (Kg @ new)).clamp_min(0))
        alpha = new
        if dz2 <= tol * tol * z2:
            break
    return alpha


def _geomed(G, f, p=2.0, nu=1e-6, iters=100, tol=1e-6, generator=None) -> torch.Tensor:
    if bool(K.bad_rows(G).all()):  # no finite row: the median is undefined, and says so
        return torch.full(G.shape[1:], float("nan"), dtype=G.dtype, device=G.device)
    if p == 2:
        Kf, bad = K.gram(G)
        if bool(bad.any()):
            rows = torch.nonzero(~bad).flatten()
            alpha = weiszfeld_coefficients(Kf[rows][:, rows], nu, iters, tol)
            return K.combine_rows(G, alpha, rows)
        return K.combine_rows(G, weiszfeld_coefficients(Kf, nu, iters, tol))
    bad = K.bad_rows(G)
    rows = torch.nonzero(~bad).flatten() if bool(bad.any()) else None
    m = G.shape[0] if rows is None else int(rows.numel())
    z = K.combine_rows(G, torch.full((m,), 1.0 / m, dtype=torch.float64), rows)
    for _ in range(iters):
        dist = K.lp_dist_to(G, z, p, rows)
        w = 1.0 / dist.clamp_min(nu)  # rows at infinite distance get weight 0
        total = w.sum()
        if not bool(torch.isfinite(total)) or float(total) <= 0:
            break
        new = K.combine_rows(G, w / total, rows)
        dz = float(torch.linalg.vector_norm((new - z).to(torch.float64)))
        zn = float(torch.linalg.vector_norm(new.to(torch.float64)))
        z = new
        if dz <= tol * zn:
            break
    return z


def geometric_median(G: torch.Tensor, f: int, p: float = 2, nu: float = 1e-6, iters: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """Smoothed Weiszfeld from the mean of the finite rows: z <- sum_i w_i x_i / sum_i w_i,
    w_i = 1 / max(nu, ||x_i - z||_p), until ||z_new - z||_2 <= tol ||z_new||_2 or ``iters``
    steps. For p = 2 the classic geometric median; for p != 2 the fixed point of the same
    iteration with l^p distances. Needs n > 2f. With no finite row at all: a NaN vector."""
    return GeometricMedian(p=p, nu=nu, iters=iters, tol=tol)(G, f)


@RULES.register("geomed")
class GeometricMedian(Rule):
    """Geometric median by smoothed Weiszfeld, with l^p distances in the weights.

    From the mean of the finite rows, iterate ``z <- sum_i w_i G_i / sum_i w_i`` with
    ``w_i = 1 / max(nu, ||G_i - z||_p)`` until ``||z_new - z||_2 <= tol ||z_new||_2`` or
    ``iters`` steps. p = 2: the classic (smoothed) geometric median, run on the Gram matrix;
    p != 2: the fixed point of the same iteration (not claimed to minimise the sum of l^p
    distances). Rows with NaN/Inf entries get weight 0; no finite row at all gives a NaN
    vector. ``p`` >= 1 or inf, ``nu`` > 0, ``iters`` >= 1, ``tol`` >= 0. Needs n > 2f.
    """

    needs = "n > 2f"

    def __init__(self, p: float = 2, nu: float = 1e-6, iters: int = 100, tol: float = 1e-6):
        owner = f"rule {self.name}"
        self.p = checks.number(owner, "p", p, lo=1, allow_inf=True)
        self.nu = checks.number(owner, "nu", nu, lo=0.0, strict=True)
        self.iters = checks.integer(owner, "iters", iters, lo=1)
        self.tol = checks.number(owner, "tol", tol, lo=0.0)

    def requirement(self, n, f):
        return need_more_than_2f(n, f)

    def aggregate(self, G, f, generator=None):
        return _geomed(G, f, self.p, self.nu, self.iters, self.tol)
