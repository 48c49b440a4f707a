"""The C l^p Weiszfeld kernel (raymix/rules/_native.py): the rule's iterates, faster; its
torch fallback where it is off, cannot be built, or gives up on a row.

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
from raymix.rules.geomed import GeometricMedian

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
def test_the_kernel_gives_up_on_a_row_the_iterate_sits_on():
    """All rows equal: every l^p sum is 0 at the mean, where the rule measures the rows again
    exactly; the kernel says so (None) instead of guessing."""
    X = torch.full((4, 50), 0.25)
    assert _native.lp_weiszfeld(X, torch.ones(4, dtype=torch.float64), 3, 1e-6, 100, 1e-6, 1.0) is None
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
    assert "building the C l^p Weiszfeld kernel failed" in caplog.records[0].getMessage()
    want = [float(GeometricMedian(p=p)(pt.G, 2).double() @ pv.mu64) for p in (3, 5)]
    assert np.abs(got - want).max() <= 2e-5 * mm


@pytest.mark.skipif(not HAS_CC, reason="no C compiler: the kernel cannot be built here")
def test_the_build_is_cached_and_a_second_load_does_not_rebuild(fresh_native):
    assert _native.available()
    built = list((fresh_native / "raymix" / "native").iterdir())
    assert len(built) == 1 and built[0].name.startswith("lp_weiszfeld-") and built[0].suffix == ".so"
    _native._state.clear()
    mtime = built[0].stat().st_mtime_ns
    assert _native.available() and built[0].stat().st_mtime_ns == mtime  # loaded, not rebuilt


def test_raymix_compile_0_turns_the_kernel_off(monkeypatch):
    monkeypatch.setenv("RAYMIX_COMPILE", "0")
    assert _native.lp_weiszfeld(torch.rand(3, 8), torch.ones(3, dtype=torch.float64), 3, 1e-6, 10, 1e-6, 1.0) is None
