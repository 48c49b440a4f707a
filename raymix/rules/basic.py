"""Mean, coordinate-wise median (comed) and coordinate-wise trimmed mean."""
from __future__ import annotations

import torch

from raymix.rules import _kernels as K
from raymix.rules.base import RULES, Rule, need_more_than_2f

__all__ = ["Mean", "CoordinateMedian", "TrimmedMean", "mean", "coordinate_median", "trimmed_mean"]


def mean(G: torch.Tensor, f: int = 0) -> torch.Tensor:
    """The plain average (not robust: one NaN row makes it NaN)."""
    return Mean()(G, f)


def _comed(G: torch.Tensor, f: int, generator=None) -> torch.Tensor:
    return K.coordinate_median_rows(G)


def coordinate_median(G: torch.Tensor, f: int = 0) -> torch.Tensor:
    """Coordinate-wise median; for even n the average of the two middle values.
    NaN counts as +inf. Needs n > 2f."""
    return CoordinateMedian()(G, f)


def _trimmed(G: torch.Tensor, f: int, generator=None) -> torch.Tensor:
    return K.trimmed_mean_rows(G, f)


def trimmed_mean(G: torch.Tensor, f: int) -> torch.Tensor:
    """Per coordinate, drop the f largest and f smallest values and average the rest
    (NaN counts as +inf). Needs n > 2f."""
    return TrimmedMean()(G, f)


@RULES.register("mean")
class Mean(Rule):
    """The average of the rows; not robust (one NaN row makes it NaN), the baseline.

    ``mean(G) = (1/n) sum_i G_i``. Needs nothing (any n >= 1, any f).
    """

    needs = "nothing (not robust)"

    def aggregate(self, G, f, generator=None):
        return G.mean(0)


@RULES.register("comed")
class CoordinateMedian(Rule):
    """Coordinate-wise median (comed).

    ``out_j = median_i G_ij``; for even n the average of the two middle values (the
    "midpoint" median, as numpy.median). NaN counts as +inf. Needs n > 2f (breakdown point).
    """

    needs = "n > 2f"

    def requirement(self, n, f):
        return need_more_than_2f(n, f)

    def aggregate(self, G, f, generator=None):
        return _comed(G, f, generator)


@RULES.register("trimmed_mean")
class TrimmedMean(Rule):
    """Coordinate-wise trimmed mean: drop the f smallest and f largest values, average the rest.

    ``out_j = (1/(n-2f)) sum_{k=f}^{n-f-1} sort_i(G_ij)_k``; NaN counts as +inf. Needs n > 2f.
    """

    needs = "n > 2f"

    def requirement(self, n, f):
        return need_more_than_2f(n, f)

    def aggregate(self, G, f, generator=None):
        return _trimmed(G, f, generator)
