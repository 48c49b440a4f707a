"""The AGR-agnostic Min-Max and Min-Sum attacks (Shejwalkar & Houmansadr, "Manipulating the
Byzantine: Optimizing Model Poisoning Attacks and Defenses for Federated Learning", NDSS 2021,
section IV-C and Algorithm 1).

Both send f copies of ``b = mu + gamma * p``, mu the visible honest mean and p a perturbation
direction (``unit``: -mu/||mu||, ``sign``: -sign(mu), ``std``: -sigma, the per-coordinate
unbiased standard deviation), with the largest gamma whose crafted row stays as close to the
honest rows as they are to each other:

- Min-Max: ``max_i ||b - h_i||^2 <= max_{i,j} ||h_i - h_j||^2``;
- Min-Sum: ``sum_i ||b - h_i||^2 <= max_i sum_j ||h_i - h_j||^2`` (``bound=max``, the paper's
  equation) or ``<= min_i sum_j ||h_i - h_j||^2`` (``bound=min``, the authors' released code).

gamma is found by the paper's halving search: gamma = gamma_init, step = gamma_init,
gamma_succ = 0; while |gamma_succ - gamma| > tau: if gamma passes, gamma_succ = gamma and
gamma += step/2, else gamma -= step/2; step /= 2. The result is gamma_succ. It is a bisection
of [0, 2 gamma_init): the feasible gammas >= 0 form an interval [0, gamma*] (the constraint is
convex in gamma and holds at gamma = 0), and the search ends with gamma_succ feasible and
gamma_succ + 2 tau infeasible, unless gamma* >= 2 gamma_init - 2 tau (then gamma_succ is
within 2 tau of 2 gamma_init).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from raymix import checks
from raymix.attacks.base import ATTACKS, AdversaryView, Attack, spec_text
from raymix.rules import _kernels as K

__all__ = ["MinMax", "MinSum", "DIRECTIONS", "perturbation", "halving_search"]

DIRECTIONS = ("unit", "sign", "std")


def perturbation(H: torch.Tensor, direction: str) -> torch.Tensor:
    """p (float64, (d,)) for the visible honest rows H: ``unit``: -mu/||mu|| (0 if mu = 0),
    ``sign``: -sign(mu), ``std``: -sigma (unbiased per-coordinate standard deviation)."""
    H64 = H.to(torch.float64)
    mu = H64.mean(0)
    if direction == "unit":
        norm = float(torch.linalg.vector_norm(mu))
        return -mu / norm if norm > 0 else torch.zeros_like(mu)
    if direction == "sign":
        return -torch.sign(mu)
    return -H64.std(dim=0, correction=1)


def halving_search(ok: Callable[[float], bool], gamma_init: float, tau: float) -> float:
    """The paper's search for the largest gamma with ``ok(gamma)``: the last gamma that passed
    (0.0 if none did)."""
    gamma, step, succ = float(gamma_init), float(gamma_init), 0.0
    while abs(succ - gamma) > tau:
        if ok(gamma):
            succ = gamma
            gamma += step / 2
        else:
            gamma -= step / 2
        step /= 2
    return succ


class _Terms:
    """What every gamma's test needs, in float64, from one pass over the rows by column chunks:
    with x_i = h_i - mu, ||b - h_i||^2 = ||x_i||^2 - 2 gamma <x_i, p> + gamma^2 ||p||^2, and
    ||h_i - h_j||^2 = ||x_i||^2 + ||x_j||^2 - 2 <x_i, x_j> (centred, so no cancellation of
    ||mu||^2)."""

    def __init__(self, H: torch.Tensor, p: torch.Tensor):
        k, d = H.shape
        mu = H.to(torch.float64).mean(0)
        self.mu, self.p = mu, p
        gram = torch.zeros(k, k, dtype=torch.float64, device=H.device)
        xp = torch.zeros(k, dtype=torch.float64, device=H.device)
        for s, e in K.column_chunks(d, max(1024, (1 << 20) // max(k, 1))):
            X = H[:, s:e].to(torch.float64) - mu[s:e]
            gram += X @ X.T
            xp += X @ p[s:e]
        self.sq = torch.diagonal(gram).clone()          # ||x_i||^2
        self.xp = xp                                    # <x_i, p>
        self.pp = float(p @ p)                          # ||p||^2
        self.pair = (self.sq[:, None] + self.sq[None, :] - 2 * gram).clamp_min(0)  # ||h_i - h_j||^2
        self.pair.fill_diagonal_(0.0)

    def to_crafted(self, gamma: float) -> torch.Tensor:
        """(k,) ||b(gamma) - h_i||^2."""
        return (self.sq - 2 * gamma * self.xp + gamma * gamma * self.pp).clamp_min(0)


class _AgrAgnostic(Attack):
    """Shared by Min-Max and Min-Sum: the direction, the search and the crafted rows."""

    needs = "two visible honest rows"
    min_visible = 2

    def _init_search(self, direction, gamma_init, tau) -> None:
        owner = f"attack {self.name}"
        self.direction = checks.choice(owner, "direction", direction, DIRECTIONS)
        self.gamma_init = checks.number(owner, "gamma_init", gamma_init, lo=0.0, strict=True)
        self.tau = checks.number(owner, "tau", tau, lo=0.0, strict=True)
        if self.tau >= self.gamma_init:
            raise checks.fail(owner, "tau", f"a finite number > 0 and < gamma_init = {self.gamma_init:g}", tau)
        self.last_gamma: float | None = None

    def limit(self, t: _Terms) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def value(self, t: _Terms, gamma: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def choose(self, view: AdversaryView) -> tuple[float, torch.Tensor]:
        """(gamma, crafted row in float64) for this view; sets ``last_gamma``."""
        p = perturbation(view.honest, self.direction)
        t = _Terms(view.honest, p)
        bound = self.limit(t)
        gamma = halving_search(lambda g: self.value(t, g) <= bound, self.gamma_init, self.tau)
        self.last_gamma = gamma
        return gamma, t.mu + gamma * p

    def craft(self, view: AdversaryView) -> torch.Tensor:
        _, row = self.choose(view)
        return row.to(view.honest.dtype).unsqueeze(0).expand(view.f, -1).clone()


@ATTACKS.register("min_max")
class MinMax(_AgrAgnostic):
    """Min-Max (Shejwalkar & Houmansadr, NDSS 2021): the honest mean pushed along p as far as the honest rows' own spread allows.

    ``min_max(direction=std, gamma_init=10, tau=1e-5)``: every Byzantine row is
    ``b = mu + gamma * p`` over the visible honest rows H (mu their mean; ``direction``:
    ``unit`` p = -mu/||mu||, ``sign`` p = -sign(mu), ``std`` p = -sigma, the unbiased
    per-coordinate standard deviation, the paper's default), with gamma the largest value such
    that ``max_i ||b - h_i||_2 <= max_{i,j} ||h_i - h_j||_2``, found by the paper's halving
    search from ``gamma_init`` (> 0) to the tolerance ``tau`` (0 < tau < gamma_init); it
    searches [0, 2 gamma_init). ``last_gamma`` holds the gamma of the last call. Knowledge:
    the honest gradients, not the rule. Needs two visible honest rows.
    """

    name = "min_max"

    def __init__(self, direction: str = "std", gamma_init: float = 10.0, tau: float = 1e-5):
        self._init_search(direction, gamma_init, tau)
        self._args = {"direction": self.direction, "gamma_init": gamma_init, "tau": tau}
        self.spec = spec_text(self.name, self._args)

    def limit(self, t: _Terms) -> float:
        return float(t.pair.max())

    def value(self, t: _Terms, gamma: float) -> float:
        return float(t.to_crafted(gamma).max())


@ATTACKS.register("min_sum")
class MinSum(_AgrAgnostic):
    """Min-Sum (Shejwalkar & Houmansadr, NDSS 2021): the honest mean pushed along p while its summed squared distance stays an honest row's.

    ``min_sum(direction=std, gamma_init=10, tau=1e-5, bound=max)``: every Byzantine row is
    ``b = mu + gamma * p`` (mu and p as in ``min_max``), with gamma the largest value such
    that ``sum_i ||b - h_i||_2^2 <= max_i sum_j ||h_i - h_j||_2^2`` (``bound=max``: the
    paper's equation) or ``<= min_i sum_j ||h_i - h_j||_2^2`` (``bound=min``: the authors'
    released code, stricter), i, j over the visible honest rows, found by the paper's
    halving search from ``gamma_init`` (> 0) to ``tau`` (0 < tau < gamma_init). Since
    ``sum_i (h_i - mu) = 0`` the left side is ``sum_i ||h_i - mu||^2 + k gamma^2 ||p||^2``.
    ``last_gamma`` holds the gamma of the last call. Needs two visible honest rows.
    """

    name = "min_sum"

    def __init__(self, direction: str = "std", gamma_init: float = 10.0, tau: float = 1e-5, bound: str = "max"):
        self._init_search(direction, gamma_init, tau)
        self.bound = checks.choice(f"attack {self.name}", "bound", bound, ("max", "min"))
        self._args = {"direction": self.direction, "gamma_init": gamma_init, "tau": tau, "bound": self.bound}
        self.spec = spec_text(self.name, self._args)

    def limit(self, t: _Terms) -> float:
        sums = t.pair.sum(1)
        return float(sums.max() if self.bound == "max" else sums.min())

    def value(self, t: _Terms, gamma: float) -> float:
        return math.fsum(t.to_crafted(gamma).tolist())
