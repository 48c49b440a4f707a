"""The scaling kernels (issue #11) against reference copies of the implementation they
replace: Bulyan's incremental selection rounds (Krum, mean, geomed, comed), and comed /
trimmed mean by counting for many rows. Random inputs, duplicated rows, NaN/Inf rows and
heavily tied (integer) data; small sizes, the file runs in seconds."""
import math

import pytest
import torch

from raymix.rules import _kernels as K
from raymix.rules._kernels import distances as KD
from raymix.rules import build_rule

INF = float("inf")


# ---------------------------------------------------------------------------------------
# Reference copies of the implementation before issue #11 (re-run the rule every round).
# ---------------------------------------------------------------------------------------
def ref_krum_scores(D2, f, shrinking=False):
    m = D2.shape[0]
    if m == 1:
        return torch.zeros(1, dtype=D2.dtype)
    k = max(m - f - 2, min(2, m - 1)) if shrinking else max(m - f - 2, 1)
    off = D2.clone()
    off.fill_diagonal_(INF)
    near = torch.topk(off, k, dim=1, largest=False, sorted=False).values
    return torch.nan_to_num(near.sum(1), nan=INF)


def ref_krum_rounds(D2, f, theta):
    rem, picked = list(range(D2.shape[0])), []
    for _ in range(theta):
        idx = torch.tensor(rem)
        picked.append(rem.pop(int(torch.argmin(ref_krum_scores(D2[idx][:, idx], f, shrinking=True)))))
    return picked


def ref_weiszfeld(Kg, nu, iters, tol):
    m = Kg.shape[0]
    alpha = torch.full((m,), 1.0 / m, dtype=torch.float64)
    diag = torch.diagonal(Kg)
    for _ in range(iters):
        Ka = Kg @ alpha
        dist = (diag - 2 * Ka + alpha @ Ka).clamp_min(0).sqrt()
        w = 1.0 / dist.clamp_min(nu)
        new = w / w.sum()
        step = new - alpha
        dz2 = float((step @ (Kg @ step)).clamp_min(0))
        z2 = float((new @ (Kg @ new)).clamp_min(0))
        alpha = new
        if dz2 <= tol * tol * z2:
            break
    return alpha


def ref_gram_rounds(G, theta, g=None):
    Kf, bad = K.gram(G)
    n = G.shape[0]
    rem = [i for i in range(n) if not bool(bad[i])]
    tail = [i for i in range(n) if bool(bad[i])]
    picked = []
    for _ in range(theta):
        if not rem:
            picked.append(tail.pop(0))
            continue
        idx = torch.tensor(rem)
        Ks = Kf[idx][:, idx]
        m = len(rem)
        alpha = torch.full((m,), 1.0 / m, dtype=torch.float64) if g is None else ref_weiszfeld(Ks, *g)
        Ka = Ks @ alpha
        d2 = torch.diagonal(Ks) - 2 * Ka + alpha @ Ka
        picked.append(rem.pop(int(torch.argmin(d2))))
    return picked


