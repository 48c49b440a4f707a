"""Divide-and-Conquer (Shejwalkar & Houmansadr, "Manipulating the Byzantine: Optimizing Model
Poisoning Attacks and Defenses for Federated Learning", NDSS 2021, Algorithm 3), and the
spectral helpers it shares with the mimic attack: the centred Gram matrix of a set of rows
and their outlier scores along its top principal direction."""
from __future__ import annotations

import math
from fractions import Fraction

import torch

from raymix import checks
from raymix.rules import _kernels as K
from raymix.rules.base import RULES, Rule
from raymix.rules.bucketing import DEFAULT_SEED

__all__ = ["DnC", "dnc", "dnc_kept", "dnc_removed_count", "centred_gram", "principal_scores"]


def centred_gram(G: torch.Tensor, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> torch.Tensor:
    """The (m, m) float64 Gram matrix ``C C^T`` of the rows ``G[rows]`` restricted to the
    columns ``cols`` (all of either when None) and centred by their mean, ``C = X - mean(X)``.
    Built by column chunks (each chunk copied to float64 and centred exactly), so memory
    beyond the input is one chunk, never an (m, b) float64 copy."""
    m = G.shape[0] if rows is None else int(rows.numel())
    b = G.shape[1] if cols is None else int(cols.numel())
    out = torch.zeros(m, m, dtype=torch.float64, device=G.device)
    if m == 0:
        return out
    for s, e in K.column_chunks(b, max(1024, (1 << 20) // max(m, 1))):
        X = G[:, s:e] if cols is None else G.index_select(1, cols[s:e])
        if rows is not None:
            X = X.index_select(0, rows)
        X = X.to(torch.float64)
        X = X - X.mean(0)
        out += X @ X.T
    return out


def principal_scores(Kc: torch.Tensor) -> torch.Tensor:
    """(m,) float64 outlier scores ``s_i = <x_i - mu, v>^2`` of the rows whose centred Gram
    matrix is ``Kc``, v the top right singular vector of the centred rows C.

    With ``C = U S V^T``, ``C v_1 = s_1 u_1`` and ``C C^T = U S^2 U^T``, so
    ``s_i = lambda_1 * u_{1,i}^2`` with (lambda_1, u_1) the top eigenpair of ``Kc``: an (m, m)
    symmetric eigenproblem, solved on the CPU in float64 (deterministic, and independent of
    the sign a solver gives v). All zero when the rows are all equal."""
    m = Kc.shape[0]
    if m == 0:
        return torch.zeros(0, dtype=torch.float64)
    w, V = torch.linalg.eigh(Kc.detach().to("cpu", torch.float64))
    lam = float(w[-1]) if float(w[-1]) > 0 else 0.0
    return lam * V[:, -1].square()


def dnc_removed_count(c: float, f: int) -> int:
    """floor(c * f), with c read as the decimal it was written as (``c=0.29, f=100`` removes
    29, where the float product 28.999... would give 28)."""
    return math.floor(Fraction(repr(float(c))) * f)


def dnc_kept(G: torch.Tensor, f: int, iters: int = 1, sub_dim: int = 10000, c: float = 1.0,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """The sorted indices of the rows DnC keeps (the intersection over ``iters`` iterations
    of the n - floor(c*f) rows with the lowest outlier scores). Unchecked."""
    n, d = G.shape
    removed = dnc_removed_count(c, f)
    bad = K.bad_rows(G)
    finite = torch.nonzero(~bad).flatten() if bool(bad.any()) else None
    keep = torch.ones(n, dtype=torch.bool, device=G.device)
    if removed == 0:
        return torch.arange(n, device=G.device)
    if generator is None and sub_dim < d:
        generator = torch.Generator().manual_seed(DEFAULT_SEED)
    for _ in range(iters):
        cols = None
        if sub_dim < d:  # b coordinates without replacement, from the server's generator
            cols = torch.randperm(d, generator=generator, device=generator.device)[:sub_dim].to(G.device)
            cols = torch.sort(cols).values  # the order of the columns changes nothing but locality
        scores = torch.full((n,), math.inf, dtype=torch.float64)
        if finite is None:
            scores = principal_scores(centred_gram(G, None, cols))
        elif finite.numel():
            scores[finite.cpu()] = principal_scores(centred_gram(G, finite, cols))
        order = torch.sort(scores, stable=True).indices  # ties: the lower index is kept
        kept = torch.zeros(n, dtype=torch.bool)
        kept[order[: n - removed]] = True
        keep &= kept.to(G.device)
    return torch.nonzero(keep).flatten()


def _dnc(G: torch.Tensor, f: int, iters: int, sub_dim: int, c: float, generator=None) -> torch.Tensor:
    rows = dnc_kept(G, f, iters, sub_dim, c, generator)
    m = int(rows.numel())
    return K.combine_rows(G, torch.full((m,), 1.0 / m, dtype=torch.float64), rows)


def dnc(G: torch.Tensor, f: int, iters: int = 1, sub_dim: int = 10000, c: float = 1.0,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Divide-and-Conquer: the mean of the rows never among the floor(c*f) largest outlier
    scores over ``iters`` random subsets of ``sub_dim`` coordinates. Needs
    n > iters * floor(c*f)."""
    return DnC(iters=iters, sub_dim=sub_dim, c=c)(G, f, generator)


@RULES.register("dnc")
class DnC(Rule):
    """Divide-and-Conquer (Shejwalkar & Houmansadr, NDSS 2021): drop the outliers along the top singular direction, average the rest.

    ``dnc(iters=1, sub_dim=10000, c=1.0)``, the paper's Algorithm 3: ``iters`` times, draw
    b = min(sub_dim, d) coordinates r without replacement (``torch.randperm(d, generator=g)``
    with the server's generator; all d coordinates, no draw, when sub_dim >= d; without a
    generator a fresh one seeded with DEFAULT_SEED = 0), centre the rows restricted to r by
    their mean mu_r, take v the top right singular vector of the centred (n, b) matrix, score
    ``s_i = <G_i[r] - mu_r, v>^2`` and keep the n - floor(c*f) rows with the lowest scores
    (ties: the lower index); the good set is the intersection over the iterations, the output
    the mean of its rows over all d coordinates. Rows with NaN/Inf entries (or whose sum
    overflows) score +inf and are left out of mu_r and v. ``iters`` >= 1, ``sub_dim`` >= 1,
    ``c`` >= 0 (floor(c*f) with c read as written: ``c=0.29, f=100`` removes 29). Defaults:
    ByzFL's and Blades' (one iteration, 10,000 coordinates, c = 1). Needs
    n > iters * floor(c*f), so that the iterations' kept sets, n - floor(c*f) rows each,
    always share a row (with iters = 1: n > floor(c*f)).
    """

    needs = "n > iters * floor(c*f)"

    def __init__(self, iters: int = 1, sub_dim: int = 10000, c: float = 1.0):
        owner = f"rule {self.name}"
        self.iters = checks.integer(owner, "iters", iters, lo=1)
        self.sub_dim = checks.integer(owner, "sub_dim", sub_dim, lo=1)
        self.c = checks.number(owner, "c", c, lo=0.0)

    def requirement(self, n, f):
        r = dnc_removed_count(self.c, f)
        return None if n > self.iters * r else f"n > iters * floor(c*f) = {self.iters} * {r} = {self.iters * r}"

    def aggregate(self, G, f, generator=None):
        return _dnc(G, f, self.iters, self.sub_dim, self.c, generator)
