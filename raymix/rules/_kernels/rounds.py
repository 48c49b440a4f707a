"""Bulyan's selection rounds, incremental: the same picks as re-running the selection rule on
the remaining rows each round, at about the cost of one round (any n, any d; numpy below
SMALL_ROWS = 64 rows). Reference in the tests: the plain rounds of
``raymix.rules.bulyan.bulyan_select``'s loop (tests/test_rules.py)."""
from __future__ import annotations


import numpy as np
import torch

from raymix.rules._kernels.chunks import INF, column_chunks
from raymix.rules._kernels.distances import _DIST_BUDGET, lp_dist_to

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
    terms), so an infinite distance gives an infinite score and never a NaN.

    Long on purpose: one algorithm whose state (the live rows, bounds, pointers) lives across
    its loop; split into helpers it would pass that state back and forth."""
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
    iteration, on K restricted to a working set that is compacted as rows leave.

    Long on purpose: one algorithm whose state (the live rows, bounds, pointers) lives across
    its loop; split into helpers it would pass that state back and forth."""
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


class _ColumnLists:
    """Per column of G, the rows in sorted order (stable, NaN as +inf) as a doubly linked list
    over slots (slot = row + 1; 0 the head, n + 1 the tail) and a pointer ``P`` to the lower
    median's slot, which moves by at most one live step per removal: the state of Bulyan's
    comed rounds. Every update is a tensor op on G's device (``remove`` takes the row as an
    int or a 0-d tensor, so a GPU's rounds need no host sync)."""

    def __init__(self, G: torch.Tensor):
        n, d = G.shape
        dev = G.device
        self.d, self.idt = d, torch.int16 if n + 2 <= 32767 else torch.int32
        self.NX = torch.empty(n + 2, d, dtype=self.idt, device=dev)  # slot of the next row
        self.PV = torch.empty(n + 2, d, dtype=self.idt, device=dev)  # slot of the previous row
        self.P = torch.empty(d, dtype=torch.long, device=dev)  # slot of the lower median
        for a, b in column_chunks(d, max(64, (1 << 20) // n)):
            X = torch.nan_to_num(G[:, a:b], nan=INF, posinf=INF, neginf=-INF)
            order = torch.sort(X, dim=0, stable=True).indices + 1  # (n, c) slots in sorted order
            c = b - a
            head = torch.zeros(1, c, dtype=order.dtype, device=dev)
            end = torch.full((1, c), n + 1, dtype=order.dtype, device=dev)
            seq = torch.cat([head, order, end])  # (n+2, c): the list from head to tail
            self.NX[:, a:b].scatter_(0, seq[:-1], seq[1:].to(self.idt))
            self.PV[:, a:b].scatter_(0, seq[1:], seq[:-1].to(self.idt))
            self.P[a:b] = order[(n - 1) // 2]
        self.NXf, self.PVf = self.NX.view(-1), self.PV.view(-1)
        self.cols = torch.arange(d, device=dev)
        self.G = G
        self.Gf = G.reshape(-1) if G.is_contiguous() else G.contiguous().view(-1)

    def value(self, slots: torch.Tensor) -> torch.Tensor:
        """G[slot-1, j] per column j, NaN as +inf."""
        return torch.nan_to_num(self.Gf[(slots - 1) * self.d + self.cols], nan=INF, posinf=INF, neginf=-INF)

    def median(self, m: int) -> torch.Tensor:
        """The coordinate-wise median of the m rows left (midpoint for even m)."""
        lo = self.value(self.P)
        if m % 2:
            return lo
        return (lo + self.value(self.NXf[self.P * self.d + self.cols].long())) * 0.5

    def remove(self, r, m: int) -> None:
        """Remove row r of the m left: move the median pointer (reading the neighbours before
        unlinking), then unlink r from every column's list."""
        d, cols, P = self.d, self.cols, self.P
        s = r + 1
        xr = torch.nan_to_num(self.G[r], nan=INF, posinf=INF, neginf=-INF)
        xp = self.value(P)
        below = (xr < xp) | ((xr == xp) & (s < P))
        if m % 2:  # odd -> even: the lower median moves down unless r was below it
            self.P = torch.where(below, P, self.PVf[P * d + cols].long())
        else:  # even -> odd: the median moves up if r was below it or was the lower median
            self.P = torch.where(below | (P == s), self.NXf[P * d + cols].long(), P)
        a_, b_ = self.PV[s].long(), self.NX[s].long()
        self.NXf[a_ * d + cols] = b_.to(self.idt)
        self.PVf[b_ * d + cols] = a_.to(self.idt)


def bulyan_comed_rounds_on_device(G: torch.Tensor, theta: int) -> torch.Tensor:
    """:func:`bulyan_comed_rounds` for a GPU: the same rounds (the median of the remaining
    rows, then the remaining row closest to it in l2; rows at infinite distance last, ties to
    the lowest index) as tensor ops only, with no host sync: every remaining row is measured
    each round (float64 norms of the float32 differences; a GPU does n x d in microseconds),
    instead of the CPU's screening, whose candidate sets have data-dependent sizes. Returns
    the (theta,) picks on G's device. The distances are more precise than the CPU path's
    float32 ones, so a pick can differ where two rows tie to float32 rounding."""
    n, _ = G.shape
    picked = torch.empty(max(theta, 0), dtype=torch.long, device=G.device)
    if theta <= 0:
        return picked
    lists = _ColumnLists(G)
    alive = torch.ones(n, dtype=torch.bool, device=G.device)
    # finite distances < BIG < inf: non-finite rows after every finite one, removed rows never
    big = torch.tensor(torch.finfo(torch.float64).max, dtype=torch.float64, device=G.device)
    z = lists.median(n)
    for t in range(theta):
        dist = torch.linalg.vector_norm((G - z).to(torch.float64), dim=1)
        score = torch.where(alive, torch.where(torch.isfinite(dist), dist, big), INF)
        r = torch.argmin(score)  # the first minimum: the lowest index among ties
        picked[t] = r
        if t == theta - 1:
            break
        lists.remove(r, n - t)
        alive[r] = False
        z = lists.median(n - t - 1)
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
    more than an eighth of them remain candidates.

    Long on purpose: one algorithm whose state (the live rows, bounds, pointers) lives across
    its loop; split into helpers it would pass that state back and forth."""
    n, d = G.shape
    dev = G.device
    if theta <= 0:
        return []
    lists = _ColumnLists(G)
    median, remove = lists.median, lists.remove
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
        for a, b in column_chunks(d, max(256, _DIST_BUDGET // n)):
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
        remove(r, m)
        alive[r] = False
        m -= 1
        z = median(m)
        if m <= rows_c.numel() // 2 and m >= 16:  # compact the screening copy
            rows_c = torch.nonzero(alive).flatten()
            Gc = G.index_select(0, rows_c)
    return picked