def ref_median(X):
    S = torch.sort(torch.nan_to_num(X, nan=INF, posinf=INF, neginf=-INF), dim=0).values
    n = S.shape[0]
    return S[(n - 1) // 2] if n % 2 else (S[n // 2 - 1] + S[n // 2]) * 0.5


def ref_trimmed(X, f):
    S = torch.sort(torch.nan_to_num(X, nan=INF, posinf=INF, neginf=-INF), dim=0).values
    n = S.shape[0]
    return S[f:n - f].sum(0) / (n - 2 * f)


def ref_l2_to(X, z):
    d = torch.cdist(X, z[None], compute_mode="donot_use_mm_for_euclid_dist")[:, 0].to(torch.float64)
    bad = ~torch.isfinite(d) | (d < 1e-15)
    if bool(bad.any()):  # the library's scaled recomputation (exact for finite rows)
        d[bad] = K.lp_dist_to(X[bad], z, 2.0)
    return torch.nan_to_num(d, nan=INF, posinf=INF)


def ref_comed_rounds(G, theta):
    rem, picked = torch.arange(G.shape[0]), []
    for _ in range(theta):
        i = int(torch.argmin(ref_l2_to(G[rem], ref_median(G[rem]))))
        picked.append(int(rem[i]))
        rem = torch.cat([rem[:i], rem[i + 1:]])
    return picked


# ---------------------------------------------------------------------------------------
def inputs(n, d, seed, dtype=torch.float32):
    """Four variants: plain Gaussian, duplicated rows, NaN/Inf rows, small integers (ties)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for kind in range(4):
        G = torch.randn(n, d, generator=g, dtype=dtype)
        if kind == 1:
            G[3] = G[5]
            G[n - 2] = G[5]
        elif kind == 2:
            G[1] = float("nan")
            G[n - 1] = INF
        elif kind == 3:
            G = torch.randint(0, 3, (n, d), generator=g).to(dtype)
        out.append(G)
    return out


def same_rows(G, a, b):
    """Equal picks, or picks that differ only between identical rows (exact ties)."""
    return a == b or torch.equal(torch.nan_to_num(G[a]), torch.nan_to_num(G[b]))


SIZES = [(7, 1, 6), (12, 2, 30), (31, 3, 40), (50, 12, 60), (101, 24, 30), (120, 2, 25)]


@pytest.mark.parametrize("n,f,d", SIZES)
@pytest.mark.parametrize("p", [2, 1, 3, INF])
def test_krum_rounds_match_rerunning_krum(n, f, d, p):
    for G in inputs(n, d, seed=n + d):
        D2 = K.pairwise_sq_dists(G, float(p))
        theta = n - 2 * f
        assert same_rows(G, K.bulyan_krum_rounds(D2, f, theta), ref_krum_rounds(D2, f, theta))


def mean_tie(G, a, b):
    """a and b agree up to their first difference, where (integer data) the two rows are
    at exactly the same distance from the mean of the rows still remaining."""
    for t, (x, y) in enumerate(zip(a, b)):
        if x != y:
            rem = [i for i in range(G.shape[0]) if i not in a[:t]]
            X = G[rem].to(torch.float64)
            m, S = len(rem), X.sum(0)
            score = lambda i: float(m * m * (G[i].double() @ G[i].double()) - 2 * m * (G[i].double() @ S))  # noqa: E731
            return score(x) == score(y)
    return True


@pytest.mark.parametrize("n,f,d", SIZES)
def test_mean_rounds_match_rerunning_mean(n, f, d):
    for kind, G in enumerate(inputs(n, d, seed=2 * n + d)):
        Kf, bad = K.gram(G)
        a, b = K.bulyan_gram_rounds(Kf, bad, n - 2 * f), ref_gram_rounds(G, n - 2 * f)
        # integer data (kind 3) has exact ties between different rows, which rounding
        # may break either way
        assert same_rows(G, a, b) or (kind == 3 and mean_tie(G, a, b))


@pytest.mark.slow  # 5-12 s a case
@pytest.mark.parametrize("n,f,d", [s for s in SIZES if s[0] > 7])
def test_geomed_rounds_warm_start_match_cold_start(n, f, d):
    # Warm-started Weiszfeld stops within tol of the cold start: the same rows are picked
    # (the order of two picks may swap only at a near tie, not in these inputs).
    g = (1e-6, 100, 1e-6)
    for G in inputs(n, d, seed=3 * n + d):
        Kf, bad = K.gram(G)
        a, b = K.bulyan_gram_rounds(Kf, bad, n - 2 * f, g), ref_gram_rounds(G, n - 2 * f, g)
        assert same_rows(G, a, b) or sorted(a) == sorted(b)


@pytest.mark.parametrize("n,f,d", SIZES + [(61, 2, 700)])
def test_comed_rounds_match_rerunning_comed(n, f, d):
    for G in inputs(n, d, seed=5 * n + d):
        assert same_rows(G, K.bulyan_comed_rounds(G, n - 2 * f), ref_comed_rounds(G, n - 2 * f))


@pytest.mark.parametrize("n,f,d", SIZES + [(61, 2, 700)])
def test_the_gpus_comed_rounds_match_rerunning_comed(n, f, d):
    """The rounds a GPU runs (tensor ops only, no host sync; here on the CPU): the plain
    loop's picks on random, duplicated, NaN/Inf and tied integer rows."""
    for kind, G in enumerate(inputs(n, d, seed=5 * n + d)):
        got = K.bulyan_comed_rounds_on_device(G, n - 2 * f)
        assert got.dtype == torch.long and got.device == G.device
        ref = ref_comed_rounds(G, n - 2 * f)
        assert all(same_rows(G, a, b) for a, b in zip(got.tolist(), ref)), kind


@pytest.mark.parametrize("select", ["krum", "krum(p=3)", "mean", "comed"])
@pytest.mark.parametrize("agg", ["comed", "mean"])
def test_bulyan_outputs_unchanged(select, agg):
    rule = build_rule(f"bulyan(select={select}, agg={agg})")
    n, f = 45, 10
    for G in inputs(n, 50, seed=11):
        Kf, bad = K.gram(G)
        if select.startswith("krum"):
            picked = ref_krum_rounds(K.pairwise_sq_dists(G, 3.0 if "3" in select else 2.0), f, n - 2 * f)
        elif select == "mean":
            picked = ref_gram_rounds(G, n - 2 * f)
        else:
            picked = ref_comed_rounds(G, n - 2 * f)
        rows = G[picked]
        ref = ref_median(rows) if agg == "comed" else rows.to(torch.float64).mean(0).to(G.dtype)
        out = rule(G, f)
        assert torch.allclose(out, ref, rtol=1e-5, atol=1e-6, equal_nan=True)


def _awkward(n, d, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(n, d, generator=g, dtype=dtype)
    big = 3e38 if dtype == torch.float32 else 1e300
    G[:, :50] = 0.0  # all tied
    G[:3, 50:100] = float("nan")
    G[3:5, 60:100] = INF
    G[5, 100:200] = -INF
    G[: n // 2 + 1, 200:210] = float("nan")  # the median itself is +inf
    G[: n // 2 + 1, 210:220] = -INF
    G[7:12, 300:400] = G[0, 300:400]  # duplicated values
    G[:, 400:420] = torch.randint(0, 3, (n, 20), generator=g).to(dtype)
    G[:, 420:430] = torch.randint(0, 2, (n, 10), generator=g).to(dtype) * 1e30
    G[2:6, 430:440] = big
    return G


def _eq(a, b):
    return bool(((a == b) | (a.isnan() & b.isnan())).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [25, 30, 31, 60, 101, 400])
def test_comed_by_counting_is_exact(n, dtype):
    G = _awkward(n, 1500, n, dtype)
    assert _eq(K.median_by_counting(G), ref_median(G))
    assert _eq(K.coordinate_median_rows(G), ref_median(G))
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(n))[: n - 3]
    assert _eq(K.median_by_counting(G, rows), ref_median(G[rows]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [25, 31, 60, 101])
def test_trimmed_mean_by_counting(n, dtype):
    G = _awkward(n, 1500, 7 * n, dtype)
    for f in (1, 3, (n - 1) // 2):
        a, b = K.trimmed_mean_by_counting(G, f), ref_trimmed(G, f)
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5, equal_nan=True), f
        assert torch.allclose(build_rule("trimmed_mean")(G, f), b, rtol=1e-5, atol=1e-5, equal_nan=True)


@pytest.fixture(params=["chain", "compiled", "batched"])
def lp_path(request, monkeypatch):
    """Runs a test on each of lp_pairwise's three paths: the torch chain, the compiled loop
    it takes for large matrices (here forced for any size), and the broadcast a GPU takes
    (here on the CPU, its column chunks made small so that a test's matrix spans several,
    the last one ragged). Where this machine cannot compile (no C++ compiler), the compiled
    case is skipped with the compiler's error."""
    monkeypatch.setattr(KD, "_fused_failed", [])
    monkeypatch.setattr(KD, "_FUSED_MIN_TERMS", 0 if request.param == "compiled" else 1 << 62)
    if request.param == "batched":
        monkeypatch.setattr(KD, "_lp_sums_chain", KD._lp_sums_batched)
        monkeypatch.setattr(KD, "_BATCH_BUDGET", 40 * 40 * 700)  # 2,500 columns of 40 rows: 4 chunks
    monkeypatch.delenv("RAYMIX_COMPILE", raising=False)
    yield request.param
    if request.param == "compiled" and KD._fused_failed:
        pytest.skip(f"no compiled l^p kernel on this machine: {KD._fused_failed[0]}")


@pytest.mark.parametrize("scale", [1e-4, 1.0, 1e4])
@pytest.mark.parametrize("p", [1.0, 3.0, 16.0, 2.5])
def test_lp_pairwise_matches_cdist_at_any_scale_without_the_slow_path(monkeypatch, lp_path, p, scale):
    """Krum's l^p matrix equals torch.cdist's (float64) whatever the gradients' magnitude,
    and small gradients no longer underflow into the per-pair rescaled recomputation (at
    p = 16, entries of 1e-4 used to send every pair there: 5x slower at n = 1,000). 40 rows
    and 2,500 columns: neither a multiple of the compiled loop's blocks (zero padding)."""
    G = torch.randn(40, 2500, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * scale
    calls = []
    real = KD._lp_dist_to_scaled
    monkeypatch.setattr(KD, "_lp_dist_to_scaled", lambda *a: calls.append(1) or real(*a))
    out = K.lp_pairwise(G.float(), p)
    ref = torch.cdist(G.float().double(), G.float().double(), p=p)
    off = ~torch.eye(40, dtype=torch.bool)
    assert torch.allclose(out[off], ref[off], rtol=1e-6, atol=0)
    assert (out.diagonal() == 0).all() and calls == []


@pytest.mark.parametrize("p", [1.0, 16.0])
def test_lp_pairwise_keeps_non_finite_rows_infinite_after_scaling(lp_path, p):
    G = torch.randn(6, 50, generator=torch.Generator().manual_seed(4)) * 1e-3
    G[1, 3], G[2, 7] = float("nan"), float("inf")
    out = K.lp_pairwise(G, p)
    assert torch.isinf(out[1, [0, 2, 3]]).all() and torch.isinf(out[2, [0, 3]]).all()
    assert torch.isfinite(out[0, [3, 4, 5]]).all() and out[0, 3] > 0


@pytest.mark.slow  # torch.compile of the fused l^p kernels: ~30 s
def test_compiled_lp_terms_equal_the_chains_and_krum_picks_the_same(monkeypatch):
    """The compiled loop's terms are the chain's (same ops, same order): the two matrices
    differ only by the float32 summation order within a column chunk, and Krum picks the
    same worker from either."""
    G = torch.randn(150, 3000, generator=torch.Generator().manual_seed(5)) * 1e-2
    G[:20] += 0.05  # a cluster, so the pick is not a near-tie
    monkeypatch.setattr(KD, "_fused_failed", [])
    monkeypatch.setattr(KD, "_FUSED_MIN_TERMS", 1 << 62)
    chain = {p: K.lp_pairwise(G, p) for p in (3.0, 7.0)}
    picks = {p: build_rule(f"krum(p={int(p)})")(G, 10) for p in (3.0, 7.0)}
    monkeypatch.setattr(KD, "_FUSED_MIN_TERMS", 0)
    for p in (3.0, 7.0):
        fused = K.lp_pairwise(G, p)
        if KD._fused_failed:
            pytest.skip(f"no compiled l^p kernel on this machine: {KD._fused_failed[0]}")
        assert torch.allclose(fused, chain[p], rtol=2e-6, atol=0)
        assert torch.equal(build_rule(f"krum(p={int(p)})")(G, 10), picks[p])


@pytest.mark.parametrize("p", [1.0, 3.0, 16.0, math.inf])
def test_the_gpus_broadcast_sums_are_the_chains_and_krum_and_bulyan_pick_the_same(monkeypatch, p):
    """The broadcast path a GPU takes (few large kernels) has the chain's terms: its sums
    differ only by the float32 summation order within a column chunk (relative 2e-6: a few
    ulps of float32 over sums of <= 500 positive terms, as the compiled loop's test), not at
    all for p = inf (a max), and Krum and Bulyan pick the same workers from either."""
    G = torch.randn(30, 1500, generator=torch.Generator().manual_seed(6)) * 1e-2
    G[:12] += 0.05  # a cluster, so the picks are not near-ties
    G[29, 5] = float("nan")  # a non-finite row stays at infinite distance
    chain = KD.lp_pairwise(G, p)
    rules = [f"krum(p={p})", f"bulyan(select=krum(p={p}))"]
    outs = [build_rule(r)(G, 5) for r in rules]
    monkeypatch.setattr(KD, "_lp_sums_chain", KD._lp_sums_batched)
    monkeypatch.setattr(KD, "_BATCH_BUDGET", 30 * 30 * 400)  # 4 chunks, the last ragged
    batched = KD.lp_pairwise(G, p)
    assert torch.isinf(batched[29, :29]).all() and torch.equal(torch.isinf(batched), torch.isinf(chain))
    fin = torch.isfinite(chain)
    if math.isinf(p):
        assert torch.equal(batched, chain)
    else:
        assert torch.allclose(batched[fin], chain[fin], rtol=2e-6, atol=0)
    for r, out in zip(rules, outs):
        assert torch.equal(build_rule(r)(G, 5), out), r


def test_a_failed_compile_falls_back_to_the_chain_once_and_says_so(monkeypatch, caplog):
    monkeypatch.delenv("RAYMIX_COMPILE", raising=False)  # compiling on, whatever the suite runs under
    G = torch.randn(30, 400, generator=torch.Generator().manual_seed(6))
    monkeypatch.setattr(KD, "_fused_failed", [])
    monkeypatch.setattr(KD, "_FUSED_MIN_TERMS", 1 << 62)
    ref = K.lp_pairwise(G, 3.0)
    attempts = []

    def broken(p):
        attempts.append(p)
        raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found\nmore lines")

    monkeypatch.setattr(KD, "_FUSED_MIN_TERMS", 0)
    monkeypatch.setattr(KD, "_lp_block", broken)
    with caplog.at_level("WARNING", logger=KD.__name__):
        assert torch.equal(K.lp_pairwise(G, 3.0), ref)
        assert torch.equal(K.lp_pairwise(G, 3.0), ref)
    assert attempts == [3]  # not retried in this process
    assert [r.getMessage() for r in caplog.records] == [
        "raymix: compiling the l^p kernel failed (RuntimeError: InvalidCxxCompiler: no working C++ compiler found); using torch ops"]


def test_raymix_compile_0_keeps_the_chain(monkeypatch):
    G = torch.randn(30, 400, generator=torch.Generator().manual_seed(7))
    monkeypatch.setattr(KD, "_fused_failed", [])
    monkeypatch.setattr(KD, "_FUSED_MIN_TERMS", 0)
    monkeypatch.setenv("RAYMIX_COMPILE", "0")
    assert not KD._fused_lp_applies(G, 3.0)
    monkeypatch.setenv("RAYMIX_COMPILE", "1")
    assert KD._fused_lp_applies(G, 3.0) and not KD._fused_lp_applies(G, 2.5) and not KD._fused_lp_applies(G.double(), 3.0)


@pytest.mark.slow  # compiles sixteen kernels: ~20 s
def test_the_pools_sixteen_p_values_compile_in_one_process(monkeypatch):
    """Each p has its own compiled kernel; once they shared one code object, and Dynamo's
    limit of 8 recompiles failed the 9th p (Krum back on the chain for every p after it).
    Two matrix sizes: the kernel's block shape does not depend on n, so no recompile."""
    monkeypatch.setattr(KD, "_fused_failed", [])
    monkeypatch.setattr(KD, "_FUSED_MIN_TERMS", 0)
    for n in (20, 140):
        G = torch.randn(n, 1100, generator=torch.Generator().manual_seed(n))
        for p in range(1, 17):
            K.lp_pairwise(G, float(p))
            if KD._fused_failed and (n, p) == (20, 1):
                pytest.skip(f"no compiled l^p kernel on this machine: {KD._fused_failed[0]}")
            assert not KD._fused_failed, (n, p, KD._fused_failed)


@pytest.mark.parametrize("p", [3, 7, 16])
def test_compiled_terms_equal_the_chains_bit_for_bit(monkeypatch, p):
    """One nonzero column per block: each compiled sum is then a single term, and it equals
    the chain's |x - y|^p exactly (the same threshold and multiplies in the same order)."""
    monkeypatch.setattr(KD, "_fused_failed", [])
    gen = torch.Generator().manual_seed(p)
    A, B = torch.zeros(KD._FUSED_ROWS, KD._FUSED_COLS), torch.zeros(KD._FUSED_ROWS, KD._FUSED_COLS)
    A[:, 0], B[:, 0] = torch.rand(KD._FUSED_ROWS, generator=gen), torch.rand(KD._FUSED_ROWS, generator=gen) * 1e-2
    try:
        out = KD._lp_block(p)(A, B)
    except Exception as e:  # noqa: BLE001 - no compiler here: nothing compiled to compare
        pytest.skip(f"no compiled l^p kernel on this machine: {type(e).__name__}")
    ref = K.ipow_((A[:, None, 0] - B[None, :, 0]).abs().contiguous(), float(p))
    assert torch.equal(out, ref)


def test_a_bad_raymix_compile_is_an_error_not_on(monkeypatch):
    monkeypatch.setattr(KD, "_fused_failed", [])
    monkeypatch.setattr(KD, "_FUSED_MIN_TERMS", 0)
    monkeypatch.setenv("RAYMIX_COMPILE", "false")
    with pytest.raises(ValueError, match="RAYMIX_COMPILE must be 0 or 1, got 'false'"):
        K.lp_pairwise(torch.randn(10, 50), 3.0)
