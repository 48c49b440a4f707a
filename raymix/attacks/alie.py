"""A Little Is Enough (Baruch, Baruch & Goldberg, NeurIPS 2019)."""
from __future__ import annotations

import math
from statistics import NormalDist

import torch

from raymix import checks
from raymix.attacks.base import ATTACKS, AdversaryView, Attack, spec_text

__all__ = ["ALIE", "alie_z"]


def alie_z(n: int, f: int) -> float:
    """z_max of ALIE: s = floor(n/2 + 1) - f supporters needed, z = Phi^-1((n - s) / n)."""
    s = math.floor(n / 2 + 1) - f
    if not 0 < s < n:
        raise ValueError(
            f"attack alie cannot derive z with n={n}, f={f}: s = floor(n/2+1) - f = {s} must satisfy 0 < s < n "
            f"(f too large for ALIE's majority argument; pass a fixed z instead)"
        )
    return NormalDist().inv_cdf((n - s) / n)


@ATTACKS.register("alie")
class ALIE(Attack):
    """A Little Is Enough (Baruch et al., 2019): the honest mean shifted by z standard deviations.

    ``alie(z=none)``: every Byzantine row is ``b = mu - z * sigma``, with mu and sigma the
    per-coordinate mean and standard deviation of the visible honest rows (sigma unbiased, 0
    when a single row is visible). ``z=none`` derives z from (n, f) (:func:`alie_z`):
    ``s = floor(n/2 + 1) - f``, ``z = Phi^-1((n - s) / n)``, which needs 0 < s < n
    (``check(n, f)`` raises otherwise); a fixed finite ``z`` has no precondition. Needs at
    least one visible honest row.
    """

    name = "alie"
    needs = "0 < floor(n/2+1) - f < n when z=none"

    def __init__(self, z: float | None = None):
        self.z = None if z is None else checks.number(f"attack {self.name}", "z", z)
        self._args = {"z": z}
        self.spec = spec_text(self.name, self._args)

    def check(self, n: int, f: int) -> None:
        super().check(n, f)
        if self.z is None and f > 0:
            alie_z(n, f)

    def z_for(self, n: int, f: int) -> float:
        return self.z if self.z is not None else alie_z(n, f)

    def craft(self, view: AdversaryView) -> torch.Tensor:
        z = self.z_for(view.n, view.f)
        mu = view.honest.mean(dim=0)
        sigma = view.honest.std(dim=0, correction=1) if view.k >= 2 else torch.zeros_like(mu)
        row = mu - z * sigma
        return row.unsqueeze(0).expand(view.f, -1).clone()
