"""The MixTailor pool: a set of aggregation rules, one drawn at random per step.

The attacker may know the pool (``pool.public()``) but never the draw: ``draw`` takes the
aggregator's own generator as an argument and the pool stores none, so nothing an attack
receives can reach it.

Pool specs (the same text in YAML, on the command line and in Tune grids):

- ``mixtailor``: the paper's 64 rules, 16 per class (see :func:`paper_pool_specs`).
- ``mixtailor(exclude=[bulyan])``, ``mixtailor(include=[krum, comed])``: whole classes in or out.
- ``mixtailor(composition=no_bulyan)``: the leave-one-class-out pools by name
  (``full``, ``no_comed``, ``no_krum``, ``no_geomed``, ``no_bulyan``).
- ``mixtailor(random_p=true, p_seed=3)``: the paper's "p drawn at random from 1 to 16", seeded.
- ``mixtailor(add=[my_rule, krum(p=3)])``: the pool plus each listed rule (a plugin's too) as a
  class of its own, drawn as often as each of the pool's classes (16 entries each); with
  ``include``/``exclude``/``composition`` it joins whatever classes they leave.
- ``pool(members=[krum(p=1), comed], weights=[1, 3])``: any list of rules, optional weights.
- any single rule spec, e.g. ``krum``: a pool of one (a deterministic baseline).
"""
from __future__ import annotations

import inspect
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from raymix import checks
from raymix.rules.base import Rule, build_rule
from raymix.spec import Spec, SpecError, parse_spec

__all__ = [
    "PAPER_CLASSES",
    "COMPOSITIONS",
    "PoolDescription",
    "Draw",
    "MixTailorPool",
    "paper_pool_specs",
    "composition_classes",
]

PAPER_CLASSES = ("comed", "krum", "geomed", "bulyan")
COMPOSITIONS = ("full",) + tuple(f"no_{c}" for c in PAPER_CLASSES)
_BULYAN_PARTS = ("krum", "mean", "geomed", "comed")
_P_VALUES = range(1, 17)


def composition_classes(name: str) -> tuple[str, ...]:
    """The classes of a named composition: ``full`` or ``no_<class>`` (leave one class out)."""
    if name == "full":
        return PAPER_CLASSES
    if name.startswith("no_") and name[3:] in PAPER_CLASSES:
        return tuple(c for c in PAPER_CLASSES if c != name[3:])
    raise SpecError(f"unknown pool composition {name!r}; known: {', '.join(COMPOSITIONS)}")


def _part(part: str, p: "int | None", geomed_iters: "int | None") -> str:
    """A pool rule's spec: ``krum``/``geomed`` with their p (None: the default 2), and
    geomed's Weiszfeld iterations when they differ from its default."""
    args = [f"p={p}"] if p is not None and part in ("krum", "geomed") else []
    if part == "geomed" and geomed_iters is not None:
        args.append(f"iters={geomed_iters}")
    return f"{part}({', '.join(args)})" if args else part


def paper_pool_specs(classes: Sequence[str] = PAPER_CLASSES, random_p: bool = False, p_seed: int = 0,
                     geomed_iters: "int | None" = None) -> list[tuple[str, str]]:
    """(spec, class) for the paper's pool, restricted to ``classes``, 16 members per class.

    comed has no norm, so its 16 members are one rule sampled with weight 16/64 — that keeps
    each class at a quarter of the draws, as in the paper. Krum and geomed take p = 1..16
    (or, with ``random_p``, p drawn uniformly from 1..16 by a generator seeded with ``p_seed``;
    Bulyan's Krum/geomed parts then draw their p too). Bulyan takes the 16 (selection,
    aggregation) pairs over {krum, mean, geomed, comed}. ``geomed_iters`` sets the Weiszfeld
    iterations of every geometric median in the pool, the geomed members and Bulyan's geomed
    parts (default: geomed's own, 100; the original smoothed Weiszfeld ran a few).
    """
    unknown = [c for c in classes if c not in PAPER_CLASSES]
    if unknown:
        raise SpecError(f"unknown rule class(es) {unknown}; the paper pool's classes are {', '.join(PAPER_CLASSES)}")
    rng = np.random.default_rng(p_seed)

    def p_of(i: int) -> int:
        return int(rng.integers(1, 17)) if random_p else i

    # Draw every class's p values in a fixed order whatever the selection, so that
    # leaving a class out does not change the p of the members that remain.
    krum = [_part("krum", p_of(p), None) for p in _P_VALUES]
    geomed = [_part("geomed", p_of(p), geomed_iters) for p in _P_VALUES]
    bulyan = [
        f"bulyan(select={_part(s, p_of(2) if random_p else None, geomed_iters)}, "
        f"agg={_part(a, p_of(2) if random_p else None, geomed_iters)})"
        for s in _BULYAN_PARTS
        for a in _BULYAN_PARTS
    ]
    by_class = {"comed": ["comed"] * 16, "krum": krum, "geomed": geomed, "bulyan": bulyan}
    return [(spec, c) for c in PAPER_CLASSES if c in classes for spec in by_class[c]]


