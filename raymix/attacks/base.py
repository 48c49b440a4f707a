"""The attack contract: what an adversary may see (:class:`AdversaryView`) and what it returns.

Threat model (see docs/attacks.md): the adversary sees the honest gradients it is allowed to
see, n, f, the step, the PUBLIC description of the aggregator's pool (member specs and
weights) and its OWN random generator. It never sees the aggregator's generator nor the rule
drawn this step. That separation is structural: :class:`AdversaryView` has no field that could
carry either, and ``__post_init__`` refuses a ``pool`` that is anything but plain data (a
:class:`~raymix.pool.MixTailorPool`, or any object holding a generator or a ``draw`` method,
is rejected).
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import random
from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from raymix import checks
from raymix.spec import Registry, Spec, init_args, parse_spec

__all__ = [
    "AdversaryView",
    "PoolLike",
    "Attack",
    "ATTACKS",
    "build_attack",
    "register_alias",
]


@runtime_checkable
class PoolLike(Protocol):
    """What an attack may read of the pool: member spec strings and their weights
    (``None`` = uniform over ``members``, duplicates counted). :class:`raymix.pool.PoolDescription`
    meets it; so does any frozen record holding only these plain values."""

    members: Sequence[str]
    weights: Sequence[float] | None


# Attribute names that would let an attack reach the aggregator's randomness or its draw.
_FORBIDDEN_POOL_ATTRS = ("draw", "aggregate", "rules", "generator", "_probs", "sample")
_PLAIN_SCALARS = (str, int, float, bool, type(None))


def _is_plain(value: Any, depth: int = 0) -> bool:
    if isinstance(value, _PLAIN_SCALARS):
        return True
    if isinstance(value, (tuple, list, frozenset)) and depth < 4:
        return all(_is_plain(v, depth + 1) for v in value)
    return False


def _pool_attributes(pool: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(pool) and not isinstance(pool, type):
        return {f.name: getattr(pool, f.name) for f in dataclasses.fields(pool)}
    out: dict[str, Any] = {}
    if hasattr(pool, "__dict__"):
        out.update(vars(pool))
    for cls in type(pool).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if hasattr(pool, name):
                out[name] = getattr(pool, name)
    return out


def _validate_pool(pool: Any) -> None:
    if pool is None:
        return
    if isinstance(pool, (torch.Generator, np.random.Generator, np.random.RandomState, random.Random)):
        raise TypeError("AdversaryView.pool must be the pool's public description, got a random generator")
    for name in _FORBIDDEN_POOL_ATTRS:
        if hasattr(pool, name):
            raise TypeError(
                f"AdversaryView.pool must be the pool's PUBLIC description (e.g. MixTailorPool.public()), "
                f"not an object with {name!r} ({type(pool).__name__}): the attacker may know the pool, never the draw"
            )
    members = getattr(pool, "members", None)
    if not isinstance(members, (tuple, list)) or not members or not all(isinstance(m, str) for m in members):
        raise TypeError(f"AdversaryView.pool.members must be a non-empty tuple of rule spec strings, got {members!r}")
    if not hasattr(pool, "weights"):
        raise TypeError("AdversaryView.pool must have a 'weights' attribute (None for uniform)")
    weights = pool.weights
    if weights is not None:
        if not isinstance(weights, (tuple, list)) or len(weights) != len(members):
            raise TypeError(f"AdversaryView.pool.weights must be None or one number per member, got {weights!r}")
        w = []
        for x in weights:
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
                raise ValueError(f"AdversaryView.pool.weights must be finite and non-negative, got {weights!r}")
            w.append(float(x))
        if sum(w) <= 0:
            raise ValueError("AdversaryView.pool.weights must not all be zero")
    for name, value in _pool_attributes(pool).items():
        if not _is_plain(value):
            raise TypeError(
                f"AdversaryView.pool.{name} is {type(value).__name__}: the pool description an attack "
                f"receives may hold only plain data (strings, numbers, tuples), never a generator or rule objects"
            )


@dataclass(frozen=True)
class AdversaryView:
    """Everything an attack may use at one step. Exactly these six fields, nothing else.

    ``honest``: (k, d) honest gradients the adversary may see (k <= n - f; all of them for an
    omniscient adversary). ``pool``: the aggregator's public pool description, or None.
    ``generator``: the adversary's OWN stream (never the aggregator's).
    """

    honest: torch.Tensor
    n: int
    f: int
    step: int
    pool: "PoolLike | None"
    generator: torch.Generator

    def __post_init__(self) -> None:
        if not isinstance(self.honest, torch.Tensor):
            raise TypeError(f"AdversaryView.honest must be a torch.Tensor, got {type(self.honest).__name__}")
        if self.honest.dim() != 2:
            raise ValueError(f"AdversaryView.honest must be (k, d), got shape {tuple(self.honest.shape)}")
        if not self.honest.is_floating_point():
            raise TypeError(f"AdversaryView.honest must be floating point, got {self.honest.dtype}")
        for name in ("n", "f", "step"):
            if not checks.is_int(getattr(self, name)):
                raise TypeError(f"AdversaryView.{name} must be an int, got {getattr(self, name)!r}")
        if self.n < 1 or self.f < 0 or self.f > self.n:
            raise ValueError(f"AdversaryView needs n >= 1 and 0 <= f <= n, got n={self.n}, f={self.f}")
        if self.step < 0:
            raise ValueError(f"AdversaryView.step must be >= 0, got {self.step}")
        k = self.honest.shape[0]
        if k > self.n - self.f:
            raise ValueError(f"AdversaryView.honest has {k} rows but there are only n-f = {self.n - self.f} honest workers")
        if not isinstance(self.generator, torch.Generator):
            raise TypeError(f"AdversaryView.generator must be the adversary's torch.Generator, got {type(self.generator).__name__}")
        _validate_pool(self.pool)

    @property
    def k(self) -> int:
        return int(self.honest.shape[0])

    @property
    def d(self) -> int:
        return int(self.honest.shape[1])


# ----------------------------------------------------------------------------------------
# Canonical spec text (arguments are checked with raymix.checks, owner "attack <name>")
# ----------------------------------------------------------------------------------------
def spec_text(name: str, args: dict[str, Any]) -> str:
    def norm(x):
        return tuple(norm(y) for y in x) if isinstance(x, (list, tuple)) else x

    return str(Spec(name, tuple((k, norm(v)) for k, v in args.items())))


# ----------------------------------------------------------------------------------------
# The attack base class and registry
# ----------------------------------------------------------------------------------------
class Attack:
    """A Byzantine attack: ``attack(view) -> (f, d)`` rows, same dtype and device as ``view.honest``.

    A subclass checks and stores its arguments once in ``__init__`` (with
    :mod:`raymix.checks`, owner ``"attack <name>"``), sets ``spec``, implements
    ``craft(view)``, and states in its docstring a one-line summary (first line), the formula
    and the preconditions; ``needs`` says the precondition in words (for listings) and
    ``check(n, f)`` enforces it. Attacks are plain data and pickle with :mod:`pickle`.

    Flags the runtime reads:

    - ``data_attack``: the attack poisons the Byzantine workers' DATA (label flipping); the
      runtime trains them on ``attack.poison_batch(x, y)`` and sends those gradients;
      ``__call__`` raises.
    - ``honest_behaviour``: the ``none`` attack; Byzantine workers compute honest gradients;
      ``__call__`` raises.
    - ``crafts_gradients``: neither of the above; the runtime calls ``attack(view)``.
    - ``uses_pool``: the attack needs ``view.pool`` (pool-aware).
    - ``reports_choice``: after each call, ``last_choice`` holds what the attack chose (the
      searching attacks: lambda, the expected and worst member inner products relative to
      ||mu||^2, the probability of the members fooled); the runtime records it.
    """

    name: str = "attack"
    needs: str = "nothing"
    data_attack: bool = False
    honest_behaviour: bool = False
    uses_pool: bool = False
    reports_choice: bool = False
    min_visible: int = 1  # visible honest rows the attack needs (0: none, e.g. gaussian)

    @property
    def crafts_gradients(self) -> bool:
        return not (self.data_attack or self.honest_behaviour)

    @property
    def spec(self) -> str:
        """The spec text: as written when built by :func:`build_attack` (or as the attack set
        it), else rebuilt from the ``__init__`` arguments (:func:`raymix.spec.init_args`)."""
        return self.__dict__.get("_spec") or str(Spec(self.name, tuple(init_args(self).items())))

    @spec.setter
    def spec(self, text: str) -> None:
        self._spec = text

    @classmethod
    def summary(cls) -> str:
        """The first line of the class docstring."""
        doc = inspect.getdoc(cls) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    def check(self, n: int, f: int) -> None:
        """Raise ``ValueError`` if the attack cannot run with n workers of which f Byzantine."""
        if not checks.is_int(n) or not checks.is_int(f) or n < 1 or f < 0 or f > n:
            raise ValueError(f"attack {self.spec} cannot run with n={n}, f={f}: it needs n >= 1 and 0 <= f <= n")

    def craft(self, view: AdversaryView) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, view: AdversaryView) -> torch.Tensor:
        if not isinstance(view, AdversaryView):
            raise TypeError(f"attack {self.spec} takes an AdversaryView, got {type(view).__name__}")
        if self.data_attack:
            raise RuntimeError(
                f"attack {self.spec} is a data attack: the runtime trains the Byzantine workers on "
                f"attack.poison_batch(x, y) and sends those gradients; it does not call attack(view)"
            )
        if self.honest_behaviour:
            raise RuntimeError(
                f"attack {self.spec} means no attack: the runtime lets the Byzantine workers compute "
                f"honest gradients; it does not call attack(view)"
            )
        self.check(view.n, view.f)
        if view.f == 0:
            return view.honest.new_zeros((0, view.d))
        if view.k < self.min_visible:
            raise ValueError(f"attack {self.spec} needs at least {self.min_visible} visible honest gradient(s), got {view.k}")
        if self.uses_pool and view.pool is None:
            raise ValueError(f"attack {self.spec} is pool-aware: it needs view.pool (the public pool description), got None")
        out = self.craft(view)
        if out.shape != (view.f, view.d):
            raise AssertionError(f"attack {self.spec} returned shape {tuple(out.shape)}, expected {(view.f, view.d)}")
        return out.to(dtype=view.honest.dtype, device=view.honest.device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"


ATTACKS: Registry[Attack] = Registry("attack")


def register_alias(alias: str, cls: type) -> None:
    """Register ``alias`` as another name for ``cls`` (same arguments, ``attack.name == alias``)."""

    def factory(*args, **kwargs):
        obj = cls(*args, **kwargs)
        obj.name = alias
        obj.spec = spec_text(alias, obj._args) if hasattr(obj, "_args") else alias
        return obj

    factory.__signature__ = inspect.signature(cls)  # Registry.build binds against it
    factory.__name__ = f"{alias}_factory"
    factory.__doc__ = f"Alias of {cls.name}: {inspect.getdoc(cls) or ''}"
    factory.needs = cls.needs
    ATTACKS.register(alias, factory)


def build_attack(spec: "str | Spec | Attack") -> Attack:
    """Build an attack from its spec, e.g. ``build_attack("ipm(epsilon=0.1)")``.

    Unknown names, bad arguments and bad values raise :class:`~raymix.spec.SpecError`
    (:class:`raymix.checks.ArgumentError`, a ``ValueError``) naming the attack and the argument.
    ``attack.spec`` is the canonical text of the spec as written.
    """
    if isinstance(spec, Attack):
        return spec
    import raymix.attacks  # noqa: F401  (registers every attack on first use)

    parsed = parse_spec(spec)
    attack = ATTACKS.build(parsed)
    attack.spec = str(parsed)
    return attack


# ----------------------------------------------------------------------------------------
# Small shared helpers
# ----------------------------------------------------------------------------------------
def honest_mean(view: AdversaryView) -> torch.Tensor:
    return view.honest.mean(dim=0)


def check_simulation(attack: str, rule, view: AdversaryView) -> None:
    """The attack runs ``rule`` on [visible honest; f crafted] = k + f rows: say so if it cannot."""
    try:
        rule.check(view.k + view.f, view.f)
    except ValueError as exc:
        raise ValueError(
            f"attack {attack} simulates {rule.spec} on the {view.k} visible honest + {view.f} crafted rows "
            f"and cannot: {exc} (give the adversary more honest rows)"
        ) from None


def rand_uniform(view: AdversaryView, shape: tuple[int, ...]) -> torch.Tensor:
    """U[0, 1) samples from the adversary's generator (on its device), moved to honest's device."""
    g = view.generator
    dtype = view.honest.dtype if view.honest.dtype in (torch.float32, torch.float64) else torch.float32
    return torch.rand(shape, generator=g, device=g.device, dtype=dtype).to(view.honest.device, view.honest.dtype)


def rand_normal(view: AdversaryView, shape: tuple[int, ...]) -> torch.Tensor:
    g = view.generator
    dtype = view.honest.dtype if view.honest.dtype in (torch.float32, torch.float64) else torch.float32
    return torch.randn(shape, generator=g, device=g.device, dtype=dtype).to(view.honest.device, view.honest.dtype)


def rand_index(view: AdversaryView, high: int) -> int:
    g = view.generator
    return int(torch.randint(high, (1,), generator=g, device=g.device).item())
