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

import logging
import math
import os
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
import torch

_log = logging.getLogger(__name__)

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
    if n > NETWORK_MAX_ROWS and _counting_ok(G):
        return median_by_counting(G, rows)
    needed, reduce = median_reduce(n)
    return order_statistics(G, needed, reduce, rows)


# ----------------------------------------------------------------------------------------
# Order statistics of many rows by counting (comed, trimmed mean for n > NETWORK_MAX_ROWS)
# ----------------------------------------------------------------------------------------
# torch.kthvalue / torch.sort along the row axis cost ~20-50 ns per element on this CPU;
# counting passes (``(X < h)`` written as a float 0/1 mask, then a sum over the rows) cost
# ~0.2 ns. So an order statistic is found by searching, per column, for a threshold h with
# exactly r+1 values below it: the bracket starts from a sorted sample of 16 rows and
# shrinks by alternating interpolation on the counts and bisection of the bit patterns
# (<= 64 steps, usually < 10; columns that converge leave the working set). Exact, ties
# included; NaN counts as +inf. Float masks only: bool masks / torch.where over (n, c)
# tensors are ~30x slower than float arithmetic here.
_SEL_BUDGET = 1 << 20
_SEL_SAMPLE = 16
_SEL_MAX_STEPS = 72


def _key_of(x: torch.Tensor) -> torch.Tensor:
    """Order-preserving int64 key of float32/float64 values (-0.0 just below +0.0); the map
    b -> b ^ ((b >> (w-1)) & (2^(w-1) - 1)) on the bit pattern is its own inverse."""
    if x.dtype == torch.float32:
        b = x.view(torch.int32)
        return (b ^ ((b >> 31) & 0x7FFFFFFF)).to(torch.int64)
    b = x.view(torch.int64)
    return b ^ ((b >> 63) & 0x7FFFFFFFFFFFFFFF)


