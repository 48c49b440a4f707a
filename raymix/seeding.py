"""Named, independent seed streams derived from one experiment seed.

Every consumer of randomness (the aggregator's rule draws, the adversary, each worker's
batches and dropout) gets its own stream, keyed by names and integers, so no component
can reach or advance another's generator, and a stream's value at step t depends only on
(seed, names, t): a retried or resumed step draws exactly what it drew before.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch

__all__ = ["stream_seed", "torch_generator", "numpy_generator"]


def _key(part: "str | int") -> int:
    if isinstance(part, (int, np.integer)) and not isinstance(part, bool):
        if part < 0:
            raise ValueError(f"seed stream keys must be non-negative, got {part}")
        return int(part)
    # Stable across processes (unlike hash()), so actors on other hosts agree.
    return int.from_bytes(hashlib.blake2b(str(part).encode(), digest_size=4).digest(), "little")


def stream_seed(seed: int, *path: "str | int") -> int:
    """A 63-bit seed for the stream ``path`` under ``seed`` (e.g. ``stream_seed(7, "worker", 3, "step", 10)``)."""
    ss = np.random.SeedSequence(entropy=int(seed), spawn_key=tuple(_key(p) for p in path))
    return int(ss.generate_state(1, dtype=np.uint64)[0]) >> 1


def torch_generator(seed: int, *path: "str | int", device: "str | torch.device" = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(stream_seed(seed, *path))
    return g


def numpy_generator(seed: int, *path: "str | int") -> np.random.Generator:
    return np.random.default_rng(stream_seed(seed, *path))
