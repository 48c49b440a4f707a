"""Wrappers that mix the inputs before any rule: bucketing (Karimireddy, He & Jaggi, 2022)
and s-replacement resampling (He, Karimireddy & Jaggi, 2020), the MixTailor paper's choice
for its non-iid experiment."""
from __future__ import annotations

import math

import torch

from raymix.rules import _kernels as K
from raymix import checks
from raymix.rules.base import RULES, Rule, as_rule

__all__ = ["Bucketing", "Resampling", "bucketing", "bucket_means", "resampling", "resample_means", "DEFAULT_SEED"]

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
    X = G[perm]
    out = torch.zeros(nb, G.shape[1], dtype=G.dtype, device=G.device)
    sizes = torch.zeros(nb, dtype=G.dtype, device=G.device)
    # Bucket b holds rows b*s .. b*s+s-1 of X: add each bucket's j-th row in turn, j = 0..s-1.
    # The same sums, in the same order, as index_add_ makes on the CPU, and no atomics on CUDA
    # (whose order, and so whose last bits, change from run to run). A NaN row spoils only its bucket.
    for j in range(min(s, n)):
        rows = X[j::s]  # the j-th row of the first len(rows) buckets (only the last may be short)
        out[: rows.shape[0]] += rows
        sizes[: rows.shape[0]] += 1
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


def bucketing(G: torch.Tensor, f: int, s: int = 2, rule="krum", generator: torch.Generator | None = None) -> torch.Tensor:
    """Average random buckets of s rows, then apply ``rule`` (default krum) to the
    ceil(n/s) bucket means with the same f (each Byzantine row can spoil one bucket)."""
    return Bucketing(s=s, rule=rule)(G, f, generator)


def resampling(G: torch.Tensor, f: int, s: int = 2, rule="krum", generator: torch.Generator | None = None) -> torch.Tensor:
    """Resample (s-replacement, n outputs), then apply ``rule`` with the same f. Up to s*f of
    the outputs may carry a Byzantine input: He et al.'s analysis pays for it with s times the
    Byzantine fraction; the rule here keeps its f (use ``bucketing`` for the conservative
    variant)."""
    return Resampling(s=s, rule=rule)(G, f, generator)


class _Mixing(Rule):
    """A wrapper that mixes the rows (``mix(G, s, generator)``) and hands them to an inner
    rule with the same f."""

    def __init__(self, s: int = 2, rule="krum"):
        self.s = checks.integer(f"rule {self.name}", "s", s, lo=1)
        self.rule = as_rule(f"rule {self.name}", "rule", "krum" if rule is None else rule)

    @staticmethod
    def mix(G: torch.Tensor, s: int, generator: torch.Generator | None) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def aggregate(self, G, f, generator=None):
        return self.rule.aggregate(self.mix(G, self.s, generator), f, generator=generator)


@RULES.register("bucketing")
class Bucketing(_Mixing):
    """Bucketing (Karimireddy, He & Jaggi, 2022): average random buckets of s rows, then any rule.

    Permute the rows with the generator (``torch.randperm(n, generator=g)``; without one, a
    fresh generator seeded with DEFAULT_SEED = 0), average consecutive buckets of s (the last
    holds the n mod s left over), apply ``rule`` (default krum) to the ceil(n/s) bucket means
    with the same f: each Byzantine row can spoil one bucket. ``s`` >= 1. Needs the inner
    rule's precondition on (ceil(n/s), f).
    """

    needs = "the inner rule's on ceil(n/s) rows with the same f"
    mix = staticmethod(bucket_means)

    def requirement(self, n, f):
        nb = math.ceil(n / self.s)
        sub = self.rule.requirement(nb, f)
        if sub is not None:
            return f"its inner rule {self.rule.spec} to run on ceil(n/s) = {nb} buckets with f = {f}, which needs {sub}"
        return None


@RULES.register("resampling")
class Resampling(_Mixing):
    """s-replacement resampling (He, Karimireddy & Jaggi, 2020), then any rule, in the rule's class.

    Output j is the mean of rows ``perm_r[j]`` over s independent random permutations
    (every input used exactly s times; non-finite picks are left out of their output's mean),
    then ``rule`` (default krum) on the n resampled rows with the same f. Keeps n rows, so a
    resampled rule stays in its pool family (a resampled Krum is a Krum). ``s`` >= 1. Needs
    the inner rule's precondition on (n, f).
    """

    needs = "the inner rule's on n rows with the same f"
    mix = staticmethod(resample_means)

    @property
    def family(self) -> str:
        return self.rule.family

    def requirement(self, n, f):
        sub = self.rule.requirement(n, f)
        return None if sub is None else f"its inner rule {self.rule.spec} to run on n = {n} resampled rows with f = {f}, which needs {sub}"