def _float_of(k: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.float32:
        b = k.to(torch.int32)
        return (b ^ ((b >> 31) & 0x7FFFFFFF)).view(torch.float32)
    return (k ^ ((k >> 63) & 0x7FFFFFFFFFFFFFFF)).view(torch.float64)


def _next_up(x: torch.Tensor) -> torch.Tensor:
    return torch.nextafter(x, torch.full_like(x, INF))


def _count_below(X: torch.Tensor, h: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    torch.lt(X, h, out=M)
    return M.sum(0)


def _gap_search(X: torch.Tensor, r: int, lo: torch.Tensor, hi: torch.Tensor, M: torch.Tensor):
    """Per column of X (finite), thresholds with c(lo) <= r < c(hi) (c = count of values
    below) and either c(hi) == r+1 (then A_r = max{x < hi}, A_{r+1} = min{x >= hi}) or no
    float between lo and hi (then A_r = lo). Returns (lo, hi, c(hi), ok).

    The loop keeps the bracket as integer keys and updates it by exact integer arithmetic
    (``a * (1 - s) + b * s``): ``torch.where`` is several times slower here."""
    n = X.shape[0]
    clo, chi = _count_below(X, lo, M), _count_below(X, hi, M)
    bad_lo, bad_hi = clo > r, chi <= r
    if bool(bad_lo.any()) or bool(bad_hi.any()):
        # A bound on the wrong side of the target is a valid bound for the other side; the
        # column's minimum / just above its maximum complete the bracket.
        hi2, chi2 = torch.where(bad_lo, lo, hi), torch.where(bad_lo, clo, chi)
        lo2, clo2 = torch.where(bad_hi, hi, lo), torch.where(bad_hi, chi, clo)
        lo, clo = torch.where(bad_lo, X.amin(0), lo2), torch.where(bad_lo, 0.0, clo2)
        hi, chi = torch.where(bad_hi, _next_up(X.amax(0)), hi2), torch.where(bad_hi, float(n), chi2)
    dtype = X.dtype
    target = float(r + 1)
    cols = None  # indices (into X's columns) of the working set, once compacted
    Xa, Ma = X, M
    kLO, kHI, CLO, CHI = _key_of(lo), _key_of(hi), clo, chi
    klo = khi = None
    for step in range(_SEL_MAX_STEPS):
        act = (CHI != target) & (kHI > kLO + 1)
        na = int(act.sum())
        if na == 0:
            break
        if na <= Xa.shape[1] // 2:  # compact the working set
            keep = torch.nonzero(act).flatten()
            if cols is None:
                klo, khi, clo, chi = kLO.clone(), kHI.clone(), CLO.clone(), CHI.clone()
                cols = keep
            else:
                klo[cols], khi[cols], clo[cols], chi[cols] = kLO, kHI, CLO, CHI
                cols = cols[keep]
            Xa = Xa.index_select(1, keep)
            Ma = M.view(-1)[: Xa.numel()].view(Xa.shape)
            kLO, kHI, CLO, CHI = kLO[keep], kHI[keep], CLO[keep], CHI[keep]
            act = None
        kp = (kLO >> 1) + (kHI >> 1) + (kLO & kHI & 1)  # bisection of the keys
        if step % 2 == 0:  # interpolation on the counts, where it lands inside the bracket
            LO, HI = _float_of(kLO, dtype), _float_of(kHI, dtype)
            l64 = LO.to(torch.float64)
            frac = (target - CLO.to(torch.float64)) / (CHI - CLO).to(torch.float64)
            ip = (l64 + (HI.to(torch.float64) - l64) * frac).to(dtype)
            use = ((ip > LO) & (ip < HI)).to(torch.int64)
            kp = kp * (1 - use) + _key_of(ip) * use
        piv = _float_of(kp, dtype)
        cp = _count_below(Xa, piv, Ma)
        up = cp <= r
        if act is not None:
            dn = (~up & act).to(torch.int64)
            up = (up & act).to(torch.int64)
        else:
            up = up.to(torch.int64)
            dn = 1 - up
        kLO = kLO * (1 - up) + kp * up
        kHI = kHI * (1 - dn) + kp * dn
        CLO = CLO * (1 - up) + cp * up
        CHI = CHI * (1 - dn) + cp * dn
    if cols is None:
        klo, khi, chi = kLO, kHI, CHI
    else:
        klo[cols], khi[cols], chi[cols] = kLO, kHI, CHI
    ok = (chi == target) | (khi <= klo + 1)
    return _float_of(klo, dtype), _float_of(khi, dtype), chi, ok


def _max_below(X, h, M, Y):
    """max{x < h} per column (finite X, at least one such x): float masks, exact."""
    big = torch.finfo(X.dtype).max
    torch.lt(X, h, out=M)
    torch.mul(X, M, out=Y)
    torch.ge(X, h, out=M)
    Y.add_(M, alpha=-big)
    return Y.amax(0)


def _min_at_or_above(X, h, M, Y):
    big = torch.finfo(X.dtype).max
    torch.ge(X, h, out=M)
    torch.mul(X, M, out=Y)
    torch.lt(X, h, out=M)
    Y.add_(M, alpha=big)
    return Y.amin(0)


def _gap_values(X, r, M, Y, lower=True, upper=True):
    """(A_r, A_{r+1}, ok) per column of X (finite): the r-th and (r+1)-th smallest values
    (0-based), each None unless asked for; ok False where the search did not finish."""
    n = X.shape[0]
    s = min(_SEL_SAMPLE, n)
    q = (r + 1) / n * s
    a = min(max(int(round(q)) - 2, 0), s - 1)
    b = min(max(int(round(q)) + 1, 0), s - 1)
    wires = [X[(i * n) // s] for i in range(s)]
    for i, j in selection_network(s, (a, b)):
        x, y = wires[i], wires[j]
        wires[i], wires[j] = torch.minimum(x, y), torch.maximum(x, y)
    lo, hi, chi, ok = _gap_search(X, r, wires[a].clone(), _next_up(wires[b]), M)
    exact = chi == float(r + 1)
    A = torch.where(exact, _max_below(X, hi, M, Y), lo) if lower else None
    B = torch.where(exact, _min_at_or_above(X, hi, M, Y), lo) if upper else None
    return A, B, ok


def _counting_ok(G: torch.Tensor) -> bool:
    return G.device.type == "cpu" and G.dtype in (torch.float32, torch.float64)


def _selection_chunks(G: torch.Tensor, rows: torch.Tensor | None):
    """(a, b, X, M, Y) per column chunk: X = G[rows, a:b] with NaN/+inf -> +max, -inf ->
    -max (finite, order kept; columns whose answer is +-max are redone exactly), M and Y
    scratch of the same shape, all contiguous."""
    n = G.shape[0] if rows is None else int(rows.numel())
    d = G.shape[1]
    big = torch.finfo(G.dtype).max
    csize = max(64, _SEL_BUDGET // n)
    width = min(csize, d)
    bufs = [torch.empty(n * width, dtype=G.dtype, device=G.device) for _ in range(3)]
    for a, b in _chunks(d, csize):
        X, M, Y = (buf[: n * (b - a)].view(n, b - a) for buf in bufs)
        src = G[:, a:b] if rows is None else G[rows, a:b]
        torch.nan_to_num(src, nan=big, posinf=big, neginf=-big, out=X)
        yield a, b, X, M, Y


def _exact_redo(G, rows, a, b, out, bad, combine):
    """Recompute the columns ``bad`` of chunk [a, b) by a plain sort (NaN -> +inf)."""
    if not bool(bad.any()):
        return
    idx = torch.nonzero(bad).flatten() + a
    src = G.index_select(1, idx) if rows is None else G.index_select(1, idx).index_select(0, rows)
    S = torch.sort(torch.nan_to_num(src, nan=INF, posinf=INF, neginf=-INF), dim=0).values
    out[idx] = combine(S)


def median_by_counting(G: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Coordinate-wise median of G (or G[rows]) for many rows: midpoint for even n, NaN as +inf."""
    n = G.shape[0] if rows is None else int(rows.numel())
    out = torch.empty(G.shape[1], dtype=G.dtype, device=G.device)
    big = torch.finfo(G.dtype).max
    k = (n - 1) // 2
    for a, b, X, M, Y in _selection_chunks(G, rows):
        if n % 2:
            v, _, ok = _gap_values(X, k, M, Y, upper=False)
            bad = ~ok | (v.abs() >= big)
        else:
            lo_v, hi_v, ok = _gap_values(X, k, M, Y)
            v = (lo_v + hi_v) * 0.5
            bad = ~ok | (lo_v.abs() >= big) | (hi_v.abs() >= big)
        out[a:b] = v
        _exact_redo(G, rows, a, b, out, bad,
                    (lambda S: S[k]) if n % 2 else (lambda S: (S[k] + S[k + 1]) * 0.5))
    return out


def trimmed_mean_by_counting(G: torch.Tensor, f: int) -> torch.Tensor:
    """Per column, the mean of the n-2f middle values (1 <= f < n/2), NaN as +inf:
    with v = A_f and u = A_{n-f-1}, the sum is sum{v < x < u} + (#{x <= v} - f) v +
    (n - f - #{x < u}) u (ties at v or u included exactly)."""
    n, d = G.shape
    out = torch.empty(d, dtype=G.dtype, device=G.device)
    big = torch.finfo(G.dtype).max
    keep = n - 2 * f
    for a, b, X, M, Y in _selection_chunks(G, None):
        _, v, ok1 = _gap_values(X, f - 1, M, Y, lower=False)
        u, _, ok2 = _gap_values(X, n - f - 1, M, Y, upper=False)
        torch.gt(X, v, out=M)
        c_le_v = n - M.sum(0)
        torch.mul(X, M, out=Y)
        torch.lt(X, u, out=M)
        c_lt_u = M.sum(0)
        Y.mul_(M)
        s = Y.sum(0)
        s = s + (c_le_v - f) * v + (n - f - c_lt_u) * u
        res = torch.where(v < u, s, keep * v) / keep
        out[a:b] = res
        bad = ~(ok1 & ok2) | (v.abs() >= big) | (u.abs() >= big)
        _exact_redo(G, None, a, b, out, bad, lambda S: S[f:n - f].sum(0) / keep)
    return out


# ----------------------------------------------------------------------------------------
# Distances
# ----------------------------------------------------------------------------------------
def _ipow_(D: torch.Tensor, p: float, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """D**p for D >= 0, possibly in place (D is scratch, and ``scratch``, of D's shape, if
    given); integer p by repeated squaring, which is much faster than pow, and with no copy
    (odd p keeps the product in D and the squares in the scratch). Entries whose p-th power
    would be below ~1e-35 (float32) are set to 0 first: subnormal arithmetic is ~100x slower
    on CPUs, and such terms are negligible wherever the result is used (sums above 1e-20, or
    scaled sums >= 1)."""
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
        # odd part: D holds the product (D^1 so far), T the squares D^2, D^4, ...
        T = torch.mul(D, D, out=scratch) if scratch is not None else D * D
        e >>= 1
        while True:
            if e & 1:
                D.mul_(T)
            e >>= 1
            if not e:
                return D
            T.mul_(T)
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
    (vectorized over j and the coordinates), so no (n, n, d) tensor is formed; large
    matrices use the same terms as one compiled loop (:func:`_lp_sums_fused`). G is first
    scaled by the power of two that brings its largest finite |entry| into [0.5, 1) (exact:
    the distances are scaled back at the end), so that small gradients' p-th powers do not
    underflow for large p (at p = 16 entries of 1e-3 would, sending every pair to the slow
    path below). Pairs whose sum still overflowed or may have underflowed are recomputed
    with per-chunk scaling.
    """
    n, d = G.shape
    scale = _pow2_scale(G) if not (p == 1 or math.isinf(p)) else 1.0
    if scale != 1.0:
        G = G * scale
    S = _lp_sums_fused(G, p) if _fused_lp_applies(G, p) else None
    if S is None:
        S = _lp_sums_chain(G, p)
    dist, suspect = _from_sums(S, p)
    suspect = torch.triu(suspect, diagonal=1)
    if bool(suspect.any()):
        ok = ~bad_rows(G)
        suspect &= ok[:, None] & ok[None, :]
        for i in torch.nonzero(suspect.any(1)).flatten().tolist():  # rare: a loop over workers
            js = torch.nonzero(suspect[i]).flatten()
            dist[i, js] = _lp_dist_to_scaled(G, G[i], p, js)
    out = torch.triu(torch.nan_to_num(dist, nan=INF, posinf=INF), diagonal=1)
    if scale != 1.0:
        out /= scale
    return out + out.t()


def _lp_sums_chain(G: torch.Tensor, p: float) -> torch.Tensor:
    """(n, n) float64: above the diagonal, sum_k |x_ik - x_jk|^p (max for p = inf) with
    torch ops, one row i against the rows after it per column chunk."""
    n, d = G.shape
    S = torch.zeros(n, n, dtype=torch.float64, device=G.device)
    csize = max(256, _DIST_BUDGET // max(n, 1))
    # Within a chunk (<= ~500 columns at n = 1,000) the terms are summed in G's precision,
    # across chunks in float64: the per-term chain is then sub, abs, threshold, the powers'
    # multiplies and a sum, with no copy and no conversion (docs/rules.md, "Scaling in n").
    inner = G.dtype if G.dtype in (torch.float32, torch.float64) else torch.float64
    buf = tmp = None
    for a, b in _chunks(d, csize):
        X = G[:, a:b]
        c = b - a
        if buf is None or buf.shape[1] != c:
            buf = torch.empty(n, c, dtype=G.dtype, device=G.device)
            tmp = torch.empty(n, c, dtype=G.dtype, device=G.device)
        S_c = torch.zeros(n, n, dtype=inner, device=G.device)
        for i in range(n - 1):
            D = buf[: n - 1 - i]
            torch.sub(X[i + 1:], X[i], out=D)
            D.abs_()
            if math.isinf(p):
                torch.amax(D, -1, out=S_c[i, i + 1:])
            else:
                torch.sum(_ipow_(D, p, tmp[: n - 1 - i]), -1, dtype=inner, out=S_c[i, i + 1:])
        S = torch.maximum(S, S_c.to(torch.float64)) if math.isinf(p) else S + S_c
    return S


# ---- the same sums as one compiled loop (torch.compile, Inductor's C++ backend) ----------
# The chain above makes four to seven passes over each block (sub, abs, threshold, the
# powers' multiplies, sum), each a torch op; one generated loop that keeps the term in
# registers is 2-3.4x faster at n = 1,000 (docs/rules.md, "Scaling in n"). The terms are the
# chain's, bit for bit (the same ops in the same order); only the order of the float32 sum
# within a column chunk differs. Compiling costs seconds (once per p and process, cached on
# disk by Inductor), so it is used only for matrices of at least _FUSED_MIN_TERMS terms, on
# CPU, for float32 and integer p <= 64; RAYMIX_COMPILE=0 turns it off. Where Inductor cannot
# compile (no C++ compiler), the first failure is logged once and the chain is used.
_FUSED_MIN_TERMS = 1 << 31  # n(n-1)/2 * d: ~0.7 s with the chain, against ~1-3 s to compile
_FUSED_ROWS, _FUSED_COLS = 128, 1024  # a (rows x cols) block pair stays in L2
_fused_failed: list[str] = []  # the first error, once compiling has failed in this process


def compile_enabled() -> bool:
    """``RAYMIX_COMPILE``: unset or ``1`` lets large l^p matrices use the compiled loop, ``0``
    keeps the torch chain; any other value is refused (the preflight checks it before Ray
    starts: ``runtime.resources.check_files``)."""
    value = os.environ.get("RAYMIX_COMPILE", "1").strip()
    if value not in ("0", "1"):
        raise ValueError(f"RAYMIX_COMPILE must be 0 or 1, got {value!r}")
    return value == "1"


def _fused_lp_applies(G: torch.Tensor, p: float) -> bool:
    n, d = G.shape
    return (not _fused_failed and G.dtype == torch.float32 and G.device.type == "cpu"
            and float(p).is_integer() and 1 <= p <= 64 and n * (n - 1) // 2 * d >= _FUSED_MIN_TERMS
            and compile_enabled())


def _lp_block_terms(p: int) -> Callable:
    """f(A, B) = (m, k) float32 sums over the columns of |a - b|^p, with _ipow_'s threshold
    and its multiplications in its order (so each term equals the chain's)."""
    floor = 1e-35 ** (1.0 / p)

    def f(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
        D = (A[:, None, :] - B[None, :, :]).abs()
        if p != 1:
            D = torch.where(D <= floor, 0.0, D)  # torch.threshold_: NaN passes through
            e = p
            while e % 2 == 0:
                D, e = D * D, e // 2
            if e != 1:
                T, e = D * D, e >> 1
                while True:
                    if e & 1:
                        D = D * T
                    e >>= 1
                    if not e:
                        break
                    T = T * T
        return D.sum(-1)

    # One code object per p: torch.compile caches compiled graphs on the function's code, and
    # the pool's 16 values of p would otherwise be 16 recompiles of one code, past Dynamo's
    # limit of 8 (a hard failure with fullgraph=True).
    f.__code__ = f.__code__.replace(co_name=f"lp_block_p{p}")
    return f


@lru_cache(maxsize=None)
def _lp_block(p: int) -> Callable:
    import torch._inductor.config as inductor_config

    inductor_config.compile_threads = 1  # no pool of compile worker processes (each imports torch)
    # A CPU-only torch warns, at the first compile, that it found no CUDA runtime: not ours to show.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    return torch.compile(_lp_block_terms(p), dynamic=False, fullgraph=True)


def _lp_sums_fused(G: torch.Tensor, p: float) -> torch.Tensor | None:
    """:func:`_lp_sums_chain` by compiled blocks (rows and columns zero-padded to the block
    sizes: |0 - 0|^p adds nothing), or None after logging why compiling failed."""
    n, d = G.shape
    m, c = _FUSED_ROWS, _FUSED_COLS
    N = -(-n // m) * m
    S = torch.zeros(N, N, dtype=torch.float64)
    X = torch.zeros(N, c, dtype=G.dtype)
    try:
        fn = _lp_block(int(p))
        for a, b in _chunks(d, c):
            X[:n, : b - a] = G[:, a:b]
            if b - a < c:
                X[:, b - a:] = 0
            for i in range(0, N, m):
                for j in range(i, N, m):
                    S[i:i + m, j:j + m] += fn(X[i:i + m], X[j:j + m])
    except Exception as e:  # noqa: BLE001 - any compiler failure: the chain computes the same sums
        _fused_failed.append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        _log.warning("raymix: compiling the l^p kernel failed (%s); using torch ops", _fused_failed[0])
        return None
    return S[:n, :n]


def _pow2_scale(G: torch.Tensor) -> float:
    """2^-e with e the exponent that puts G's largest finite |entry| in [0.5, 1) (1.0 for an
    all-zero or all-non-finite G); multiplying by it is exact in floating point."""
    m = float(torch.where(torch.isfinite(G), G.abs(), torch.zeros((), dtype=G.dtype, device=G.device)).amax()) if G.numel() else 0.0
    if not m > 0:
        return 1.0
    return math.ldexp(1.0, -math.frexp(m)[1])


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


# ----------------------------------------------------------------------------------------
# Bulyan's selection rounds, incremental (same picks as re-running the rule each round)
# ----------------------------------------------------------------------------------------
# ---- small matrices (m <= SMALL_ROWS): the same algorithms in numpy -------------------------
# On a few dozen rows each torch op costs ~5-10 us of dispatch against ~1 us for numpy, and
# these loops make hundreds of such ops per call (Weiszfeld's iterations, Bulyan's rounds).
# The arithmetic is the same float64 arithmetic; only BLAS may sum a product in another order.
SMALL_ROWS = 64


def small_krum_scores(D2: np.ndarray, f: int, shrinking: bool = False) -> np.ndarray:
    """``krum.krum_scores`` on a small float64 numpy matrix."""
    m = D2.shape[0]
    if m == 1:
        return np.zeros(1)
    k = max(m - f - 2, min(2, m - 1)) if shrinking else max(m - f - 2, 1)
    off = D2.copy()
    np.fill_diagonal(off, INF)
    return np.nan_to_num(np.sort(off, axis=1)[:, :k].sum(1), nan=INF)


def small_weiszfeld(Kg: np.ndarray, nu: float, iters: int, tol: float) -> np.ndarray:
    """``geomed.weiszfeld_coefficients`` on a small float64 numpy Gram matrix."""
    m = Kg.shape[0]
    alpha = np.full(m, 1.0 / m)
    diag = np.diagonal(Kg)
    for _ in range(iters):
        Ka = Kg @ alpha
        w = 1.0 / np.maximum(np.sqrt(np.maximum(diag - 2 * Ka + alpha @ Ka, 0)), nu)
        new = w / w.sum()
        step = new - alpha
        dz2, z2 = max(float(step @ (Kg @ step)), 0.0), max(float(new @ (Kg @ new)), 0.0)
        alpha = new
        if dz2 <= tol * tol * z2:
            break
    return alpha


def _small_krum_rounds(D2: np.ndarray, f: int, theta: int) -> list[int]:
    rem, picks = list(range(D2.shape[0])), []
    for _ in range(theta):
        j = int(np.argmin(small_krum_scores(D2[np.ix_(rem, rem)], f, shrinking=True)))
        picks.append(rem.pop(j))
    return picks


def _small_gram_rounds(Kg: np.ndarray, theta: int, geomed: "tuple | None") -> list[int]:
    """``bulyan_gram_rounds`` on a small Gram matrix of finite rows (same rounds, same warm start)."""
    m = Kg.shape[0]
    dc, live, picks = np.diagonal(Kg), np.ones(m), []
    if geomed is not None:
        nu, iters, tol = geomed
        alpha = np.full(m, 1.0 / m)
        Ka = Kg @ alpha
    for t in range(theta):
        left = m - t
        if geomed is None:
            Ka = (Kg @ live) / left
            d2 = dc - 2 * Ka + (live @ Ka) / left
        else:
            for _ in range(iters):
                w = live / np.maximum(np.sqrt(np.maximum(dc - 2 * Ka + alpha @ Ka, 0)), nu)
                new = w / w.sum()
                Kn = Kg @ new
                dz2, z2 = max(float((new - alpha) @ (Kn - Ka)), 0.0), max(float(new @ Kn), 0.0)
                alpha, Ka = new, Kn
                if dz2 <= tol * tol * z2:
                    break
            d2 = dc - 2 * Ka + alpha @ Ka
        j = int(np.argmin(np.where(live > 0, d2, INF)))
        picks.append(j)
        live[j] = 0.0
        if geomed is not None:  # warm start: drop the removed row's weight
            aj, alpha = alpha[j], alpha.copy()
            alpha[j] = 0.0
            s = alpha.sum()
            if s > 0:
                alpha, Ka = alpha / s, (Ka - Kg[:, j] * aj) / s
            else:
                alpha = live / max(left - 1, 1)
                Ka = Kg @ alpha
    return picks


def bulyan_krum_rounds(D2: torch.Tensor, f: int, theta: int) -> list[int]:
    """Bulyan's theta rounds of Krum on one (n, n) matrix of squared distances: round t
    scores the m remaining rows with k = max(m-f-2, min(2, m-1)) neighbours (as
    ``krum_scores(..., shrinking=True)`` on the remaining rows) and removes the best (ties:
    the lowest index). Each row's distances are sorted once; a linked list over the sorted
    positions skips removed rows and a tail pointer marks its k-th nearest remaining row, so
    a round costs O(n), not O(n^2). Sums are kept as (finite part, number of infinite
    terms), so an infinite distance gives an infinite score and never a NaN."""
    n = D2.shape[0]
    dev = D2.device
    if theta <= 0:
        return []
    if n <= SMALL_ROWS and dev.type == "cpu":
        return _small_krum_rounds(D2.to(torch.float64).numpy(), f, theta)
    off = D2.to(torch.float64).clone()
    off.fill_diagonal_(INF)
    vals, order = torch.sort(off, dim=1, stable=True)
    ar = torch.arange(n, device=dev)
    pos = torch.empty_like(order)
    pos.scatter_(1, order, ar.expand(n, n).contiguous())
    W = n + 2  # slots: 0 = head, 1..n = sorted positions, n+1 = tail
    isinf = torch.isinf(vals)
    # per slot: (finite part, 1 if infinite); running past the end counts as infinite
    V = torch.zeros(n, W, 2, dtype=torch.float64, device=dev)
    V[:, 1:n + 1, 0] = torch.where(isinf, 0.0, vals)
    V[:, 1:n + 1, 1] = isinf.to(torch.float64)
    V[:, n + 1, 1] = 1.0
    V = V.view(n * W, 2)
    nxt = (torch.arange(W, device=dev) + 1).expand(n, W).contiguous().view(-1)
    prv = (torch.arange(W, device=dev) - 1).expand(n, W).contiguous().view(-1)

    def unlink(flat_slot, rowbase):
        p, q = prv[flat_slot], nxt[flat_slot]
        nxt[rowbase + p] = q
        prv[rowbase + q] = p

    self_slot = pos[ar, ar] + 1
    unlink(ar * W + self_slot, ar * W)
    k = max(n - f - 2, min(2, n - 1))
    # tail: slot of the k-th remaining entry of each row (its own entry skipped)
    tail = torch.full((n,), k, dtype=torch.long, device=dev) + (self_slot <= k).long()
    upto = torch.arange(1, W, device=dev).unsqueeze(0) <= tail.unsqueeze(1)  # slots 1..n+1
    upto[ar, self_slot - 1] = False
    S = (V.view(n, W, 2)[:, 1:] * upto.unsqueeze(2)).sum(1)  # (n, 2)
    picked: list[int] = []
    idx = ar
    m = n
    for t in range(theta):
        Si = S[idx]
        score = torch.where(Si[:, 1] > 0, INF, Si[:, 0])
        j = int(torch.argmin(score))
        r = int(idx[j])
        picked.append(r)
        if t == theta - 1:
            break
        idx = torch.cat([idx[:j], idx[j + 1:]])
        m -= 1
        k_new = max(m - f - 2, min(2, m - 1))
        rb = idx * W
        slot = pos[idx, r] + 1
        tl = tail[idx]
        in_set = slot <= tl
        fl = rb + slot
        if k_new < k:  # one neighbour fewer: drop r if it was in, else the farthest one
            ft = rb + tl
            S[idx] -= V[torch.where(in_set, fl, ft)]
            tail[idx] = torch.where(in_set & (slot != tl), tl, prv[ft])
        else:  # same k: replace r, if it was in, by the next remaining entry
            nt = nxt[rb + tl]
            S[idx] += (V[rb + nt] - V[fl]) * in_set.unsqueeze(1)
            tail[idx] = torch.where(in_set, nt, tl)
        unlink(fl, rb)
        k = k_new
    return picked


def bulyan_gram_rounds(Kf: torch.Tensor, bad: torch.Tensor, theta: int, geomed: tuple | None = None) -> list[int]:
    """Bulyan's theta rounds with ``select=mean`` (``geomed=None``) or ``select=geomed(p=2)``
    (``geomed=(nu, iters, tol)``) on the float64 Gram matrix of the rows: each round picks
    the remaining finite row closest in l2 to the rule's output on the remaining finite
    rows (ties: the lowest index); rows with a non-finite norm come last, in order.

    mean: the row sums of K over the remaining rows are updated in O(n) per round (and
    recomputed exactly every 32 rounds). geomed: Weiszfeld warm-starts from the previous
    round's weights (the removed row's weight dropped), one matrix-vector product per
    iteration, on K restricted to a working set that is compacted as rows leave."""
    dev = Kf.device
    if Kf.shape[0] <= SMALL_ROWS and dev.type == "cpu" and not bool(bad.any()):
        return _small_gram_rounds(Kf.numpy(), theta, geomed)
    picked: list[int] = []
    rem = torch.nonzero(~bad).flatten()
    tail = torch.nonzero(bad).flatten().tolist()
    if rem.numel() == 0:
        return tail[:theta]
    diag = torch.diagonal(Kf)
    C = rem  # working set (rows of Kc), a superset of the remaining rows
    Kc = Kf.index_select(0, C).index_select(1, C)
    live = torch.ones(C.numel(), dtype=torch.float64, device=dev)  # 1 for remaining rows of C
    dc = diag[C]
    m = C.numel()
    if geomed is None:
        R = Kc.sum(1)
    else:
        nu, iters, tol = geomed
        alpha = torch.full((m,), 1.0 / m, dtype=torch.float64, device=dev)
    for t in range(theta):
        if m == 0:
            picked.append(tail.pop(0))
            continue
        if geomed is None:
            if t % 32 == 0:
                R = Kc @ live
            Ka = R / m
            d2 = dc - 2 * Ka + (live @ Ka) / m
        else:
            if t == 0:
                Ka = Kc @ alpha
            for _ in range(iters):
                dist = (dc - 2 * Ka + alpha @ Ka).clamp_min(0).sqrt()
                w = live / dist.clamp_min(nu)
                new = w / w.sum()
                Kn = Kc @ new
                dz2 = float(((new - alpha) @ (Kn - Ka)).clamp_min(0))
                z2 = float((new @ Kn).clamp_min(0))
                alpha, Ka = new, Kn
                if dz2 <= tol * tol * z2:
                    break
            d2 = dc - 2 * Ka + alpha @ Ka
        d2 = torch.where(live > 0, d2, INF)
        j = int(torch.argmin(d2))
        picked.append(int(C[j]))
        live[j] = 0.0
        m -= 1
        if geomed is None:
            R -= Kc[:, j]
        else:  # warm start: drop the removed row's weight (K alpha follows in O(n))
            aj = float(alpha[j])
            alpha[j] = 0.0
            s = float(alpha.sum())
            if s > 0:
                alpha, Ka = alpha / s, (Ka - Kc[:, j] * aj) / s
            else:
                alpha = live / max(m, 1)
                Ka = Kc @ alpha
        if m and m <= 0.7 * C.numel() and m >= 64:  # compact the working set
            keep = torch.nonzero(live).flatten()
            C, dc, live = C[keep], dc[keep], live[keep]
            Kc = Kc.index_select(0, keep).index_select(1, keep)
            if geomed is None:
                R = R[keep]
            else:
                alpha, Ka = alpha[keep], Ka[keep]
    return picked


def bulyan_comed_rounds(G: torch.Tensor, theta: int) -> list[int]:
    """Bulyan's theta rounds with ``select=comed``: each round takes the coordinate-wise
    median z of the remaining rows (NaN as +inf, midpoint for an even count) and removes the
    remaining row closest to z in l2 (``lp_dist_to``; ties: the lowest index).

    Each column is sorted once (stable, NaN as +inf); per column a doubly linked list over
    the rows in sorted order skips removed rows, and the median pointer moves by at most one
    live step per removal, so a round updates z in O(d). The distances use the triangle
    inequality: with exact distances D to an earlier median z0, a row whose lower bound
    D - ||z - z0|| exceeds the smallest upper bound D + ||z - z0|| cannot be the closest;
    only the others are measured exactly, and all rows are measured again (z0 = z) once
    more than an eighth of them remain candidates."""
    n, d = G.shape
    dev = G.device
    if theta <= 0:
        return []
    idt = torch.int16 if n + 2 <= 32767 else torch.int32
    NX = torch.empty(n + 2, d, dtype=idt, device=dev)  # slot of the next row (slot = row+1)
    PV = torch.empty(n + 2, d, dtype=idt, device=dev)
    P = torch.empty(d, dtype=torch.long, device=dev)  # slot of the lower median
    csize = max(64, (1 << 20) // n)
    for a, b in _chunks(d, csize):
        X = torch.nan_to_num(G[:, a:b], nan=INF, posinf=INF, neginf=-INF)
        order = torch.sort(X, dim=0, stable=True).indices + 1  # (n, c) slots in sorted order
        c = b - a
        head = torch.zeros(1, c, dtype=order.dtype, device=dev)
        end = torch.full((1, c), n + 1, dtype=order.dtype, device=dev)
        seq = torch.cat([head, order, end])  # (n+2, c): the list from head to tail
        NX[:, a:b].scatter_(0, seq[:-1], seq[1:].to(idt))
        PV[:, a:b].scatter_(0, seq[1:], seq[:-1].to(idt))
        P[a:b] = order[(n - 1) // 2]
    NXf, PVf = NX.view(-1), PV.view(-1)
    cols = torch.arange(d, device=dev)
    Gf = G.reshape(-1) if G.is_contiguous() else G.contiguous().view(-1)

    def value(slots):  # G[slot-1, j] per column j, NaN as +inf
        v = Gf[(slots - 1) * d + cols]
        return torch.nan_to_num(v, nan=INF, posinf=INF, neginf=-INF)

    def median(m):
        lo = value(P)
        if m % 2:
            return lo
        return (lo + value(NXf[P * d + cols].long())) * 0.5

    alive = torch.ones(n, dtype=torch.bool, device=dev)
    picked: list[int] = []
    m = n
    z = median(m)
    # ||x_i - z||^2 = ||x_i - z0||^2 - 2 x_i.w + 2 z0.w + ||w||^2 with w = z - z0: one
    # matrix-vector product per round (float32, on the remaining rows, compacted as they
    # leave) screens the rows; the rows that its rounding error bound cannot rule out are
    # measured exactly with ``lp_dist_to``, as the plain loop measures every row.
    z0 = z.clone()
    exact0 = bool(torch.isfinite(z0).all())
    if exact0:
        D0 = torch.zeros(n, dtype=torch.float64, device=dev)
        for a, b in _chunks(d, max(256, _DIST_BUDGET // n)):
            D0 += ((G[:, a:b] - z0[a:b]).to(torch.float64) ** 2).sum(1)
        xnorm = torch.linalg.vector_norm(G, dim=1).to(torch.float64)
    rows_c = torch.arange(n, device=dev)  # rows of Gc
    Gc = G
    gamma = 2.0 * d * torch.finfo(G.dtype).eps
    for t in range(theta):
        idx = torch.nonzero(alive).flatten()
        r = None
        w = z - z0
        if exact0 and bool(torch.isfinite(w).all()):
            u = (Gc @ w).to(torch.float64)
            wn = float(torch.linalg.vector_norm(w.to(torch.float64)))
            approx = D0[rows_c] - 2 * u + (2 * float(z0.to(torch.float64) @ w.to(torch.float64)) + wn * wn)
            err = gamma * xnorm[rows_c] * wn + 1e-6 * approx.abs() + 1e-30
            ok = alive[rows_c] & torch.isfinite(approx) & torch.isfinite(err)
            if bool(ok.any()):
                bound = float((approx + err)[ok].min())
                cand = rows_c[ok & ((approx - err) <= bound)]
                dist = lp_dist_to(G.index_select(0, cand), z, 2.0)
                r = int(cand[int(torch.argmin(dist))])
        if r is None:
            r = int(idx[int(torch.argmin(lp_dist_to(G, z, 2.0, idx)))])
        picked.append(r)
        if t == theta - 1:
            break
        # remove r: move the median pointer (read neighbours before unlinking), then unlink
        s = r + 1
        xr = torch.nan_to_num(G[r], nan=INF, posinf=INF, neginf=-INF)
        xp = value(P)
        below = (xr < xp) | ((xr == xp) & (s < P))
        if m % 2:  # odd -> even: the lower median moves down unless r was below it
            P = torch.where(below, P, PVf[P * d + cols].long())
        else:  # even -> odd: the median moves up if r was below it or was the lower median
            P = torch.where(below | (P == s), NXf[P * d + cols].long(), P)
        a_, b_ = PV[s].long(), NX[s].long()
        NXf[a_ * d + cols] = b_.to(idt)
        PVf[b_ * d + cols] = a_.to(idt)
        alive[r] = False
        m -= 1
        z = median(m)
        if m <= rows_c.numel() // 2 and m >= 16:  # compact the screening copy
            rows_c = torch.nonzero(alive).flatten()
            Gc = G.index_select(0, rows_c)
    return picked
