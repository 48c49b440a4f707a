"""raymix's C kernels (raymix/rules/_native.py): the l^p Weiszfeld kernel gives the rule's
iterates, faster, with its torch fallback where it is off, cannot be built, or gives up on a
row; the order-statistics kernel gives comed's and trimmed mean's values bit for bit.

Tolerance: the kernel's terms are the rule's float32 products, its sums float64 (the torch
path's float32), so the distances differ by float32 rounding (~1e-7 relative) and the
inner products <geomed_p(G), mu> by ~1e-7 of ||mu||^2 on these rows (measured 2e-7 at most on
the full 21,840 coordinates); 1e-6 of ||mu||^2 is asserted, against the attack's 2e-5.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from raymix.attacks.pool_values import PoolValues, _Lambda
from raymix.rules import _native
from raymix.rules.basic import CoordinateMedian, TrimmedMean
from raymix.rules.geomed import GeometricMedian
from raymix.rules._kernels import networks as N
from raymix.rules._kernels import sorted_columns

DATA = Path(__file__).parent / "data"
with np.load(DATA / "pool_aware_honest.npz", allow_pickle=False) as z:
    HONEST = {k: torch.from_numpy(z[k]) for k in z.files}
HAS_CC = shutil.which(os.environ.get("CC", "cc")) is not None


@pytest.fixture(autouse=True)
def compiling_on(monkeypatch):
    """These tests are about the kernel: on, whatever RAYMIX_COMPILE the suite runs under (a
    test that wants it off says so)."""
    monkeypatch.delenv("RAYMIX_COMPILE", raising=False)


@pytest.fixture
def fresh_native(monkeypatch, tmp_path):
    """A kernel state of its own, built into a temporary cache."""
    monkeypatch.setattr(_native, "_state", {})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path


def values(H, lam, ps, compile_on: bool, monkeypatch):
    monkeypatch.setenv("RAYMIX_COMPILE", "1" if compile_on else "0")
    mu = H.mean(0)
    rules = [GeometricMedian(p=p) for p in ps]
    pv = PoolValues(H, torch.zeros_like(mu), -mu, 2, rules)
    pt = _Lambda(pv, lam)
    return np.array([pv._geomed_lp(r, pt) for r in rules]), float(pv.mu64 @ pv.mu64), pv, pt


@pytest.mark.skipif(not HAS_CC, reason="no C compiler: the kernel cannot be built here")
@pytest.mark.parametrize("rows", ["init", "trained"])
def test_the_c_kernel_follows_the_rules_iterates(rows, monkeypatch, one_torch_thread):
    H, ps = HONEST[rows], [1, 3, 4, 7, 16]
    assert _native.available()
    for lam in (0.01, 1.0, 30.0):
        got, mm, pv, pt = values(H, lam, ps, True, monkeypatch)
        want, _, _, _ = values(H, lam, ps, False, monkeypatch)
        assert np.abs(got - want).max() <= 1e-6 * mm, (lam, (got - want) / mm)
        # and the rule itself on the materialised G(lambda), to the attack's tolerance
        rule_vals = [float(GeometricMedian(p=p)(pt.G, 2).double() @ pv.mu64) for p in ps]
        assert np.abs(got - rule_vals).max() <= 2e-5 * mm


@pytest.mark.skipif(not HAS_CC, reason="no C compiler: the kernel cannot be built here")
def test_the_kernel_measures_a_row_near_the_iterate_as_the_rule_does():
    """A row whose l^p sum underflows (the iterate on it, or within 1e-3 of its scale for
    p = 16) is measured again scaled by its largest term, as the rule measures it, instead of
    handing the whole iteration back to the torch path: the same iterate as the rule's."""
    X = torch.full((4, 50), 0.25)  # all rows equal: every distance 0 at the mean
    z = _native.lp_weiszfeld(X, torch.ones(4, dtype=torch.float64), 3, 1e-6, 100, 1e-6, 1.0)
    assert z is not None and torch.equal(z, X[0])
    g = torch.Generator().manual_seed(1)
    for p in (4, 16):
        # three coincident rows (a captured median) and two others near them: their l^16 sums
        # (1e-3 differences) are ~1e-48, below float32's range, unless measured scaled
        base = torch.rand(50, generator=g) * 0.5
        Y = torch.stack([base, base, base, base + 1e-3 * torch.rand(50, generator=g), base - 0.4 * torch.rand(50, generator=g)])
        s = 1.0
        assert float(((Y[3] - base).abs() ** 16).sum()) < 1e-25
        got = _native.lp_weiszfeld(Y.contiguous(), torch.ones(5, dtype=torch.float64), p, 1e-6, 100, 1e-6, s)
        assert got is not None
        torch.testing.assert_close(got, GeometricMedian(p=p)(Y, 1), rtol=0, atol=1e-5)
    Y = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    s = 2.0 ** -3
    z = _native.lp_weiszfeld((Y * s).contiguous(), torch.ones(4, dtype=torch.float64), 3, 1e-6, 100, 1e-6, s)
    assert z is not None and torch.allclose(z / s, GeometricMedian(p=3)(Y, 1), rtol=0, atol=1e-5)


