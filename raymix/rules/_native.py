"""raymix's one C kernel (``_lp_weiszfeld.c``): the l^p Weiszfeld iteration of ``geomed(p)``,
built on first use with the system's C compiler and loaded with ctypes.

Why C: the pool-aware attack runs this iteration for each of the pool's 15 ``geomed(p != 2)``
members, tens of maps each, at every lambda it tries (docs/measurements.md, "Cost of the searching
attacks"); with torch ops a map is five to ten passes over the rows (~1 ms at d = 21,840),
in C two passes with the terms in registers (~0.15 ms).

Built once per machine and source: ``$XDG_CACHE_HOME/raymix/native/lp_weiszfeld-<hash>.so``
(``~/.cache`` without XDG_CACHE_HOME), the hash over the source, the compiler and its flags,
written to a temporary name and renamed, so concurrent actors never load a partial file. The
compiler is ``$CC`` or ``cc``. ``RAYMIX_COMPILE=0`` turns it off, as it turns off the compiled
l^p loop. Where it cannot be built (no compiler), the first failure is logged once and callers
use their torch path: the same iteration, values within float32 rounding.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch

__all__ = ["lp_weiszfeld", "available"]

_log = logging.getLogger(__name__)
_SOURCE = Path(__file__).with_name("_lp_weiszfeld.c")
_FLAGS = ("-O3", "-fopenmp-simd", "-fPIC", "-shared")
_MAX_P = 16  # the source's specialised powers: p = 1..16 (the paper pool's)
_lock = threading.Lock()
_state: dict = {}  # "fn": the loaded function, or "failed": why it could not be built


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "raymix" / "native"


def _build() -> Path:
    cc = os.environ.get("CC", "cc")
    src = _SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([src, cc.encode(), " ".join(_FLAGS).encode(), platform.machine().encode(), platform.system().encode()])).hexdigest()[:16]
    out = _cache_dir() / f"lp_weiszfeld-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        r = subprocess.run([cc, *_FLAGS, "-o", tmp, str(_SOURCE), "-lm"], capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"{cc} exited {r.returncode}: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _function():
    """The loaded C function, or None (off, or the build failed: logged once)."""
    from raymix.rules._kernels import compile_enabled

    if not compile_enabled():
        return None
    with _lock:
        if "fn" not in _state and "failed" not in _state:
            try:
                fn = ctypes.CDLL(str(_build())).raymix_lp_weiszfeld
                P, I64, D = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
                fn.argtypes = [P, I64, I64, P, ctypes.c_int, D, I64, D, D, P, P, P, P, P]
                fn.restype = ctypes.c_int
                _state["fn"] = fn
            except Exception as e:  # noqa: BLE001 - any build or load failure: the torch path computes the same
                _state["failed"] = f"{type(e).__name__}: {e}"
                _log.warning("raymix: building the C l^p Weiszfeld kernel failed (%s); using torch ops", _state["failed"])
        return _state.get("fn")


def available() -> bool:
    """Whether the kernel is on and built (building it if needed)."""
    return _function() is not None


def lp_weiszfeld(X: torch.Tensor, mult: torch.Tensor, p: float, nu: float, iters: int, tol: float, s: float) -> "torch.Tensor | None":
    """The smoothed l^p Weiszfeld iterate of ``geomed(p)`` on the rows of X (float32, CPU,
    finite, scaled by the power of two ``s`` so that |x| <= 1), row i weighted ``mult[i]``
    (float64); distances are measured unscaled (divided by s), as the rule's. Returns z (scaled
    like X), or None where the kernel does not serve (off or not built, p not an integer in
    1..16, X not float32 on the CPU) or gave up on a row whose l^p sum may have underflowed:
    the caller then runs its torch path."""
    if not (X.dtype == torch.float32 and X.device.type == "cpu" and X.dim() == 2 and float(p).is_integer() and 1 <= p <= _MAX_P):
        return None
    fn = _function()
    if fn is None:
        return None
    Xn = np.ascontiguousarray(X.numpy())
    m, d = Xn.shape
    w = np.ascontiguousarray(mult.to(torch.float64).numpy())
    z, work = np.empty(d, np.float32), np.empty(d, np.float32)
    wbuf, abuf, done = np.empty(m), np.empty(m, np.float32), np.zeros(1, np.int64)
    status = fn(Xn.ctypes.data, m, d, w.ctypes.data, int(p), float(nu), int(iters), float(tol), float(s),
                z.ctypes.data, work.ctypes.data, wbuf.ctypes.data, abuf.ctypes.data, done.ctypes.data)
    return None if status else torch.from_numpy(z)
