"""The contract every aggregation rule meets (:class:`Rule`), and the registry that names them.

A rule is one small class: hyperparameters checked once in ``__init__`` and stored as plain
attributes, ``requirement(n, f)`` (its precondition), ``aggregate(G, f, generator)`` (the
computation, unchecked), and a docstring whose first line is a one-line summary followed by
the formula and the precondition. ``rule(G, f, generator=None)`` checks the input and the
precondition, then aggregates. Rules are plain data: they pickle with :mod:`pickle`, compare
equal when their canonical specs are equal, and print as their spec::

    from raymix import checks
    from raymix.rules import RULES, Rule

    @RULES.register("my_rule")
    class MyRule(Rule):
        \"\"\"One-line summary. Formula ... Needs n > 2f.\"\"\"

        needs = "n > 2f"

        def __init__(self, beta: float = 0.1):
            self.beta = checks.number("rule my_rule", "beta", beta, lo=0.0)

        def requirement(self, n, f):
            return None if n > 2 * f else f"n > 2f = {2 * f}"

        def aggregate(self, G, f, generator=None):
            ...

``build_rule("my_rule(beta=0.2)")`` then builds it, and it can be a MixTailor pool member.
"""
from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch

from raymix import checks
from raymix.spec import Registry, Spec, SpecError, init_args, parse_spec

__all__ = ["Rule", "RULES", "build_rule", "as_rule", "precondition_error"]


def precondition_error(rule: str, n: int, f: int, needs: str) -> ValueError:
    return ValueError(f"rule {rule} cannot run with n={n}, f={f}: it needs {needs}")


class Rule:
    """A robust aggregation rule: ``rule(G, f)`` maps an (n, d) stack to a (d,) vector.

    Class attributes: ``name`` (the registry name; ``RULES.register`` sets it), ``needs``
    (the precondition in words, for listings) and ``family`` (the class the MixTailor pool
    groups the rule under; the name unless a subclass says otherwise).

    A subclass implements ``__init__`` (check and store the hyperparameters; the attribute
    of each ``__init__`` argument has that argument's name, which is how :attr:`spec` is
    derived), ``requirement(n, f)`` (``None``, or what the rule needs, e.g.
    ``"n >= 2f+3 = 7"``) and ``aggregate(G, f, generator=None)``.
    """

    name: ClassVar[str] = "rule"
    needs: ClassVar[str] = "nothing"

    # -- the subclass's part ------------------------------------------------------------
    def requirement(self, n: int, f: int) -> str | None:
        """What the rule needs to run with n rows of which f Byzantine, or None if it can."""
        return None

    def aggregate(self, G: torch.Tensor, f: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """The computation, on an input already checked by :meth:`check_input`."""
        raise NotImplementedError(f"rule {self.name} does not implement aggregate(G, f, generator)")

    # -- the contract ---------------------------------------------------------------------
    @property
    def family(self) -> str:
        return self.name

    @classmethod
    def summary(cls) -> str:
        """The first line of the class docstring."""
        doc = inspect.getdoc(cls) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    def check(self, n: int, f: int) -> None:
        """Raise ``ValueError`` naming the rule, n, f and what it needs, unless it can run."""
        if not checks.is_int(n) or not checks.is_int(f) or f < 0 or n < 1:
            raise precondition_error(self.spec, n, f, "n >= 1 and an integer f >= 0")
        needs = self.requirement(n, f)
        if needs is not None:
            raise precondition_error(self.spec, n, f, needs)

    def check_input(self, G: torch.Tensor, f: int) -> None:
        """Raise unless ``G`` is an (n, d) tensor this rule can aggregate with ``f``."""
        if not isinstance(G, torch.Tensor) or G.dim() != 2:
            raise ValueError(f"rule {self.spec} takes an (n, d) tensor, got {tuple(G.shape) if isinstance(G, torch.Tensor) else type(G).__name__}")
        self.check(G.shape[0], f)

    def __call__(self, G: torch.Tensor, f: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """The aggregate of ``G`` with at most ``f`` Byzantine rows. Every rule accepts
        ``generator`` (only randomized rules such as bucketing use it)."""
        self.check_input(G, f)
        return self.aggregate(G, f, generator)

    # -- spec, equality, printing -------------------------------------------------------
    def spec_args(self) -> dict[str, Any]:
        """The spec's arguments: each ``__init__`` argument whose value (the attribute of the
        same name) differs from its default, in signature order (:func:`raymix.spec.init_args`)."""
        return init_args(self)

    def canonical_spec(self) -> str:
        """The spec text from the attributes: the name and the arguments that differ from
        their defaults (nested rules by their canonical specs)."""
        return str(Spec(self.name, tuple(self.spec_args().items())))

    @property
    def spec(self) -> str:
        """The spec text: as the user wrote it when built by :func:`build_rule`, else canonical."""
        return self.__dict__.get("_spec") or self.canonical_spec()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Rule):
            return NotImplemented
        return type(self) is type(other) and self.canonical_spec() == other.canonical_spec()

    def __hash__(self) -> int:
        return hash((type(self).__qualname__, self.canonical_spec()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"


RULES: Registry[Rule] = Registry("rule")


def build_rule(spec: "str | Spec | Rule") -> Rule:
    """Build a rule from its spec string, e.g. ``build_rule("bulyan(select=krum(p=3), agg=comed)")``.
    ``rule.spec`` is the parsed text as written (the user's arguments in the user's order)."""
    if isinstance(spec, Rule):
        return spec
    import raymix.rules  # noqa: F401  (registers every rule on first use)

    parsed = parse_spec(spec)
    rule = RULES.build(parsed)
    if not isinstance(rule, Rule):
        raise TypeError(f"rule {parsed.name!r} is registered with a factory that returned {type(rule).__name__}, not a Rule")
    rule._spec = str(parsed)
    return rule


def as_rule(owner: str, name: str, v: Any) -> Rule:
    """A rule-valued argument (``select=krum(p=3)``): a :class:`Rule`, or a spec built with
    :func:`build_rule`; a bad spec is reported as ``<owner>: bad <name> '<spec>': <why>``."""
    if isinstance(v, Rule):
        return v
    if isinstance(v, (Spec, str)):
        try:
            return build_rule(parse_spec(v))
        except SpecError as exc:
            raise SpecError(f"{owner}: bad {name} {str(v)!r}: {exc}") from None
    raise checks.fail(owner, name, "a rule spec such as krum or krum(p=3)", v)


# Preconditions shared by several rules.
def need_more_than_2f(n: int, f: int) -> str | None:
    return None if n > 2 * f else f"n > 2f = {2 * f}"


def need_2f_plus_3(n: int, f: int) -> str | None:
    return None if n >= 2 * f + 3 else f"n >= 2f+3 = {2 * f + 3}"


def need_4f_plus_3(n: int, f: int) -> str | None:
    return None if n >= 4 * f + 3 else f"n >= 4f+3 = {4 * f + 3}"
