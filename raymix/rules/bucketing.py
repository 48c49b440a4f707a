"""Wrappers that mix the inputs before any rule: bucketing (Karimireddy, He & Jaggi, 2022)
and s-replacement resampling (He, Karimireddy & Jaggi, 2020), the MixTailor paper's choice
for its non-iid experiment."""
from __future__ import annotations

import math

import torch

from raymix.rules import _kernels as K
from raymix.rules._common import check, int_arg, rule_arg, spec_text
from raymix.rules.base import RULES, Rule

__all__ = ["bucketing", "bucket_means", "resampling", "resample_means", "DEFAULT_SEED"]

DEFAULT_SEED = 0


def bucket_means(G: torch.Tensor, s: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Randomly permute the rows and average consecutive buckets of s (the last bucket
    holds the n mod s left over when s does not divide n): a (ceil(n/s), d) stack.
    Without a generator a fresh one seeded with DEFAULT_SEED is used (deterministic)."""
    n = G.shape[0]
    if generator is None:
        generator = torch.Generator().manual_seed(DEFAULT_SEED)
    perm = torch.randperm(n, generator=generator, device=generator.device).to(G.device)
    nb = math.ceil(n / s)
    bucket = torch.arange(n, device=G.device) // s
    out = torch.zeros(nb, G.shape[1], dtype=G.dtype, device=G.device)
    out.index_add_(0, bucket, G[perm])  # a NaN row spoils only its own bucket
    sizes = torch.bincount(bucket, minlength=nb).to(G.dtype)
    return out.div_(sizes[:, None])


def resample_means(G: torch.Tensor, s: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """s-replacement resampling: n outputs, output j the mean of row perm_r[j] over s
    independent random permutations, so every input is used exactly s times (an (n, d) stack).

    A pick that is a non-finite row (NaN/Inf entries, or a sum that overflows) is left out of
    its output's mean, so a bad row never spoils the honest rows it is mixed with: an output
    is non-finite only when all s of its picks are bad, which f bad rows (s uses each) can
    do to at most f outputs, and the inner rule, kept at f, handles those."""
    n = G.shape[0]
    if generator is None:
        generator = torch.Generator().manual_seed(DEFAULT_SEED)
    perms = torch.stack([torch.randperm(n, generator=generator, device=generator.device) for _ in range(s)]).to(G.device)
    good = ~K.bad_rows(G)
    if bool(good.all()):
        out = G[perms[0]].clone()
        for r in range(1, s):  # s rounds (s is small), each a whole-stack gather
            out.add_(G[perms[r]])
        return out.div_(s)
    out = torch.zeros_like(G)
    count = torch.zeros(n, dtype=G.dtype, device=G.device)
    for r in range(s):
        ok = good[perms[r]]
        out[ok] += G[perms[r][ok]]
        count += ok.to(G.dtype)
    out = out / count.clamp_min(1)[:, None]
    out[count == 0] = G[perms[0][count == 0]]  # every pick bad: the bad row itself
    return out


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


def _mixing_rule(name: str, mix, requirement_of, family_of):
    """A registered factory for a wrapper that mixes the rows (``mix(G, s, generator)``) and
    hands them to an inner rule with the same f."""

    def factory(s=2, rule=None) -> Rule:
        sv = int_arg(name, "s", s, 1)
        inner = rule_arg(name, "rule", "krum" if rule is None else rule)
        return Rule(
            spec_text(name, {"s": s, "rule": rule}, {"s": 2, "rule": None}),
            family_of(inner),
            lambda G, f, generator=None: inner.fn(mix(G, sv, generator), f, generator=generator),
            requirement_of(sv, inner),
        )

    RULES.register(name, factory)


_mixing_rule("bucketing", bucket_means, _requirement, lambda inner: "bucketing")


def _resampling_requirement(inner: Rule):
    def requirement(n: int, f: int) -> str | None:
        sub = inner.requirement(n, f)
        return None if sub is None else f"its inner rule {inner.spec} to run on n = {n} resampled rows with f = {f}, which needs {sub}"

    return requirement


def resampling(G: torch.Tensor, f: int, s: int = 2, rule="krum", generator: torch.Generator | None = None) -> torch.Tensor:
    """Resample (s-replacement, n outputs), then apply ``rule`` with the same f. Up to s*f of
    the outputs may carry a Byzantine input: He et al.'s analysis pays for it with s times the
    Byzantine fraction; the rule here keeps its f (use ``bucketing`` for the conservative
    variant)."""
    s = int_arg("resampling", "s", s, 1)
    inner = rule_arg("resampling", "rule", rule)
    check("resampling", G, f, _resampling_requirement(inner))
    return inner.fn(resample_means(G, s, generator), f, generator=generator)


# Resampling keeps n rows: the member stays in its class (a resampled Krum is a Krum).
_mixing_rule("resampling", resample_means, lambda s, inner: _resampling_requirement(inner), lambda inner: inner.family)
