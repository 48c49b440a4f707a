"""l^p distances, Gram matrices and weighted row sums of an (n, d) stack (any n, any d).

Pairwise distances are computed by column chunks (on the CPU never an (n, n, d) tensor; on a
GPU one (n, n, c) broadcast per chunk of c columns, few kernels); integer p
<= 64 with n(n-1)/2 * d >= 2^31 terms may run as one compiled loop (torch.compile), and
l2 distances come from the float64 Gram matrix. Reference in the tests: ``torch.cdist`` and
the plain ``(G[i] - G[j]).abs().pow(p).sum() ** (1/p)`` (tests/test_rules.py,
tests/test_rules_scaling.py)."""
from __future__ import annotations

import logging
import math
from functools import lru_cache
from typing import Callable

import torch

from raymix.rules._kernels.chunks import INF, column_chunks
from raymix.rules._native import compile_enabled

_log = logging.getLogger(__name__)

# Column-chunk budgets in elements: small enough to stay in cache, large enough that the
# per-call overhead of a torch op is amortised.
_DIST_BUDGET = 1 << 19
_GRAM_CHUNK = 1 << 16
# On a GPU a kernel launch costs about what 10^5 terms do, so the pairwise sums run as few
# large broadcasts instead: (n, n, c) terms per column chunk, in two buffers of this many
# elements (64 MiB each in float32, inside a trial's planned GPU memory).
_BATCH_BUDGET = 1 << 24

# ----------------------------------------------------------------------------------------
# Distances
# ----------------------------------------------------------------------------------------
def ipow_(D: torch.Tensor, p: float, scratch: torch.Tensor | None = None) -> torch.Tensor:
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
        return s, ipow_(D, p).sum(-1, dtype=torch.float64)

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
    return ipow_(D, p).sum(-1, dtype=torch.float64)


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
    for a, b in column_chunks(G.shape[1], csize):
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
    scale = pow2_scale(G) if not (p == 1 or math.isinf(p)) else 1.0
    if scale != 1.0:
        G = G * scale
    S = _lp_sums_fused(G, p) if _fused_lp_applies(G, p) else None
    if S is None:
        S = _lp_sums_chain(G, p) if G.device.type == "cpu" else _lp_sums_batched(G, p)
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
    # multiplies and a sum, with no copy and no conversion (docs/measurements.md, "Scaling in n").
    inner = G.dtype if G.dtype in (torch.float32, torch.float64) else torch.float64
    buf = tmp = None
    for a, b in column_chunks(d, csize):
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
                torch.sum(ipow_(D, p, tmp[: n - 1 - i]), -1, dtype=inner, out=S_c[i, i + 1:])
        S = torch.maximum(S, S_c.to(torch.float64)) if math.isinf(p) else S + S_c
    return S


def _lp_sums_batched(G: torch.Tensor, p: float) -> torch.Tensor:
    """:func:`_lp_sums_chain`'s sums with every row pair of a column chunk in one broadcast:
    about six kernels per chunk of ``_BATCH_BUDGET // n^2`` columns (one chunk at n = 12 and
    the paper's CNN; ~4,000 large ones at n = 1,000) instead of six per row and chunk (the
    chain's ~200,000 small ones at n = 1,000). For GPUs, where each small kernel costs a
    launch; the same terms as the chain (sub, abs, threshold, the powers by squaring), the
    float32 sums within a chunk in another order."""
    n, d = G.shape
    inner = G.dtype if G.dtype in (torch.float32, torch.float64) else torch.float64
    S = torch.zeros(n, n, dtype=torch.float64, device=G.device)
    csize = max(1, min(d, _BATCH_BUDGET // max(n * n, 1)))
    for a, b in column_chunks(d, csize):
        X = G[:, a:b]
        D = (X.unsqueeze(1) - X.unsqueeze(0)).abs_()  # (n, n, c): |x_i - x_j|
        if math.isinf(p):
            S = torch.maximum(S, D.amax(-1).to(torch.float64))
        else:
            S += ipow_(D, p).sum(-1, dtype=inner).to(torch.float64)
    return torch.triu(S, diagonal=1)


# ---- the same sums as one compiled loop (torch.compile, Inductor's C++ backend) ----------
# The chain above makes four to seven passes over each block (sub, abs, threshold, the
# powers' multiplies, sum), each a torch op; one generated loop that keeps the term in
# registers is 2-3.4x faster at n = 1,000 (docs/measurements.md, "Scaling in n"). The terms are the
# chain's, bit for bit (the same ops in the same order); only the order of the float32 sum
# within a column chunk differs. Compiling costs seconds (once per p and process, cached on
# disk by Inductor), so it is used only for matrices of at least _FUSED_MIN_TERMS terms, on
# CPU, for float32 and integer p <= 64; RAYMIX_COMPILE=0 turns it off. Where Inductor cannot
# compile (no C++ compiler), the first failure is logged once and the chain is used.
_FUSED_MIN_TERMS = 1 << 31  # n(n-1)/2 * d: ~0.7 s with the chain, against ~1-3 s to compile
_FUSED_ROWS, _FUSED_COLS = 128, 1024  # a (rows x cols) block pair stays in L2
_fused_failed: list[str] = []  # the first error, once compiling has failed in this process


def _fused_lp_applies(G: torch.Tensor, p: float) -> bool:
    n, d = G.shape
    return (not _fused_failed and G.dtype == torch.float32 and G.device.type == "cpu"
            and float(p).is_integer() and 1 <= p <= 64 and n * (n - 1) // 2 * d >= _FUSED_MIN_TERMS
            and compile_enabled())


def _lp_block_terms(p: int) -> Callable:
    """f(A, B) = (m, k) float32 sums over the columns of |a - b|^p, with ipow_'s threshold
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
        for a, b in column_chunks(d, c):
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


def pow2_scale(G: torch.Tensor) -> float:
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
        for a, b in column_chunks(d, _GRAM_CHUNK):
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
    for s, e in column_chunks(G.shape[1], csize):
        out[s:e] = a @ G[rows, s:e]
    return out
