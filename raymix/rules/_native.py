"""raymix's C kernels, built on first use with the system's C compiler and loaded with ctypes:

- ``_lp_weiszfeld.c``: the l^p Weiszfeld iteration of ``geomed(p)``. Why C: the pool-aware
  attack runs it for each of the pool's 15 ``geomed(p != 2)`` members, tens of maps each, at
  every lambda it tries (docs/measurements.md, "Cost of the searching attacks"); with torch
  ops a map is five to ten passes over the rows (~1 ms at d = 21,840), in C two passes with
  the terms in registers (~0.15 ms).
- ``_lp_chain.c``: every integer power sum of |x - y| for pairs of rows at once (the attack's
  Krum(p) distances): each 256-column block raised through all powers while in L1, where torch
  makes one pass over the pairs' (r, d) float64 differences per power.
- ``_order_stats.c``: comed and trimmed mean of up to ``ORDER_MAX_ROWS`` rows by the same
  comparator network the torch path runs, one L1-sized column block at a time, the columns
  split over torch's thread count. Why C: each comparator is a torch call over a column chunk
  there, and a per-column sort costs 20-50 ns an element (docs/measurements.md, "Order
  statistics against ByzFL").

The sources are one library, built once per machine and source:
``$XDG_CACHE_HOME/raymix/native/kernels-<hash>.so`` (``~/.cache`` without XDG_CACHE_HOME), the
hash over the sources, the compiler and its flags, written to a temporary name and renamed, so
concurrent actors never load a partial file. The compiler is ``$CC`` or ``cc``.
``RAYMIX_COMPILE=0`` turns it off, as it turns off the compiled l^p loop. Where it cannot be
built (no compiler), the first failure is logged once and callers use their torch path: the
same arithmetic (order statistics: the same values; Weiszfeld: within float32 rounding).
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

__all__ = ["lp_weiszfeld", "order_stats", "lp_chain", "available", "ORDER_MAX_ROWS"]

_log = logging.getLogger(__name__)
_SOURCES = tuple(Path(__file__).with_name(f) for f in ("_lp_weiszfeld.c", "_order_stats.c", "_lp_chain.c"))
_FLAGS = ("-O3", "-fopenmp-simd", "-fPIC", "-shared")
_MAX_P = 16  # the source's specialised powers: p = 1..16 (the paper pool's)
_lock = threading.Lock()
_state: dict = {}  # "lib": the loaded library, or "failed": why it could not be built
# Above this many rows the network's comparators (~n log^2 n) cost more than the counting
# selection of raymix/rules/_kernels/counting.py (measured: docs/measurements.md).
ORDER_MAX_ROWS = 128
# Below this many columns per thread a second thread costs more to start than it saves.
_SPLIT_COLUMNS = 65536


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "raymix" / "native"


def _build() -> Path:
    cc = os.environ.get("CC", "cc")
    srcs = [f.read_bytes() for f in _SOURCES]
    key = hashlib.sha256(b"\0".join([*srcs, cc.encode(), " ".join(_FLAGS).encode(), platform.machine().encode(), platform.system().encode()])).hexdigest()[:16]
    out = _cache_dir() / f"kernels-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        r = subprocess.run([cc, *_FLAGS, "-o", tmp, *map(str, _SOURCES), "-lm"], capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"{cc} exited {r.returncode}: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def compile_enabled() -> bool:
    """``RAYMIX_COMPILE``: unset or ``1`` lets large l^p matrices use the compiled loop and
    turns these C kernels on, ``0`` keeps the torch paths; any other value is refused (the preflight checks it before Ray
    starts: ``runtime.resources.check_files``)."""
    value = os.environ.get("RAYMIX_COMPILE", "1").strip()
    if value not in ("0", "1"):
        raise ValueError(f"RAYMIX_COMPILE must be 0 or 1, got {value!r}")
    return value == "1"


def _library():
    """The loaded C library, or None (off, or the build failed: logged once)."""
    if not compile_enabled():
        return None
    with _lock:
        if "lib" not in _state and "failed" not in _state:
            try:
                lib = ctypes.CDLL(str(_build()))
                P, I64, I32, D, F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double, ctypes.c_float
                lib.raymix_lp_weiszfeld.argtypes = [P, I64, I64, P, I32, D, I64, D, D, P, P, P, P, P]
                lib.raymix_lp_weiszfeld.restype = I32
                lib.raymix_order_stats.argtypes = [P, I64, P, I32, I64, I64, P, I32, I32, I32, I32, F, P, I64, P, I64]
                lib.raymix_order_stats.restype = I32
                lib.raymix_lp_chain.argtypes = [P, I64, P, P, I64, P, I64, I64, I32, D, P, P]
                lib.raymix_lp_chain.restype = I32
                _state["lib"] = lib
            except Exception as e:  # noqa: BLE001 - any build or load failure: the torch path computes the same
                _state["failed"] = f"{type(e).__name__}: {e}"
                _log.warning("raymix: building the C kernels failed (%s); using torch ops", _state["failed"])
        return _state.get("lib")


def available() -> bool:
    """Whether the kernel is on and built (building it if needed)."""
    return _library() is not None


def lp_weiszfeld(X: torch.Tensor, mult: torch.Tensor, p: float, nu: float, iters: int, tol: float, s: float) -> "torch.Tensor | None":
    """The smoothed l^p Weiszfeld iterate of ``geomed(p)`` on the rows of X (float32, CPU,
    finite, scaled by the power of two ``s`` so that |x| <= 1), row i weighted ``mult[i]``
    (float64); distances are measured unscaled (divided by s), as the rule's. Returns z (scaled
    like X), or None where the kernel does not serve (off or not built, p not an integer in
    1..16, X not float32 on the CPU) or a sum was not finite: the caller then runs its torch
    path. A row whose plain sum may have underflowed (the iterate on or near it) is measured
    again scaled by its largest term, as the rule measures it."""
    if not (X.dtype == torch.float32 and X.device.type == "cpu" and X.dim() == 2 and float(p).is_integer() and 1 <= p <= _MAX_P):
        return None
    lib = _library()
    if lib is None:
        return None
    fn = lib.raymix_lp_weiszfeld
    Xn = np.ascontiguousarray(X.numpy())
    m, d = Xn.shape
    w = np.ascontiguousarray(mult.to(torch.float64).numpy())
    z, work = np.empty(d, np.float32), np.empty(d, np.float32)
    wbuf, abuf, done = np.empty(m), np.empty(m, np.float32), np.zeros(1, np.int64)
    status = fn(Xn.ctypes.data, m, d, w.ctypes.data, int(p), float(nu), int(iters), float(tol), float(s),
                z.ctypes.data, work.ctypes.data, wbuf.ctypes.data, abuf.ctypes.data, done.ctypes.data)
    return None if status else torch.from_numpy(z)


def order_stats(G: torch.Tensor, rows, net, mode: int, lo: int, hi: int, scale: float = 1.0) -> "torch.Tensor | None":
    """Per column of ``G[rows]`` (all rows when ``rows`` is None), after the comparator network
    ``net`` ((i, j) pairs, i < j, over the selected rows, NaN as +inf): mode 0 the median (wire
    ``lo``, or the mean of wires ``lo`` and ``hi``), mode 1 the sum of wires ``lo..hi`` times
    ``scale`` (the trimmed mean), mode 2 wires ``lo..hi`` themselves as rows of a (hi - lo + 1, d)
    tensor (with a full sorting network: sorted columns). The torch network's values, bit for
    bit. None where the kernel does not serve (off or not built, G not float32 on the CPU with
    unit column stride)."""
    if not (G.dtype == torch.float32 and G.device.type == "cpu" and G.dim() == 2 and G.stride(1) == 1):
        return None
    lib = _library()
    if lib is None:
        return None
    d = G.shape[1]
    idx = np.arange(G.shape[0], dtype=np.int64) if rows is None else np.ascontiguousarray(np.asarray(rows, dtype=np.int64))
    n = len(idx)
    pairs = np.ascontiguousarray(np.asarray(net, dtype=np.int32).reshape(-1))
    out = torch.empty((hi - lo + 1, d) if mode == 2 else d, dtype=torch.float32)
    if d == 0:
        return out
    # A block of B columns of every row stays in L2 (~512 KiB; 0.5 MiB of keys at most) for all
    # of its comparators: measured at n = 30 and 100, d = 1M, blocks of 1-2K columns beat
    # L1-sized ones by up to 2x (fewer per-comparator loop starts).
    B = max(64, min(2048, (131072 // n) // 16 * 16))
    # Columns split over torch's threads; ctypes releases the GIL for the call.
    parts = max(1, min(torch.get_num_threads(), d // _SPLIT_COLUMNS))
    bounds = [d * k // parts for k in range(parts + 1)]
    works = [np.empty(n * B, np.int32) for _ in range(parts)]
    gp, op = G.data_ptr(), out.data_ptr()
    status = [1] * parts

    def run(k):
        status[k] = lib.raymix_order_stats(gp, G.stride(0), idx.ctypes.data, n, bounds[k], bounds[k + 1], pairs.ctypes.data,
                                           len(pairs) // 2, mode, lo, hi, scale, op, d, works[k].ctypes.data, B)

    if parts == 1:
        run(0)
    else:
        threads = [threading.Thread(target=run, args=(k,)) for k in range(1, parts)]
        for t in threads:
            t.start()
        run(0)
        for t in threads:
            t.join()
    return None if any(status) else out



def lp_chain(A: torch.Tensor, ia, B: torch.Tensor, ib, maxe: int, floor: float) -> "tuple[np.ndarray, np.ndarray] | None":
    """For pairs t = (A[ia[t]], B[ib[t]]) of float32 rows: (smax, sums) with smax[t] = max|x - y|
    and sums[t, e-1] = sum_c (a_c)^e, a = |x - y| / smax (0 where <= floor), e = 1..maxe, float64
    (see ``_lp_chain.c``). None where the kernel does not serve (off or not built, not float32
    on the CPU with unit column stride, maxe outside 1..64)."""
    ok = all(T.dtype == torch.float32 and T.device.type == "cpu" and T.dim() == 2 and T.stride(1) == 1 for T in (A, B))
    if not (ok and 1 <= maxe <= 64 and A.shape[1] == B.shape[1]):
        return None
    lib = _library()
    if lib is None:
        return None
    ia = np.ascontiguousarray(np.asarray(ia, dtype=np.int64))
    ib = np.ascontiguousarray(np.asarray(ib, dtype=np.int64))
    r, d = len(ia), A.shape[1]
    smax, sums = np.empty(r), np.empty((r, maxe))
    status = lib.raymix_lp_chain(A.data_ptr(), A.stride(0), ia.ctypes.data, B.data_ptr(), B.stride(0), ib.ctypes.data,
                                 r, d, int(maxe), float(floor), smax.ctypes.data, sums.ctypes.data)
    return None if status else (smax, sums)
