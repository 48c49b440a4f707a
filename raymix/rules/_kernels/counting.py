"""Order statistics of many rows by counting (comed and trimmed mean for n > 24, any d).

Exact (ties included; NaN counts as +inf). Reference in the tests: ``torch.sort`` along the
row axis (tests/test_rules_scaling.py)."""
from __future__ import annotations


import torch

from raymix.rules import _native
from raymix.rules._kernels.chunks import INF, column_chunks
from raymix.rules._kernels.networks import NETWORK_MAX_ROWS, median_reduce, order_statistics, selection_network

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
    (``a * (1 - s) + b * s``): ``torch.where`` is several times slower here.

    Long on purpose: one algorithm whose state (the live rows, bounds, pointers) lives across
    its loop; split into helpers it would pass that state back and forth."""
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


def counting_ok(G: torch.Tensor) -> bool:
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
    for a, b in column_chunks(d, csize):
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


def coordinate_median_rows(G: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Per column of G (or of G[rows]), the median (the mean of the two middle values for even
    n), NaN as +inf. Up to ORDER_MAX_ROWS float32 rows on the CPU: the C network; else the
    torch network (n <= 24) or counting (more rows)."""
    n = G.shape[0] if rows is None else int(rows.numel())
    needed, reduce = median_reduce(n)
    if 1 <= n <= _native.ORDER_MAX_ROWS:
        z = _native.order_stats(G, rows, selection_network(n, needed), 0, needed[0], needed[-1])
        if z is not None:
            return z
    if n > NETWORK_MAX_ROWS and counting_ok(G):
        return median_by_counting(G, rows)
    return order_statistics(G, needed, reduce, rows)


def sorted_columns(G: torch.Tensor) -> torch.Tensor:
    """``torch.sort(G, dim=0).values`` with NaN as +inf: by the C network (a full Batcher sort)
    up to ORDER_MAX_ROWS float32 rows on the CPU, where a sort along the short axis costs
    ~1-5 us a column; else ``torch.sort``."""
    n = G.shape[0]
    if 1 <= n <= _native.ORDER_MAX_ROWS:
        out = _native.order_stats(G, None, selection_network(n, tuple(range(n))), 2, 0, n - 1)
        if out is not None:
            return out
    return torch.sort(torch.nan_to_num(G, nan=INF, posinf=INF, neginf=-INF), dim=0).values


def trimmed_mean_rows(G: torch.Tensor, f: int) -> torch.Tensor:
    """Per column, the mean of the n - 2f middle values (0 <= f < n/2), NaN as +inf. Up to
    ORDER_MAX_ROWS float32 rows on the CPU: the C network; else the torch network (n <= 24) or
    counting (more rows). Both networks sum the kept wires in order, then scale."""
    n = G.shape[0]
    keep = list(range(f, n - f))
    scale = 1.0 / len(keep)
    if n <= _native.ORDER_MAX_ROWS:
        z = _native.order_stats(G, None, selection_network(n, tuple(keep)), 1, keep[0], keep[-1], scale)
        if z is not None:
            return z
    if f >= 1 and n > NETWORK_MAX_ROWS and counting_ok(G):
        return trimmed_mean_by_counting(G, f)

    def reduce(w, out):
        out.copy_(w[keep[0]])
        for k in keep[1:]:
            out.add_(w[k])
        out.mul_(scale)

    return order_statistics(G, keep, reduce)
