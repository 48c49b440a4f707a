"""A rule: the mean of the rows, each clipped to the median row norm."""
import torch

from raymix import checks
from raymix.rules import RULES, Rule


@RULES.register("clipped_mean")
class ClippedMean(Rule):
    """Mean of the rows after clipping each to ``scale`` times the median row norm.

    tau = scale * median_i ||x_i||, out = mean_i x_i * min(1, tau / ||x_i||). Needs n > 2f:
    the median norm is then within the honest rows' norms. A row with a non-finite entry
    counts as infinitely long and contributes nothing.
    """

    needs = "n > 2f"

    def __init__(self, scale: float = 1.0):
        self.scale = checks.number("rule clipped_mean", "scale", scale, lo=0.0, strict=True)

    def requirement(self, n, f):
        return None if n > 2 * f else f"n > 2f = {2 * f}"

    def aggregate(self, G, f, generator=None):
        norms = torch.linalg.vector_norm(G.double(), dim=1).nan_to_num(nan=float("inf"))
        tau = self.scale * norms.median()
        factor = torch.where(norms > tau, tau / norms, torch.ones_like(norms))
        rows = torch.where(torch.isfinite(G), G, torch.zeros_like(G))
        return (rows * factor.to(G.dtype)[:, None]).mean(0)
