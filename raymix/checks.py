"""Argument checks shared by the rules, the attacks and the experiment config.

One error type and one message style for every bad argument value::

    <owner>: <name> must be <expectation>, got <repr>

``owner`` says who takes the argument (``"rule krum"``, ``"attack ipm"``, ``"config"``),
``name`` which argument, ``<repr>`` the value given. For example::

    rule krum: p must be a number >= 1 (or inf), got 0.5
    attack ipm: epsilon must be a finite number >= 0, got -1
    config: lr must be a finite number > 0, got 0
    attack ipm: scale must be one of mean, sum_over_f, got 'median'

The error is :class:`ArgumentError`, a ``ValueError``; :class:`raymix.spec.SpecError` (an
unknown name, a spec that does not parse) is the same class, so ``except SpecError`` and
``except ValueError`` both catch every bad argument. Each check returns the value in its
plain Python type (``int``, ``float``, ``str``, ``bool``, a tuple of floats), so a caller
stores what the check returns::

    from raymix import checks

    self.p = checks.number("rule krum", "p", p, lo=1, allow_inf=True)
    self.iters = checks.integer("rule geomed", "iters", iters, lo=1)
    self.scale = checks.choice("attack ipm", "scale", scale, ("mean", "sum_over_f"))

The functions:

* ``integer(owner, name, v, lo=0, optional=False)``: an int >= lo (``None`` too if optional).
* ``number(owner, name, v, lo=None, strict=False, allow_inf=False)``: a finite real, > lo
  (``strict``) or >= lo; ``allow_inf`` also accepts +inf (never NaN).
* ``choice(owner, name, v, options)``: one of the option strings (a bare name in a spec,
  ``scale=mean``, parses to a Spec and is accepted as its name).
* ``boolean(owner, name, v)``: True or False (not 0/1).
* ``numbers(owner, name, v, lo=None, strict=False)``: a non-empty list of finite numbers,
  as a tuple in the given order.
* ``grid(owner, name, v, lo=0.0, optional=True)``: like ``numbers`` but sorted and without
  duplicates (``None`` passes through when optional).
* ``fail(owner, name, expectation, v)``: the error itself, for any other expectation.

Ray-free and torch-free: the config imports it before anything heavy.
"""
from __future__ import annotations

import math
import numbers as _numbers
from typing import Any, Iterable

__all__ = ["ArgumentError", "fail", "integer", "number", "choice", "boolean", "numbers", "grid", "is_int", "is_real"]


class ArgumentError(ValueError):
    """A bad argument: an unknown name, a spec that does not parse, or a value out of range.
    ``raymix.spec.SpecError`` is this class."""


def fail(owner: str, name: str, expectation: str, v: Any) -> ArgumentError:
    """The error for argument ``name`` of ``owner``: ``<owner>: <name> must be <expectation>, got <repr>``."""
    return ArgumentError(f"{owner}: {name} must be {expectation}, got {_show(v)}")


def _show(v: Any) -> str:
    spec = _spec_name(v)
    if spec is not None:
        return repr(spec)
    if hasattr(v, "shape") and hasattr(v, "dtype"):  # an array: its kind and shape, not its values
        return f"a {type(v).__name__} of shape {tuple(v.shape)}"
    if isinstance(v, list):
        v = tuple(v)
    return repr(v)


def _spec_name(v: Any) -> str | None:
    """A parsed spec value (``raymix.spec.Spec``) as its text; None for anything else."""
    if type(v).__name__ == "Spec" and type(v).__module__ == "raymix.spec":
        return str(v)
    return None


def is_int(v: Any) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(v, _numbers.Integral) and not isinstance(v, bool)


def is_real(v: Any) -> bool:
    """A real number (Python or numpy), not a bool."""
    return isinstance(v, _numbers.Real) and not isinstance(v, bool)


def _bound(lo: float | None, strict: bool) -> str:
    if lo is None:
        return ""
    return f" {'>' if strict else '>='} {lo:g}"


def integer(owner: str, name: str, v: Any, lo: int = 0, optional: bool = False) -> int | None:
    """``v`` as an int >= ``lo`` (``None`` passes when ``optional``). Booleans and floats are refused."""
    if v is None and optional:
        return None
    if not is_int(v) or v < lo:
        raise fail(owner, name, f"an integer >= {lo}{' or none' if optional else ''}", v)
    return int(v)


def number(owner: str, name: str, v: Any, lo: float | None = None, strict: bool = False, allow_inf: bool = False) -> float:
    """``v`` as a float: finite (or +inf with ``allow_inf``; never NaN), and > ``lo``
    (``strict``) or >= ``lo`` when ``lo`` is given."""
    ok = is_real(v)
    if ok:
        x = float(v)
        ok = not math.isnan(x) and (math.isfinite(x) or (allow_inf and x > 0))
        if ok and lo is not None:
            ok = x > lo if strict else x >= lo
    if not ok:
        what = "a number" if allow_inf else "a finite number"
        raise fail(owner, name, f"{what}{_bound(lo, strict)}{' (or inf)' if allow_inf else ''}", v)
    return x


def choice(owner: str, name: str, v: Any, options: Iterable[str]) -> str:
    """``v`` if it is one of ``options``; a bare name parsed from a spec counts as its text."""
    options = tuple(options)
    text = _spec_name(v)
    if text is not None:
        v = text
    if not isinstance(v, str) or v not in options:
        raise fail(owner, name, f"one of {', '.join(options)}", v)
    return v


def boolean(owner: str, name: str, v: Any) -> bool:
    """``v`` if it is True or False (1, 0 and strings are refused)."""
    if not isinstance(v, bool):
        raise fail(owner, name, "true or false", v)
    return v


def numbers(owner: str, name: str, v: Any, lo: float | None = None, strict: bool = False) -> tuple[float, ...]:
    """A non-empty list (or tuple) of finite numbers (each > or >= ``lo``), as a tuple of
    floats in the given order."""
    what = f"a non-empty list of finite numbers{_bound(lo, strict)}"
    if not isinstance(v, (list, tuple)) or not v:
        raise fail(owner, name, what, v)
    try:
        return tuple(number(owner, name, x, lo, strict) for x in v)
    except ArgumentError:
        raise fail(owner, name, what, v) from None


def grid(owner: str, name: str, v: Any, lo: float | None = 0.0, optional: bool = True) -> tuple[float, ...] | None:
    """A grid of points: a non-empty list of finite numbers >= ``lo``, returned sorted and
    without duplicates; ``None`` (the caller's default grid) passes when ``optional``."""
    if v is None and optional:
        return None
    return tuple(sorted(set(numbers(owner, name, v, lo))))
