"""Full-knowledge local model poisoning attacks of Fang, Cao, Jia & Gong (USENIX Security 2020),
"Local Model Poisoning Attacks to Byzantine-Robust Federated Learning", in gradient space.

Fang et al. work on local MODELS w_i = w_Re - lr * g_i around the current global model w_Re;
with lr = 1 the model deviation w_i - w_Re is -g_i, so the formulas below are theirs with
w_Re -> 0, local models -> -gradients, and "the direction in which the global parameter would
change" s_j -> -sign(mean_j of the honest gradients). Exact formulas are in docs/attacks.md.
"""
from __future__ import annotations

import math

import torch

from raymix import checks
from raymix.attacks.base import ATTACKS, AdversaryView, Attack, check_simulation, rand_normal, rand_uniform, spec_text
from raymix.rules.krum import Krum

__all__ = ["FangKrum", "FangTrim", "fang_trim_rows"]


def _p_distances(A: torch.Tensor, B: torch.Tensor, p: float) -> torch.Tensor:
    """(a, b) matrix of l^p distances between the rows of A and of B (float64)."""
    return torch.cdist(A.double().unsqueeze(0), B.double().unsqueeze(0), p=p).squeeze(0)


@ATTACKS.register("fang_krum")
class FangKrum(Attack):
    """Fang et al.'s full-knowledge attack on Krum: the largest step against sign(mean) that Krum still selects.

    ``fang_krum(p=2, spread=0, ref=zero, threshold=1e-5, max_halvings=60)``. s = sign(mean of
    the visible honest gradients). Crafted row ``b_1 = ref - lambda * s``, with ref = 0
    (``ref=zero``, Fang et al. in gradient space) or the honest mean (``ref=mean``). lambda
    starts at Fang et al.'s upper bound (:meth:`upper_bound`, in l^p distances) and is halved
    until Krum (``Krum(p=p)``) applied to [honest; b_1..b_f] returns a crafted row, or until
    the next lambda would fall below ``threshold`` (then the last lambda is used). The other
    f-1 rows are b_1 (``spread=0``, as in Fang et al.'s search) or b_1 plus a uniform point of
    the l2 ball of radius ``spread * ||b_1 - ref||`` (fixed directions, so the search sees the
    rows it sends). ``p`` >= 1 or inf, ``spread`` >= 0, ``threshold`` > 0, ``max_halvings``
    >= 0. Needs Krum's precondition n >= 2f+3, on the k + f simulated rows too.
    """

    name = "fang_krum"
    needs = "n >= 2f+3 (Krum's), and k + f >= 2f+3 visible + crafted rows"

    def __init__(self, p: float = 2, spread: float = 0.0, ref: str = "zero", threshold: float = 1e-5, max_halvings: int = 60):
        owner = f"attack {self.name}"
        self.p = checks.number(owner, "p", p, lo=1, allow_inf=True)
        self.spread = checks.number(owner, "spread", spread, lo=0.0)
        self.ref = checks.choice(owner, "ref", ref, ("zero", "mean"))
        self.threshold = checks.number(owner, "threshold", threshold, lo=0.0, strict=True)
        self.max_halvings = checks.integer(owner, "max_halvings", max_halvings, lo=0)
        self.rule = Krum(p=self.p)
        self._args = {"p": p, "spread": spread, "ref": self.ref, "threshold": threshold, "max_halvings": max_halvings}
        self.spec = spec_text(self.name, self._args)
        self.last_lambda: float | None = None
        self.last_selected: bool | None = None

    def check(self, n: int, f: int) -> None:
        super().check(n, f)
        if f > 0:
            self.rule.check(n, f)

    def upper_bound(self, honest: torch.Tensor, n: int, f: int) -> float:
        """Fang et al.'s bound, gradient space, l^p distances:

        lambda_max = 1 / ((n - 2f - 1) * d^(1/p)) * min_i sum_{l in Gamma_i} ||g_l - g_i||_p
                   + 1 / d^(1/p) * max_i ||g_i||_p

        Gamma_i: the n-f-2 honest gradients nearest g_i (fewer if fewer are visible)."""
        k, d = honest.shape
        dp = d ** (1.0 / self.p) if not math.isinf(self.p) else 1.0
        term2 = float(torch.linalg.vector_norm(honest.double(), ord=self.p, dim=1).max()) / dp
        m = min(n - f - 2, k - 1)
        if m < 1 or n - 2 * f - 1 < 1:
            return term2
        D = _p_distances(honest, honest, self.p)
        D.fill_diagonal_(float("inf"))
        near = torch.topk(D, m, dim=1, largest=False).values.sum(1)
        return float(near.min()) / ((n - 2 * f - 1) * dp) + term2

    def craft(self, view: AdversaryView) -> torch.Tensor:
        check_simulation(self.spec, self.rule, view)
        H = view.honest
        mu = H.mean(dim=0)
        s = torch.sign(mu)
        ref = torch.zeros_like(mu) if self.ref == "zero" else mu
        f, d = view.f, view.d
        offsets = torch.zeros((f, d), dtype=H.dtype, device=H.device)
        if self.spread > 0 and f > 1:
            # Uniform points of the unit l2 ball, drawn once from the adversary's generator.
            u = rand_normal(view, (f - 1, d))
            u = u / torch.linalg.vector_norm(u, dim=1, keepdim=True).clamp_min(1e-30)
            r = rand_uniform(view, (f - 1, 1)).pow(1.0 / d)
            offsets[1:] = u * r * self.spread * float(torch.linalg.vector_norm(s.double()))
        lam = self.upper_bound(H, view.n, f)
        if not math.isfinite(lam) or lam <= 0:
            lam = self.threshold
        selected = False
        rows = None
        for _ in range(self.max_halvings + 1):
            rows = (ref - lam * s).unsqueeze(0) + lam * offsets
            G = torch.cat([H, rows], dim=0)
            out = self.rule(G, f)
            selected = _is_one_of(out, rows, H)
            if selected or lam / 2 < self.threshold:
                break
            lam /= 2
        self.last_lambda, self.last_selected = lam, selected
        return rows


