"""Order statistics of a few rows by sorting and selection networks (n <= NETWORK_MAX_ROWS = 24).

Serves comed, trimmed mean and Bulyan's aggregation for n up to 24 rows at any d: a network
of compare-exchange ops on whole column chunks (no per-coordinate loop, no sort along the
short axis); above 24 rows a per-chunk ``torch.sort`` is used. Reference in the tests:
``torch.sort``/``torch.median`` on the whole stack (tests/test_rules.py)."""
from __future__ import annotations

from functools import lru_cache
from typing import Callable, Sequence

import torch

from raymix.rules._kernels.chunks import INF, column_chunks

# Column-chunk budget in elements: small enough to stay in cache, large enough that the
# per-call overhead of a torch op is amortised.
_NET_BUDGET = 12 * 65536

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
        for a, b in column_chunks(d, csize):
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
    for a, b in column_chunks(d, csize):
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
