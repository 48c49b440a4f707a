"""Mean, coordinate-wise median (comed) and coordinate-wise trimmed mean."""
from __future__ import annotations

import torch

from raymix.rules import _kernels as K
from raymix.rules._common import check, need_more_than_2f
from raymix.rules.base import RULES, Rule

__all__ = ["mean", "coordinate_median", "trimmed_mean"]


def _no_requirement(n: int, f: int) -> None:
    return None


def mean(G: torch.Tensor, f: int = 0) -> torch.Tensor:
    """The plain average (not robust: one NaN row makes it NaN)."""
    check("mean", G, f, _no_requirement)
    return G.mean(0)


def _comed(G: torch.Tensor, f: int, generator=None) -> torch.Tensor:
    return K.coordinate_median_rows(G)


def coordinate_median(G: torch.Tensor, f: int = 0) -> torch.Tensor:
    """Coordinate-wise median; for even n the average of the two middle values.
    NaN counts as +inf. Needs n > 2f."""
    check("comed", G, f, need_more_than_2f)
    return _comed(G, f)


def _trimmed(G: torch.Tensor, f: int, generator=None) -> torch.Tensor:
    n = G.shape[0]
    keep = list(range(f, n - f))
    scale = 1.0 / len(keep)

    def reduce(w, out):
        out.copy_(w[keep[0]])
        for k in keep[1:]:
            out.add_(w[k])
        out.mul_(scale)

    return K.order_statistics(G, keep, reduce)


def trimmed_mean(G: torch.Tensor, f: int) -> torch.Tensor:
    """Per coordinate, drop the f largest and f smallest values and average the rest
    (NaN counts as +inf). Needs n > 2f."""
    check("trimmed_mean", G, f, need_more_than_2f)
    return _trimmed(G, f)


@RULES.register("mean")
def _mean_factory() -> Rule:
    return Rule("mean", "mean", lambda G, f, generator=None: G.mean(0), _no_requirement)


@RULES.register("comed")
def _comed_factory() -> Rule:
    return Rule("comed", "comed", _comed, need_more_than_2f)


@RULES.register("trimmed_mean")
def _trimmed_factory() -> Rule:
    return Rule("trimmed_mean", "trimmed_mean", _trimmed, need_more_than_2f)
