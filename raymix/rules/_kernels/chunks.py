"""Column chunking shared by the kernels: work on an (n, d) stack by column blocks, so memory
beyond the input stays a small multiple of one block."""
from __future__ import annotations

INF = float("inf")


def column_chunks(d: int, size: int):
    size = max(1, int(size))
    for a in range(0, d, size):
        yield a, min(d, a + size)