def test_without_a_compiler_the_torch_path_answers_and_says_why_once(fresh_native, monkeypatch, caplog):
    monkeypatch.setenv("CC", str(fresh_native / "no-such-compiler"))
    H = HONEST["trained"]
    with caplog.at_level(logging.WARNING, logger="raymix.rules._native"):
        got, mm, pv, pt = values(H, 1.0, [3, 5], True, monkeypatch)
        values(H, 2.0, [3], True, monkeypatch)
    assert not _native.available()
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert "building the C kernels failed" in caplog.records[0].getMessage()
    want = [float(GeometricMedian(p=p)(pt.G, 2).double() @ pv.mu64) for p in (3, 5)]
    assert np.abs(got - want).max() <= 2e-5 * mm


@pytest.mark.skipif(not HAS_CC, reason="no C compiler: the kernel cannot be built here")
def test_the_build_is_cached_and_a_second_load_does_not_rebuild(fresh_native):
    assert _native.available()
    built = list((fresh_native / "raymix" / "native").iterdir())
    assert len(built) == 1 and built[0].name.startswith("kernels-") and built[0].suffix == ".so"
    _native._state.clear()
    mtime = built[0].stat().st_mtime_ns
    assert _native.available() and built[0].stat().st_mtime_ns == mtime  # loaded, not rebuilt


def test_raymix_compile_0_turns_the_kernel_off(monkeypatch):
    monkeypatch.setenv("RAYMIX_COMPILE", "0")
    assert _native.lp_weiszfeld(torch.rand(3, 8), torch.ones(3, dtype=torch.float64), 3, 1e-6, 10, 1e-6, 1.0) is None


def _sorted_reference(G, rows, keep, median):
    """Per column, the kept order statistics of G[rows] from a full sort (NaN as +inf), reduced
    in the torch network's order of arithmetic: (lo + hi) * 0.5 for an even median, else the
    kept wires summed left to right, then scaled."""
    X = G if rows is None else G[rows]
    S = torch.nan_to_num(X, nan=float("inf"), posinf=float("inf"), neginf=-float("inf")).sort(0).values
    if median:
        lo, hi = keep
        return S[lo].clone() if lo == hi else (S[lo] + S[hi]) * 0.5
    out = S[keep[0]].clone()
    for k in keep[1:]:
        out.add_(S[k])
    return out.mul_(1.0 / len(keep))