def _is_one_of(out: torch.Tensor, crafted: torch.Tensor, honest: torch.Tensor) -> bool:
    """Whether ``out`` (a Krum output, a copy of one input row) is one of the crafted rows."""
    dc = torch.linalg.vector_norm((crafted - out).double(), dim=1).min()
    dh = torch.linalg.vector_norm((honest - out).double(), dim=1).min() if honest.shape[0] else torch.tensor(float("inf"))
    return bool(dc <= dh and dc <= 1e-6 * (1.0 + float(torch.linalg.vector_norm(out.double()))))


def fang_trim_rows(view: AdversaryView, b: float) -> torch.Tensor:
    """Fang et al.'s full-knowledge Trim attack (against trimmed mean and median), per coordinate j:

    s_j = sign(sum_i g_ij) over the visible honest gradients; e_j = min_i g_ij if s_j > 0,
    max_i g_ij if s_j < 0 (0 if s_j = 0). Each Byzantine row, independently per coordinate,
    with r ~ U[1, b] from the adversary's generator:
    e_j / r if s_j * e_j > 0, e_j * r if s_j * e_j < 0 (0 otherwise).
    So every value lies beyond the most extreme honest value on the side opposite to the
    honest mean: in [e_j / b, e_j] or [b * e_j, e_j] when s_j > 0, mirrored when s_j < 0.
    """
    H = view.honest
    s = torch.sign(H.sum(dim=0))
    e = torch.where(s > 0, H.min(dim=0).values, torch.where(s < 0, H.max(dim=0).values, torch.zeros_like(s)))
    r = 1.0 + (b - 1.0) * rand_uniform(view, (view.f, view.d))
    se = s * e
    shrink = (se > 0).to(H.dtype)
    grow = (se < 0).to(H.dtype)
    return e * (shrink / r + grow * r)


@ATTACKS.register("fang_trimmed_mean")
class FangTrim(Attack):
    """Fang et al.'s full-knowledge Trim attack on the trimmed mean and the median: values just beyond the honest extremes.

    ``fang_trimmed_mean(b=2)`` / ``fang_median(b=2)`` (the same construction serves both
    rules, as in the paper). Per coordinate j: ``s_j = sign(sum_i H_ij)``, ``e_j = min_i H_ij``
    if s_j > 0, ``max_i H_ij`` if s_j < 0 (0 if s_j = 0); each crafted value is ``e_j / r`` if
    ``s_j e_j > 0`` and ``e_j * r`` if ``s_j e_j < 0``, with ``r ~ U[1, b]`` drawn per row and
    coordinate from the adversary's generator (see :func:`fang_trim_rows`). ``b`` > 1. Needs
    at least one visible honest row.
    """

    name = "fang_trimmed_mean"
    needs = "one visible honest row"

    def __init__(self, b: float = 2.0):
        self.b = checks.number(f"attack {self.name}", "b", b, lo=1, strict=True)
        self._args = {"b": b}
        self.spec = spec_text(self.name, self._args)

    def craft(self, view: AdversaryView) -> torch.Tensor:
        return fang_trim_rows(view, self.b)


@ATTACKS.register("fang_median")
class FangMedian(FangTrim):
    __doc__ = FangTrim.__doc__
    name = "fang_median"
