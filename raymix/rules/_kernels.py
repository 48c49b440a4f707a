"""Shared, vectorized kernels for the aggregation rules (plain PyTorch, no Ray).

Everything here works on an (n, d) stack ``G`` by column chunks, so memory beyond the
input stays a small multiple of one chunk (or of one (n, d) copy where stated), and never
an (n, n, d) tensor. Python loops run over chunks, comparators or workers, never over
coordinates or pairs of workers.

Non-finite policy (see docs/rules.md):

* order statistics treat NaN as +inf, so a NaN sorts to the top like +inf;
* a distance that is NaN, infinite or overflows is +inf (never NaN);
* a row whose squared l2 norm is not finite (NaN/Inf entries, or values like 1e38 whose
  square overflows in float32) is "bad" for the Gram-based kernels: its distance to every
  other row is +inf.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, Sequence

import torch

INF = float("inf")

# Column-chunk budgets in elements: small enough to stay in cache, large enough that the
# per-call overhead of a torch op is amortised.
_NET_BUDGET = 12 * 65536
_DIST_BUDGET = 1 << 19
_GRAM_CHUNK = 1 << 16


def _chunks(d: int, size: int):
    size = max(1, int(size))
    for a in range(0, d, size):
        yield a, min(d, a + size)


# ----------------------------------------------------------------------------------------
# Sorting / selection networks
# ----------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _batcher(n: int) -> tuple[tuple[int, int], ...]:
    """Batcher's odd-even merge sort for n wires (padded to a power of two with +inf,
    comparators touching the padding dropped: they never swap)."""
    N = 1
    while N < n:
        N *= 2
    pairs = []
    p = 1
    while p < N:
        k = p
        while k >= 1:
            for j in range(k % p, N - k, 2 * k):
                for i in range(min(k, N - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        a, b = i + j, i + j + k
                        if b < n:
                            pairs.append((a, b))
            k //= 2
        p *= 2
    return tuple(pairs)


@lru_cache(maxsize=None)
def selection_network(n: int, needed: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """The comparators of Batcher's network that can influence output wires ``needed``
    (pruned backwards): after applying them, wire k holds the k-th smallest for k in needed."""
    live = set(needed)
    keep = []
    for a, b in reversed(_batcher(n)):
        if a in live or b in live:
            keep.append((a, b))
            live.add(a)
            live.add(b)
    return tuple(reversed(keep))


# Above this many rows the comparator count (~n log^2 n) makes a network slower than a
# per-chunk torch.sort along the short axis.
NETWORK_MAX_ROWS = 24


def order_statistics(
    G: torch.Tensor,
    needed: Sequence[int],
    reduce: Callable[[list[torch.Tensor], torch.Tensor], None],
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Column-wise order statistics of ``G`` (or of ``G[rows]``), NaN treated as +inf.

    For each column chunk, ``reduce(wires, out)`` receives a list where ``wires[k]`` is the
    k-th smallest value of every column in the chunk (exact for k in ``needed``; the other
    entries are unspecified) and writes the chunk of the (d,) result into ``out``.
    """
    n = G.shape[0] if rows is None else int(rows.numel())
    d = G.shape[1]
    out = torch.empty(d, dtype=G.dtype, device=G.device)
    if n == 0 or d == 0:
        return out
    row_list = list(range(G.shape[0])) if rows is None else [int(r) for r in rows]
    if n <= NETWORK_MAX_ROWS and G.device.type == "cpu":
        net = selection_network(n, tuple(sorted(set(needed))))
        csize = max(256, _NET_BUDGET // (n + 2))
        W = torch.empty(n + 2, min(csize, d), dtype=G.dtype, device=G.device)
        for a, b in _chunks(d, csize):
            c = b - a
            Wc = W[:, :c]
            for k, r in enumerate(row_list):
                torch.nan_to_num(G[r, a:b], nan=INF, posinf=INF, neginf=-INF, out=Wc[k])
            wires = [Wc[k] for k in range(n)]
            free = [Wc[n], Wc[n + 1]]
            for i, j in net:
                x, y = wires[i], wires[j]
                lo, hi = free.pop(), free.pop()
                torch.minimum(x, y, out=lo)
                torch.maximum(x, y, out=hi)
                wires[i], wires[j] = lo, hi
                free.append(x)
                free.append(y)
            reduce(wires, out[a:b])
        return out
    # Many rows: per column chunk, kthvalue along the row axis for one or two positions,
    # else a sort along the row axis (both measured faster than a network at this size).
    needed = sorted(set(needed))
    csize = max(64, (1 << 20) // n)
    for a, b in _chunks(d, csize):
        X = G[:, a:b] if rows is None else G[rows, a:b]
        X = torch.nan_to_num(X, nan=INF, posinf=INF, neginf=-INF)  # a copy of the chunk
        if len(needed) <= 2:
            wires: list = [None] * n
            for k in needed:
                wires[k] = X.kthvalue(k + 1, dim=0).values
        else:
            wires = list(torch.sort(X, dim=0).values.unbind(0))
        reduce(wires, out[a:b])
    return out


def median_reduce(n: int):
    """Reducer for the coordinate-wise median: the middle value for odd n, the average of
    the two middle values for even n."""
    lo, hi = (n - 1) // 2, n // 2
    if lo == hi:
        return (lo,), lambda w, out: out.copy_(w[lo])

    def reduce(w, out):
        torch.add(w[lo], w[hi], out=out)
        out.mul_(0.5)

    return (lo, hi), reduce


def coordinate_median_rows(G: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    n = G.shape[0] if rows is None else int(rows.numel())
    needed, reduce = median_reduce(n)
    return order_statistics(G, needed, reduce, rows)


# ----------------------------------------------------------------------------------------
# Distances
# ----------------------------------------------------------------------------------------
def _ipow_(D: torch.Tensor, p: float) -> torch.Tensor:
    """D**p for D >= 0, possibly in place (D is scratch); integer p by repeated squaring,
    which is much faster than pow. Entries whose p-th power would be below ~1e-35 (float32)
    are set to 0 first: subnormal arithmetic is ~100x slower on CPUs, and such terms are
    negligible wherever the result is used (sums above 1e-20, or scaled sums >= 1)."""
    if p == 1:
        return D
    floor = (1e-35 if D.dtype != torch.float64 else 1e-290) ** (1.0 / p)
    torch.threshold_(D, floor, 0.0)
    if float(p).is_integer() and p <= 64:
        e = int(p)
        while e % 2 == 0:  # even part: square in place
            D.mul_(D)
            e //= 2
        if e == 1:
            return D
        acc = D.clone()  # odd part: acc = D^e by binary exponentiation
        e -= 1
        while e:
            if e & 1:
                acc.mul_(D)
            e >>= 1
            if e:
                D.mul_(D)
        return acc
    return D.pow_(p)


class _LpAccumulator:
    """Accumulates sum_k |x_k|^p over column chunks without overflow or underflow:
    each chunk is scaled by its own max |x| and the partial sums are combined in float64
    relative to the running max. ``result()`` gives the l^p norms with NaN -> +inf."""

    def __init__(self, shape, p: float, device):
        self.p = p
        self.M = torch.zeros(shape, dtype=torch.float64, device=device)
        self.T = torch.zeros(shape, dtype=torch.float64, device=device)

    def partial(self, D: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(s, S) for D: (..., c) absolute differences (overwritten): s = max |x| over the
        chunk, S = sum (|x|/s)^p in float64."""
        p = self.p
        if p == 1:
            return None, D.sum(-1, dtype=torch.float64)
        s = D.amax(-1)
        if math.isinf(p):
            return s, None
        safe = torch.where((s > 0) & torch.isfinite(s), s, torch.ones_like(s))
        D.div_(safe.unsqueeze(-1))
        return s, _ipow_(D, p).sum(-1, dtype=torch.float64)

    def combine(self, s, S) -> None:
        p = self.p
        if p == 1:
            self.T += S
            return
        s64 = s.to(torch.float64)
        if math.isinf(p):
            self.M = torch.maximum(self.M, s64)
            return
        Mn = torch.maximum(self.M, s64)
        Mn_safe = torch.where(Mn > 0, Mn, torch.ones_like(Mn))
        # (M/Mn)^p and (s/Mn)^p are in [0, 1]: no overflow; NaN/inf propagate into T.
        self.T = self.T * (self.M / Mn_safe) ** p + (s64 / Mn_safe) ** p * S
        self.M = Mn

    def add(self, D: torch.Tensor) -> None:
        self.combine(*self.partial(D))

    def result(self) -> torch.Tensor:
        if self.p == 1:
            out = self.T
        elif math.isinf(self.p):
            out = self.M
        else:
            out = self.M * self.T ** (1.0 / self.p)
        return torch.nan_to_num(out, nan=INF, posinf=INF)


# Below this value of sum |x|^p (float64) a float32 power may have underflowed: recompute
# with scaling. Non-finite sums (overflow) are recomputed too, unless the row itself holds
# NaN/Inf entries (then the distance is +inf by policy).
_TINY = 1e-20


def _fast_sum(D: torch.Tensor, p: float) -> torch.Tensor:
    """sum |x|^p (or max |x| for p = inf) over the last axis of D = |x| (overwritten),
    unscaled, in float64."""
    if math.isinf(p):
        return D.amax(-1).to(torch.float64)
    return _ipow_(D, p).sum(-1, dtype=torch.float64)


def _from_sums(S: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances, suspect mask) from unscaled sums."""
    dist = S if (p == 1 or math.isinf(p)) else S ** (1.0 / p)
    suspect = ~torch.isfinite(S)
    if not (p == 1 or math.isinf(p)):
        suspect |= (S < _TINY) & (S >= 0)
    return dist, suspect


def lp_dist_to(G: torch.Tensor, z: torch.Tensor, p: float, rows: torch.Tensor | None = None) -> torch.Tensor:
    """(n,) float64 l^p distances from each row of G (or G[rows]) to z; NaN/overflow -> +inf.

    Fast unscaled pass first; the rows whose sum overflowed or may have underflowed are
    recomputed with per-chunk scaling (exact over the whole float range)."""
    n = G.shape[0] if rows is None else int(rows.numel())
    z = z.to(G.dtype)
    if p == 2 and G.device.type == "cpu" and G.dtype in (torch.float32, torch.float64):
        # Exact direct formula (no Gram cancellation), about half the cost of the mean.
        d2 = torch.cdist(G, z[None], compute_mode="donot_use_mm_for_euclid_dist")[:, 0].to(torch.float64)
        dist = d2 if rows is None else d2[rows]
        suspect = ~torch.isfinite(dist) | (dist < 1e-15)
    else:
        S = torch.zeros(n, dtype=torch.float64, device=G.device)
        for chunk in _abs_diff_chunks(G, z, rows):
            S += _fast_sum(chunk, p)
        dist, suspect = _from_sums(S, p)
    if bool(suspect.any()):
        which = torch.nonzero(suspect).flatten()
        sub_rows = which if rows is None else rows[which]
        dist = dist.clone()
        dist[which] = _lp_dist_to_scaled(G, z, p, sub_rows)
    return torch.nan_to_num(dist, nan=INF, posinf=INF)


def _lp_dist_to_scaled(G: torch.Tensor, z: torch.Tensor, p: float, rows: torch.Tensor | None) -> torch.Tensor:
    n = G.shape[0] if rows is None else int(rows.numel())
    acc = _LpAccumulator((n,), p, G.device)
    for chunk in _abs_diff_chunks(G, z, rows):
        acc.add(chunk)
    return acc.result()


def _abs_diff_chunks(G: torch.Tensor, z: torch.Tensor, rows: torch.Tensor | None):
    """|G[rows] - z| one block of columns at a time, in one reused buffer (the caller
    consumes each block before the next overwrites it): memory stays O(n * block)."""
    n = G.shape[0] if rows is None else int(rows.numel())
    csize = max(256, _DIST_BUDGET // max(n, 1))
    buf = None
    for a, b in _chunks(G.shape[1], csize):
        X = G[:, a:b] if rows is None else G[rows, a:b]
        if buf is None or buf.shape[1] != b - a:
            buf = torch.empty(n, b - a, dtype=G.dtype, device=G.device)
        torch.sub(X, z[a:b], out=buf)
        yield buf.abs_()


def lp_pairwise(G: torch.Tensor, p: float) -> torch.Tensor:
    """(n, n) float64 l^p distances between rows (NaN/overflow -> +inf, diagonal 0).

    Per column chunk, a loop over workers i computes |x_j - x_i| for all j > i at once
    (vectorized over j and the coordinates), so no (n, n, d) tensor is formed. Pairs whose
    unscaled sum overflowed or may have underflowed are recomputed with scaling.
    """
    n, d = G.shape
    S = torch.zeros(n, n, dtype=torch.float64, device=G.device)
    csize = max(256, _DIST_BUDGET // max(n, 1))
    buf = None
    for a, b in _chunks(d, csize):
        X = G[:, a:b]
        c = b - a
        if buf is None or buf.shape[1] != c:
            buf = torch.empty(n, c, dtype=G.dtype, device=G.device)
        S_c = torch.zeros(n, n, dtype=torch.float64, device=G.device)
        for i in range(n - 1):
            D = buf[: n - 1 - i]
            torch.sub(X[i + 1:], X[i], out=D)
            S_c[i, i + 1:] = _fast_sum(D.abs_(), p)
        S = torch.maximum(S, S_c) if math.isinf(p) else S + S_c
    dist, suspect = _from_sums(S, p)
    suspect = torch.triu(suspect, diagonal=1)
    if bool(suspect.any()):
        ok = ~bad_rows(G)
        suspect &= ok[:, None] & ok[None, :]
        for i in torch.nonzero(suspect.any(1)).flatten().tolist():  # rare: a loop over workers
            js = torch.nonzero(suspect[i]).flatten()
            dist[i, js] = _lp_dist_to_scaled(G, G[i], p, js)
    out = torch.triu(torch.nan_to_num(dist, nan=INF, posinf=INF), diagonal=1)
    return out + out.t()


def gram(G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, bad): the float64 Gram matrix ``G @ G.T`` (float32 inputs: per-chunk float32
    products accumulated in float64) and the mask of rows whose squared norm is not finite."""
    n, d = G.shape
    if G.dtype == torch.float64:
        K = G @ G.t()
        K = 0.5 * (K + K.t())  # exactly symmetric, so equal distances stay equal
    else:
        K = torch.zeros(n, n, dtype=torch.float64, device=G.device)
        for a, b in _chunks(d, _GRAM_CHUNK):
            X = G[:, a:b]
            K += (X @ X.t()).to(torch.float64)
        K = 0.5 * (K + K.t())
    diag = torch.diagonal(K)
    bad = ~torch.isfinite(diag)
    return K, bad


def sq_dists_from_gram(K: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    """(n, n) squared l2 distances from a Gram matrix; bad rows at +inf, diagonal 0."""
    diag = torch.diagonal(K)
    D = (diag[:, None] + diag[None, :] - 2 * K).clamp_min_(0)
    D = torch.nan_to_num(D, nan=INF, posinf=INF)
    D[bad, :] = INF
    D[:, bad] = INF
    D.fill_diagonal_(0)
    return D


def pairwise_sq_dists(G: torch.Tensor, p: float) -> torch.Tensor:
    """(n, n) float64 squared l^p distances, +inf for non-finite/overflowing rows."""
    if p == 2:
        K, bad = gram(G)
        return sq_dists_from_gram(K, bad)
    D = lp_pairwise(G, p)
    return D * D


def bad_rows(G: torch.Tensor) -> torch.Tensor:
    """Rows whose sum (in G's dtype, no copy) is not finite: NaN/Inf entries, or values so
    large that they overflow when summed (such as 1e38 in float32)."""
    return ~torch.isfinite(G.sum(1))


def combine_rows(G: torch.Tensor, alpha: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """sum_i alpha_i G[rows[i]] as a (d,) tensor of G's dtype, by column chunks (never
    touching rows outside ``rows``, so a NaN row with weight 0 cannot poison the result)."""
    a = alpha.to(device=G.device, dtype=G.dtype)
    if rows is None:
        return a @ G
    out = torch.empty(G.shape[1], dtype=G.dtype, device=G.device)
    csize = max(1024, (1 << 20) // max(int(rows.numel()), 1))
    for s, e in _chunks(G.shape[1], csize):
        out[s:e] = a @ G[rows, s:e]
    return out
