"""Krum and Multi-Krum, generalized to l^p distances (MixTailor, eq. (3))."""
from __future__ import annotations

import torch

from raymix.rules import _kernels as K
from raymix.rules._common import check, int_arg, need_2f_plus_3, p_arg, spec_text
from raymix.rules.base import RULES, Rule

__all__ = ["krum", "multi_krum", "krum_scores"]


def krum_scores(D2: torch.Tensor, f: int, shrinking: bool = False) -> torch.Tensor:
    """Krum scores from an (m, m) matrix of squared distances: for each row, the sum of its
    squared distances to its k = m-f-2 nearest other rows. With ``shrinking`` (Bulyan's
    rounds, where m falls below 2f+3) k = max(m-f-2, min(2, m-1)), so rows are still ranked
    and a mutual-nearest pair does not tie. Infinite distances give infinite scores, never NaN."""
    m = D2.shape[0]
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
    p = p_arg("krum", p)
    check("krum", G, f, need_2f_plus_3)
    return _krum(G, f, p)


def _multi_krum(G: torch.Tensor, f: int, m: int | None = None, p: float = 2.0, generator=None) -> torch.Tensor:
    n = G.shape[0]
    m = n - f if m is None else m
    scores = krum_scores(K.pairwise_sq_dists(G, p), f)
    best = torch.topk(scores, m, largest=False, sorted=True).indices
    out = G[int(best[0])].clone()
    for i in best[1:].tolist():  # a loop over the m chosen workers, vectorized over d
        out.add_(G[i])
    return out.div_(m)


def _multi_krum_requirement(m: int | None):
    def requirement(n: int, f: int) -> str | None:
        needs = need_2f_plus_3(n, f)
        if needs is None and m is not None and m > n - f:
            return f"m <= n-f = {n - f} (m={m})"
        return needs

    return requirement


def multi_krum(G: torch.Tensor, f: int, m: int | None = None, p: float = 2) -> torch.Tensor:
    """The average of the m rows with the best Krum scores (default m = n-f). Needs n >= 2f+3
    and m <= n-f."""
    p = p_arg("multi_krum", p)
    m = int_arg("multi_krum", "m", m, 1, allow_none=True)
    check("multi_krum", G, f, _multi_krum_requirement(m))
    return _multi_krum(G, f, m, p)


@RULES.register("krum")
def _krum_factory(p=2) -> Rule:
    pv = p_arg("krum", p)
    return Rule(
        spec_text("krum", {"p": p}, {"p": 2}),
        "krum",
        lambda G, f, generator=None: _krum(G, f, pv),
        need_2f_plus_3,
    )


@RULES.register("multi_krum")
def _multi_krum_factory(m=None, p=2) -> Rule:
    pv = p_arg("multi_krum", p)
    mv = int_arg("multi_krum", "m", m, 1, allow_none=True)
    return Rule(
        spec_text("multi_krum", {"m": m, "p": p}, {"m": None, "p": 2}),
        "multi_krum",
        lambda G, f, generator=None: _multi_krum(G, f, mv, pv),
        _multi_krum_requirement(mv),
    )