@dataclass(frozen=True)
class PoolDescription:
    """What the attacker may know of the pool: its members and weights. No generator."""

    members: tuple[str, ...]
    families: tuple[str, ...]
    weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.members) != len(self.families):
            raise ValueError("a pool description needs one family per member")
        if self.weights is not None and len(self.weights) != len(self.members):
            raise ValueError("a pool description needs one weight per member")


@dataclass(frozen=True)
class Draw:
    """One step's draw, for logging: which member, its spec and its class."""

    index: int
    spec: str
    family: str


class MixTailorPool:
    def __init__(
        self,
        rules: Sequence[Rule],
        families: Sequence[str] | None = None,
        weights: Sequence[float] | None = None,
        dropped: Sequence[str] = (),
        name: str = "pool",
    ):
        if not rules:
            raise ValueError(f"pool {name!r} has no members")
        self.rules = tuple(rules)
        self.families = tuple(families) if families is not None else tuple(r.family for r in self.rules)
        if len(self.families) != len(self.rules):
            raise ValueError("one family per pool member is needed")
        if weights is not None:
            w = [float(x) for x in weights]
            if len(w) != len(self.rules):
                raise ValueError(f"pool {name!r}: {len(w)} weights for {len(self.rules)} members")
            if any(not np.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
                raise ValueError(f"pool {name!r}: weights must be finite, non-negative and not all zero, got {w}")
            self.weights: tuple[float, ...] | None = tuple(w)
        else:
            self.weights = None
        self.dropped = tuple(dropped)
        self.name = name
        # Built once so a draw costs an index lookup, not a parse.
        self._probs = None if self.weights is None else torch.tensor(self.weights, dtype=torch.float64)

    # -- construction ------------------------------------------------------------------
    @classmethod
    def from_spec(cls, spec: "str | Spec", n: int | None = None, f: int | None = None, drop_invalid: bool = False) -> "MixTailorPool":
        parsed = parse_spec(spec)
        kw = parsed.kwargs
        if parsed.name == "mixtailor":
            _bind(_mixtailor_members, parsed, kw)
            members = _mixtailor_members(str(parsed), **kw)
            rules = [build_rule(s) for s, _ in members]
            families = [c if c is not None else r.family for (_, c), r in zip(members, rules)]
            pool = cls(rules, families, kw.get("weights"), name=str(parsed))
        elif parsed.name == "pool":
            _bind(_explicit_pool, parsed, kw, skip=2)
            pool = _explicit_pool(cls, str(parsed), **kw)
        else:
            pool = cls([build_rule(parsed)], name=str(parsed))
        if n is not None and f is not None:
            pool = pool.restricted(n, f, drop_invalid)
        return pool

    def restricted(self, n: int, f: int, drop_invalid: bool = False) -> "MixTailorPool":
        """This pool for n workers of which f Byzantine: an error naming every member that
        cannot run there, or, with ``drop_invalid``, the pool without them (``.dropped``)."""
        failing: dict[int, str] = {}
        for i, rule in enumerate(self.rules):
            try:
                rule.check(n, f)
            except ValueError as exc:
                failing[i] = str(exc)
        if not failing:
            return self
        distinct = list(dict.fromkeys(failing.values()))
        if not drop_invalid or len(failing) == len(self.rules):
            what = "every member" if len(failing) == len(self.rules) else f"{len(failing)} of {len(self.rules)} members"
            hint = "" if len(failing) == len(self.rules) else " (set drop_invalid to run without them)"
            raise ValueError(f"pool {self.name!r} cannot run with n={n}, f={f}: {what} fail{hint}: " + "; ".join(distinct))
        keep = [i for i in range(len(self.rules)) if i not in failing]
        return MixTailorPool(
            [self.rules[i] for i in keep],
            [self.families[i] for i in keep],
            None if self.weights is None else [self.weights[i] for i in keep],
            dropped=self.dropped + tuple(self.rules[i].spec for i in failing),
            name=self.name,
        )

    def check(self, n: int, f: int) -> None:
        self.restricted(n, f, drop_invalid=False)

    # -- use -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rules)

    def public(self) -> PoolDescription:
        return PoolDescription(tuple(r.spec for r in self.rules), self.families, self.weights)

    def draw(self, generator: torch.Generator) -> Draw:
        """Draw one member with ``generator`` (the aggregator's own stream, never the attacker's)."""
        if self._probs is None:
            i = int(torch.randint(len(self.rules), (1,), generator=generator).item())
        else:
            i = int(torch.multinomial(self._probs, 1, generator=generator).item())
        return Draw(i, self.rules[i].spec, self.families[i])

    def aggregate(self, draw: Draw, G: torch.Tensor, f: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Apply the drawn member; ``generator`` (the aggregator's, for this step) feeds
        randomized members such as resampling and bucketing."""
        return self.rules[draw.index](G, f, generator=generator)

    def probabilities(self) -> np.ndarray:
        if self.weights is None:
            return np.full(len(self.rules), 1.0 / len(self.rules))
        w = np.asarray(self.weights, dtype=float)
        return w / w.sum()

    def distinct_members(self) -> list[tuple[str, str, Rule, float]]:
        """(spec, family, rule, probability) once per distinct spec: the paper pool's 16
        comed entries are one rule evaluated once, weighted by 16/64."""
        probs = self.probabilities()
        out: dict[str, list] = {}
        for rule, fam, p in zip(self.rules, self.families, probs):
            if rule.spec in out:
                out[rule.spec][3] += float(p)
            else:
                out[rule.spec] = [rule.spec, fam, rule, float(p)]
        return [tuple(v) for v in out.values()]

    def class_counts(self) -> dict[str, int]:
        return dict(Counter(self.families))

    def __repr__(self) -> str:
        return f"MixTailorPool({self.name!r}, {len(self)} members: {self.class_counts()})"


def _bind(fn, parsed: Spec, kw: dict, skip: int = 1) -> None:
    """Refuse unknown pool arguments by name, as the rule and attack registries do."""
    params = list(inspect.signature(fn).parameters)[skip:]
    unknown = sorted(set(kw) - set(params))
    if unknown:
        raise SpecError(f"bad arguments for pool {str(parsed)!r}: unknown {', '.join(unknown)}; it takes: {', '.join(params)}")


def _mixtailor_members(
    name: str,
    composition: "str | Spec | None" = None,
    include: "Sequence | None" = None,
    exclude: "Sequence | None" = None,
    random_p: bool = False,
    p_seed: int = 0,
    weights: "Sequence[float] | None" = None,
    add: "Sequence | None" = None,
    geomed_iters: "int | None" = None,
) -> list[tuple["str | Spec", "str | None"]]:
    def names(xs, what) -> list[str]:
        if not isinstance(xs, (list, tuple)):
            xs = [xs]
        out = [str(x) for x in xs]
        bad = [x for x in out if x not in PAPER_CLASSES]
        if bad:
            raise SpecError(f"{name}: unknown rule class(es) {bad} in {what}; classes: {', '.join(PAPER_CLASSES)}")
        return out

    if not isinstance(random_p, bool):
        raise SpecError(f"{name}: random_p must be true or false, got {random_p!r}")
    if not isinstance(p_seed, int) or isinstance(p_seed, bool):
        raise SpecError(f"{name}: p_seed must be an integer, got {p_seed!r}")
    classes = list(PAPER_CLASSES)
    if composition is not None:
        classes = list(composition_classes(str(composition)))
    if include is not None:
        keep = names(include, "include")
        classes = [c for c in classes if c in keep]
    if exclude is not None:
        drop = names(exclude, "exclude")
        classes = [c for c in classes if c not in drop]
    extra = [] if add is None else list(add) if isinstance(add, (list, tuple)) else [add]
    for x in extra:
        if not isinstance(x, (Spec, str)):
            raise SpecError(f"{name}: add takes rule specs, e.g. add=[my_rule, krum(p=3)], got {x!r}")
    if not classes and not extra:
        raise SpecError(f"{name}: no rule class left in the pool")
    if geomed_iters is not None:
        geomed_iters = checks.integer(name, "geomed_iters", geomed_iters, 1)
    members: list = paper_pool_specs(classes, random_p=random_p, p_seed=p_seed, geomed_iters=geomed_iters) if classes else []
    # each added rule is a class of its own, as often drawn as each of the paper's (16 entries);
    # its family (None here) is the rule's own, read once it is built
    return members + [(x, None) for x in extra for _ in _P_VALUES]


def _explicit_pool(cls, name: str, members: "Sequence | None" = None, weights: "Sequence[float] | None" = None) -> MixTailorPool:
    if not members:
        raise SpecError(f"{name}: pool(members=[...]) needs at least one rule")
    if not isinstance(members, (list, tuple)):
        members = [members]
    rules = [build_rule(m) for m in members]
    return cls(rules, None, weights, name=name)
