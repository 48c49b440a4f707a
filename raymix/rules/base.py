"""The contract every aggregation rule meets, and the registry that names them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from raymix.spec import Registry, Spec, parse_spec

__all__ = ["Rule", "RULES", "build_rule", "precondition_error"]


def precondition_error(rule: str, n: int, f: int, needs: str) -> ValueError:
    return ValueError(f"rule {rule} cannot run with n={n}, f={f}: it needs {needs}")


@dataclass(frozen=True, eq=False)
class Rule:
    """A named aggregation rule: ``rule(G, f)`` maps an (n, d) stack to a (d,) vector.

    ``family`` is the class the MixTailor pool groups it under (``"krum"`` for every
    ``krum(p=...)``). ``check(n, f)`` raises ``ValueError`` naming the rule, n, f and
    what it needs; ``__call__`` calls it first, so no rule runs outside its guarantee.
    """

    spec: str
    family: str
    fn: Callable[..., torch.Tensor]
    requirement: Callable[[int, int], str | None]

    def check(self, n: int, f: int) -> None:
        if f < 0 or n < 1:
            raise precondition_error(self.spec, n, f, "n >= 1 and f >= 0")
        needs = self.requirement(n, f)
        if needs is not None:
            raise precondition_error(self.spec, n, f, needs)

    def __call__(self, G: torch.Tensor, f: int, **kw) -> torch.Tensor:
        """``kw`` is forwarded to ``fn``; every built-in rule accepts ``generator=`` (only
        randomized rules such as bucketing use it)."""
        if G.dim() != 2:
            raise ValueError(f"rule {self.spec} takes an (n, d) tensor, got shape {tuple(G.shape)}")
        self.check(G.shape[0], f)
        return self.fn(G, f, **kw)

    def __repr__(self) -> str:
        return f"Rule({self.spec!r})"


RULES: Registry[Rule] = Registry("rule")


def build_rule(spec: "str | Spec | Rule") -> Rule:
    """Build a rule from its spec string, e.g. ``build_rule("bulyan(select=krum(p=3), agg=comed)")``."""
    if isinstance(spec, Rule):
        return spec
    import dataclasses

    import raymix.rules  # noqa: F401  (registers every rule on first use)

    parsed = parse_spec(spec)
    rule = RULES.build(parsed)
    # Canonical text is the parsed spec as the user wrote it (arguments in their order).
    return rule if rule.spec == str(parsed) else dataclasses.replace(rule, spec=str(parsed))
