"""Resampling by bucketing (Karimireddy, He & Jaggi, 2022) in front of any rule."""
from __future__ import annotations

import math

import torch

from raymix.rules._common import check, int_arg, rule_arg, spec_text
from raymix.rules.base import RULES, Rule

__all__ = ["bucketing", "bucket_means", "DEFAULT_SEED"]

DEFAULT_SEED = 0


def bucket_means(G: torch.Tensor, s: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Randomly permute the rows and average consecutive buckets of s (the last bucket
    holds the n mod s left over when s does not divide n): a (ceil(n/s), d) stack.
    Without a generator a fresh one seeded with DEFAULT_SEED is used (deterministic)."""
    n = G.shape[0]
    if generator is None:
        generator = torch.Generator().manual_seed(DEFAULT_SEED)
    perm = torch.randperm(n, generator=generator, device=generator.device).tolist()
    nb = math.ceil(n / s)
    out = torch.zeros(nb, G.shape[1], dtype=G.dtype, device=G.device)
    for pos, r in enumerate(perm):  # a loop over workers; a NaN row spoils only its bucket
        out[pos // s].add_(G[r])
    sizes = torch.tensor([min(s, n - b * s) for b in range(nb)], dtype=G.dtype, device=G.device)
    return out.div_(sizes[:, None])


def _requirement(s: int, inner: Rule):
    def requirement(n: int, f: int) -> str | None:
        nb = math.ceil(n / s)
        sub = inner.requirement(nb, f)
        if sub is not None:
            return f"its inner rule {inner.spec} to run on ceil(n/s) = {nb} buckets with f = {f}, which needs {sub}"
        return None

    return requirement


def bucketing(G: torch.Tensor, f: int, s: int = 2, rule="krum", generator: torch.Generator | None = None) -> torch.Tensor:
    """Average random buckets of s rows, then apply ``rule`` (default krum) to the
    ceil(n/s) bucket means with the same f (each Byzantine row can spoil one bucket)."""
    s = int_arg("bucketing", "s", s, 1)
    inner = rule_arg("bucketing", "rule", rule)
    check("bucketing", G, f, _requirement(s, inner))
    return inner.fn(bucket_means(G, s, generator), f, generator=generator)


@RULES.register("bucketing")
def _bucketing_factory(s=2, rule=None) -> Rule:
    sv = int_arg("bucketing", "s", s, 1)
    inner = rule_arg("bucketing", "rule", "krum" if rule is None else rule)
    return Rule(
        spec_text("bucketing", {"s": s, "rule": rule}, {"s": 2, "rule": None}),
        "bucketing",
        lambda G, f, generator=None: inner.fn(bucket_means(G, sv, generator), f, generator=generator),
        _requirement(sv, inner),
    )
