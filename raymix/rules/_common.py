"""Argument checking and small helpers shared by the rule modules."""
from __future__ import annotations

import math
from typing import Any

import torch

from raymix.rules.base import Rule, build_rule, precondition_error
from raymix.spec import Spec, SpecError, parse_spec

_NUMBER = (int, float)


def spec_text(name: str, given: dict[str, Any], defaults: dict[str, Any]) -> str:
    """Canonical text from the arguments that differ from their defaults (``build_rule``
    replaces it with the user's own parsed text)."""
    args = tuple((k, v) for k, v in given.items() if not (k in defaults and _same(v, defaults[k])))
    return str(Spec(name, args))


def _same(a, b) -> bool:
    if isinstance(a, Rule) or isinstance(b, Rule):
        return False
    return type(a) is type(b) and a == b


def p_arg(rule: str, p: Any) -> float:
    if isinstance(p, bool) or not isinstance(p, _NUMBER) or math.isnan(p):
        raise SpecError(f"rule {rule}: p must be a number >= 1 (or inf), got {p!r}")
    if p < 1:
        raise SpecError(f"rule {rule}: p must be >= 1, got {p!r}")
    return float(p)


def int_arg(rule: str, name: str, v: Any, lo: int, allow_none: bool = False) -> int | None:
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise SpecError(f"rule {rule}: {name} must be an integer >= {lo}, got {v!r}")
    if v < lo:
        raise SpecError(f"rule {rule}: {name} must be >= {lo}, got {v!r}")
    return v


def float_arg(rule: str, name: str, v: Any, lo: float, strict: bool) -> float:
    if isinstance(v, bool) or not isinstance(v, _NUMBER) or math.isnan(v) or math.isinf(v):
        raise SpecError(f"rule {rule}: {name} must be a finite number, got {v!r}")
    if (v <= lo) if strict else (v < lo):
        raise SpecError(f"rule {rule}: {name} must be {'>' if strict else '>='} {lo}, got {v!r}")
    return float(v)


def rule_arg(rule: str, name: str, v: Any) -> Rule:
    if isinstance(v, Rule):
        return v
    if isinstance(v, (Spec, str)):
        try:
            return build_rule(parse_spec(v))
        except SpecError as exc:
            raise SpecError(f"rule {rule}: bad {name}: {exc}") from None
    raise SpecError(f"rule {rule}: {name} must be a rule spec such as krum or krum(p=3), got {v!r}")


def check(rule: str, G: torch.Tensor, f: int, requirement) -> None:
    """The plain functions' precondition check (the same one ``Rule.__call__`` makes)."""
    if not isinstance(G, torch.Tensor) or G.dim() != 2:
        raise ValueError(f"rule {rule} takes an (n, d) tensor, got {getattr(G, 'shape', type(G))}")
    n = G.shape[0]
    if isinstance(f, bool) or not isinstance(f, int) or f < 0 or n < 1:
        raise precondition_error(rule, n, f, "n >= 1 and an integer f >= 0")
    needs = requirement(n, f)
    if needs is not None:
        raise precondition_error(rule, n, f, needs)


def need_more_than_2f(n: int, f: int) -> str | None:
    return None if n > 2 * f else f"n > 2f = {2 * f}"


def need_2f_plus_3(n: int, f: int) -> str | None:
    return None if n >= 2 * f + 3 else f"n >= 2f+3 = {2 * f + 3}"


def need_4f_plus_3(n: int, f: int) -> str | None:
    return None if n >= 4 * f + 3 else f"n >= 4f+3 = {4 * f + 3}"