def _awkward(n, d, seed):
    """Rows with ties, signed zeros, NaN and infinities in some columns."""
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(n, d, generator=g)
    G[:, : d // 4] = torch.randint(-2, 3, (n, d // 4), generator=g).float()  # many ties
    G[0, 1], G[-1, 1] = -0.0, 0.0
    G[n // 2, 2] = float("nan")
    G[: n // 2 + 1, 3] = float("nan")  # a NaN majority: the median is +inf
    G[0, 4], G[-1, 5] = float("inf"), -float("inf")
    return G


@pytest.mark.skipif(not HAS_CC, reason="no C compiler: the kernel cannot be built here")
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n", [1, 2, 3, 7, 12, 24, 25, 31, 64, 100, 128])
def test_the_order_statistics_kernel_gives_the_networks_values_bit_for_bit(n, threads, monkeypatch):
    """comed, trimmed mean and sorted columns through the C network equal a full sort's order statistics reduced
    in the torch network's order, bit for bit, with ties, signed zeros, NaN and infinities, on
    one thread and with the columns split over two threads, for rows selected
    by index (Bulyan's and the attack's calls) and for n on both sides of the torch network's
    24-row limit."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    monkeypatch.setattr(_native, "_SPLIT_COLUMNS", 1_000)  # so that 3,001 columns make 2 parts
    try:
        G = _awkward(n, 3_001, n)
        lo, hi = (n - 1) // 2, n // 2
        assert torch.equal(CoordinateMedian()(G, 0), _sorted_reference(G, None, (lo, hi), True))
        for f in sorted({0, 1, (n - 1) // 2} & set(range((n + 1) // 2))):
            keep = list(range(f, n - f))
            got = TrimmedMean()(G, f)
            want = _sorted_reference(G, None, keep, False)
            assert torch.equal(got.nan_to_num(nan=7.0), want.nan_to_num(nan=7.0)), f
        rows = torch.tensor([r for r in range(n) if r % 3 != 1] or [0])
        m = int(rows.numel())
        z = _native.order_stats(G, rows, N.selection_network(m, ((m - 1) // 2, m // 2)), 0, (m - 1) // 2, m // 2)
        assert torch.equal(z, _sorted_reference(G, rows, ((m - 1) // 2, m // 2), True))
        S = torch.nan_to_num(G, nan=float("inf"), posinf=float("inf"), neginf=-float("inf")).sort(0).values
        assert torch.equal(sorted_columns(G), S)  # the full network: every column sorted
        if n <= N.NETWORK_MAX_ROWS:  # and the torch network itself, for the rows it serves
            needed, reduce = N.median_reduce(n)
            assert torch.equal(CoordinateMedian()(G, 0), N.order_statistics(G, needed, reduce))
    finally:
        torch.set_num_threads(old)


def test_order_statistics_without_the_kernel_are_the_same_values(monkeypatch):
    """RAYMIX_COMPILE=0: the kernel is off (None) and the rules' torch paths answer; the values
    agree with the kernel's where both are exact (the torch network, n <= 24), and to float32
    rounding of a differently ordered sum where counting serves (n > 24)."""
    G = _awkward(30, 2_000, 1)[:, 6:]  # finite columns: counting's sum is then comparable
    on = (CoordinateMedian()(G, 0), TrimmedMean()(G, 7), CoordinateMedian()(G[:12], 0), TrimmedMean()(G[:12], 3))
    monkeypatch.setenv("RAYMIX_COMPILE", "0")
    assert _native.order_stats(G, None, [(0, 1)], 0, 0, 0) is None
    off = (CoordinateMedian()(G, 0), TrimmedMean()(G, 7), CoordinateMedian()(G[:12], 0), TrimmedMean()(G[:12], 3))
    assert torch.equal(on[0], off[0]) and torch.equal(on[2], off[2]) and torch.equal(on[3], off[3])
    # 16 kept values of magnitude <= ~4: float32 sums in another order differ by < 16 ulp(4)
    assert torch.allclose(on[1], off[1], rtol=0, atol=16 * 4 * 2.0 ** -23)


@pytest.mark.skipif(not HAS_CC, reason="no C compiler: the kernel cannot be built here")
@pytest.mark.parametrize("rows", ["init", "trained"])
def test_the_power_chain_kernel_gives_the_torch_chains_distances(rows, monkeypatch):
    """The attack's Krum(p) distances (every integer p up to 16, and p = inf) by the C chain
    equal the torch chain's: the same float32 differences, float64 powers by the same products;
    only the order of the float64 sums differs (relative 1e-12 asserted; float64 rounding over
    d = 1,000 terms is ~1e-13). Pairs of honest rows, and honest rows against one crafted row."""
    from raymix.attacks.pool_values import _lp_norms

    H = HONEST[rows]
    k = H.shape[0]
    b = (-H.mean(0) * 3).unsqueeze(0)
    iu = torch.triu_indices(k, k, 1)
    ps = [1.0, 3.0, 4.0, 7.0, 16.0, float("inf")]
    for A, ia, B, ib in ((H, iu[0], H, iu[1]), (H, range(k), b, [0] * k)):
        got = _lp_norms(A, ia, B, ib, ps)
        monkeypatch.setenv("RAYMIX_COMPILE", "0")
        want = _lp_norms(A, ia, B, ib, ps)
        monkeypatch.delenv("RAYMIX_COMPILE")
        for p in ps:
            assert torch.allclose(got[p], want[p], rtol=1e-12, atol=0), p
