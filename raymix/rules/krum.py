"""Krum and Multi-Krum, generalized to l^p distances (MixTailor, eq. (3))."""
from __future__ import annotations

import torch

from raymix.rules import _kernels as K
from raymix import checks
from raymix.rules.base import RULES, Rule, need_2f_plus_3

__all__ = ["Krum", "MultiKrum", "krum", "multi_krum", "krum_scores"]


def krum_scores(D2: torch.Tensor, f: int, shrinking: bool = False) -> torch.Tensor:
    """Krum scores from an (m, m) matrix of squared distances: for each row, the sum of its
    squared distances to its k = m-f-2 nearest other rows. With ``shrinking`` (Bulyan's
    rounds, where m falls below 2f+3) k = max(m-f-2, min(2, m-1)), so rows are still ranked
    and a mutual-nearest pair does not tie. Infinite distances give infinite scores, never NaN."""
    m = D2.shape[0]
    if m <= K.SMALL_ROWS and D2.device.type == "cpu" and D2.dtype == torch.float64:
        return torch.from_numpy(K.small_krum_scores(D2.numpy(), f, shrinking))
    if m == 1:
        return torch.zeros(1, dtype=D2.dtype, device=D2.device)
    k = max(m - f - 2, min(2, m - 1)) if shrinking else max(m - f - 2, 1)
    off = D2.clone()
    off.fill_diagonal_(float("inf"))
    near = torch.topk(off, k, dim=1, largest=False, sorted=False).values
    return torch.nan_to_num(near.sum(1), nan=float("inf"))


def _krum_index(G: torch.Tensor, f: int, p: float) -> int:
    return int(torch.argmin(krum_scores(K.pairwise_sq_dists(G, p), f)))


def _krum(G: torch.Tensor, f: int, p: float = 2.0, generator=None) -> torch.Tensor:
    return G[_krum_index(G, f, p)].clone()


def krum(G: torch.Tensor, f: int, p: float = 2) -> torch.Tensor:
    """The row with the smallest sum of squared l^p distances to its n-f-2 nearest
    neighbours. Needs n >= 2f+3."""
    return Krum(p=p)(G, f)


def _multi_krum(G: torch.Tensor, f: int, m: int | None = None, p: float = 2.0, generator=None) -> torch.Tensor:
    n = G.shape[0]
    m = n - f if m is None else m
    scores = krum_scores(K.pairwise_sq_dists(G, p), f)
    best = torch.topk(scores, m, largest=False, sorted=True).indices
    out = G[int(best[0])].clone()
    for i in best[1:].tolist():  # a loop over the m chosen workers, vectorized over d
        out.add_(G[i])
    return out.div_(m)


def multi_krum(G: torch.Tensor, f: int, m: int | None = None, p: float = 2) -> torch.Tensor:
    """The average of the m rows with the best Krum scores (default m = n-f). Needs n >= 2f+3
    and m <= n-f."""
    return MultiKrum(m=m, p=p)(G, f)


@RULES.register("krum")
class Krum(Rule):
    """Krum with l^p distances: the row closest to its n-f-2 nearest neighbours.

    ``score_i = sum_{j in N_i} ||G_i - G_j||_p^2`` over the k = n-f-2 rows j != i nearest to
    row i (MixTailor eq. (3)); the output is a copy of the row with the smallest score (ties:
    the lowest index). NaN/Inf rows are at infinite distance, never chosen while a finite row
    remains. ``p``: a real >= 1 or inf. Needs n >= 2f+3.
    """

    needs = "n >= 2f+3"

    def __init__(self, p: float = 2):
        self.p = checks.number(f"rule {self.name}", "p", p, lo=1, allow_inf=True)

    def requirement(self, n, f):
        return need_2f_plus_3(n, f)

    def aggregate(self, G, f, generator=None):
        return _krum(G, f, self.p)


@RULES.register("multi_krum")
class MultiKrum(Rule):
    """Multi-Krum: the average of the m rows with the best Krum scores.

    The scores are Krum's (``score_i = sum_{j in N_i} ||G_i - G_j||_p^2``, k = n-f-2
    neighbours); the output is ``(1/m) sum`` of the m best-scored rows, m = n-f by default.
    Needs n >= 2f+3 and m <= n-f.
    """

    needs = "n >= 2f+3 and m <= n-f"

    def __init__(self, m: int | None = None, p: float = 2):
        self.m = checks.integer(f"rule {self.name}", "m", m, lo=1, optional=True)
        self.p = checks.number(f"rule {self.name}", "p", p, lo=1, allow_inf=True)

    def requirement(self, n, f):
        needs = need_2f_plus_3(n, f)
        if needs is None and self.m is not None and self.m > n - f:
            return f"m <= n-f = {n - f} (m={self.m})"
        return needs

    def aggregate(self, G, f, generator=None):
        return _multi_krum(G, f, self.m, self.p)
