"""Spec strings: one textual name for a rule, attack or pool, shared by YAML, CLI and Tune.

Grammar (whitespace is ignored)::

    spec   := NAME [ "(" [ arg ("," arg)* ] ")" ]
    arg    := KEY "=" value
    value  := number | "true" | "false" | "none" | spec | "[" [value ("," value)*] "]" | "'...'" | '"..."'

A bare name that is not a number or keyword is a nested spec, so ``agg=comed`` and
``select=krum(p=3)`` both parse to :class:`Spec` values. Canonical text (``str(spec)``)
sorts nothing and round-trips: ``parse_spec(str(s)) == s``.
"""
from __future__ import annotations

import functools
import inspect
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, TypeVar

from raymix.checks import ArgumentError

__all__ = ["Spec", "SpecError", "parse_spec", "init_args", "Registry", "Catalogue", "add_name_loader"]


# A spec string that does not parse, or names something unknown: the one error type of
# every bad argument (raymix.checks), so ``except SpecError`` also catches bad values.
SpecError = ArgumentError


@dataclass(frozen=True)
class Spec:
    name: str
    args: tuple[tuple[str, Any], ...] = ()

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.args)

    def __str__(self) -> str:
        if not self.args:
            return self.name
        return f"{self.name}(" + ", ".join(f"{k}={_fmt(v)}" for k, v in self.args) + ")"

    def __repr__(self) -> str:
        return f"Spec({str(self)!r})"


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, str):
        return repr(value)
    return str(value)


_TOKEN = re.compile(
    r"\s*(?:(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![A-Za-z_]))"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_.]*)"
    r"|(?P<str>'[^']*'|\"[^\"]*\")"
    r"|(?P<punct>[()\[\],=]))"
)


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    tokens, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise SpecError(f"cannot parse spec {text!r}: unexpected character at position {pos}: {text[pos:pos + 10]!r}")
        kind = m.lastgroup
        tokens.append((kind, m.group(kind), m.start(kind)))
        pos = m.end()
    return tokens


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0

    def error(self, msg: str) -> SpecError:
        where = self.tokens[self.i][2] if self.i < len(self.tokens) else len(self.text)
        return SpecError(f"cannot parse spec {self.text!r} at position {where}: {msg}")

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def expect(self, value: str) -> None:
        tok = self.peek()
        if tok is None or tok[1] != value:
            raise self.error(f"expected {value!r}")
        self.i += 1

    def spec(self) -> Spec:
        tok = self.peek()
        if tok is None or tok[0] != "name":
            raise self.error("expected a name")
        self.i += 1
        name, args = tok[1], []
        nxt = self.peek()
        if nxt is not None and nxt[1] == "(":
            self.i += 1
            seen = set()
            if self.peek() is not None and self.peek()[1] == ")":
                self.i += 1
                return Spec(name, ())
            while True:
                key = self.peek()
                if key is None or key[0] != "name":
                    raise self.error(f"expected an argument name in {name}(...)")
                self.i += 1
                if key[1] in seen:
                    raise self.error(f"argument {key[1]!r} given twice to {name}")
                seen.add(key[1])
                self.expect("=")
                args.append((key[1], self.value()))
                tok = self.peek()
                if tok is not None and tok[1] == ",":
                    self.i += 1
                    continue
                self.expect(")")
                break
        return Spec(name, tuple(args))

    def value(self) -> Any:
        tok = self.peek()
        if tok is None:
            raise self.error("expected a value")
        kind, text, _ = tok
        if kind == "num":
            self.i += 1
            return float(text) if any(c in text for c in ".eE") else int(text)
        if kind == "str":
            self.i += 1
            return text[1:-1]
        if text == "[":
            self.i += 1
            items = []
            if self.peek() is not None and self.peek()[1] == "]":
                self.i += 1
                return tuple(items)
            while True:
                items.append(self.value())
                tok = self.peek()
                if tok is not None and tok[1] == ",":
                    self.i += 1
                    continue
                self.expect("]")
                return tuple(items)
        if kind == "name":
            low = text.lower()
            if low in ("true", "false") and not self._followed_by_paren():
                self.i += 1
                return low == "true"
            if low in ("none", "null") and not self._followed_by_paren():
                self.i += 1
                return None
            if low in ("inf", "nan") and not self._followed_by_paren():
                self.i += 1
                return float(low)
            return self.spec()
        raise self.error(f"unexpected {text!r}")

    def _followed_by_paren(self) -> bool:
        nxt = self.tokens[self.i + 1] if self.i + 1 < len(self.tokens) else None
        return nxt is not None and nxt[1] == "("


def parse_spec(text: "str | Spec") -> Spec:
    """Parse ``text`` into a :class:`Spec`; a :class:`Spec` passes through unchanged."""
    if isinstance(text, Spec):
        return text
    if not isinstance(text, str) or not text.strip():
        raise SpecError(f"a spec must be a non-empty string, got {text!r}")
    parser = _Parser(text)
    spec = parser.spec()
    if parser.peek() is not None:
        raise parser.error("unexpected text after the spec")
    return spec


def init_args(obj: Any) -> dict[str, Any]:
    """The spec arguments that rebuild ``obj`` from its class's ``__init__``: each argument
    whose value (the attribute of the same name) differs from its default, in signature
    order. A nested object with ``canonical_spec()`` (a rule) is written as that spec, an
    integral float as an int (``p=3``, not ``p=3.0``), a list as a tuple."""
    out: dict[str, Any] = {}
    for p in _init_params(type(obj)):
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or not hasattr(obj, p.name):
            continue
        v = getattr(obj, p.name)
        if p.default is not p.empty and _is_default(v, p.default):
            continue
        out[p.name] = _spec_value(v)
    return out


@functools.lru_cache(maxsize=None)
def _init_params(cls: type) -> tuple:
    """``cls.__init__``'s parameters after ``self``. Cached per class: ``inspect.signature``
    costs ~0.3 ms (more for a builtin ``__init__``), and rules are compared and hashed by their
    specs in the pool-aware attack's inner loop (hundreds of times a step)."""
    return tuple(inspect.signature(cls.__init__).parameters.values())[1:]


@functools.lru_cache(maxsize=4096)
def _canonical_text(default: str) -> "str | None":
    """A default spec argument's canonical text (None if it does not parse); cached, as above."""
    try:
        return str(parse_spec(default))
    except SpecError:
        return None


def _is_default(v: Any, default: Any) -> bool:
    if hasattr(v, "canonical_spec"):
        if isinstance(default, (str, Spec)):
            text = _canonical_text(default) if isinstance(default, str) else str(default)
            return text is not None and v.canonical_spec() == text
        return hasattr(default, "canonical_spec") and v.canonical_spec() == default.canonical_spec()
    if isinstance(v, bool) or isinstance(default, bool):
        return v is default
    if isinstance(v, (int, float)) and isinstance(default, (int, float)):
        return float(v) == float(default)
    return type(v) is type(default) and v == default


def _spec_value(v: Any) -> Any:
    if hasattr(v, "canonical_spec"):
        return parse_spec(v.canonical_spec())
    if isinstance(v, float) and v == v and abs(v) < 1e15 and v.is_integer():
        return int(v)
    if isinstance(v, (list, tuple)):
        return tuple(_spec_value(x) for x in v)
    return v


# ---------------------------------------------------------------------------- name loaders
# Called, in order, when a registry is asked for a name it does not hold: raymix.plugins
# adds the loader of installed entry points here, so a registry never imports the plugin
# machinery (which imports the registries) and the dependency runs one way.
_name_loaders: list[Callable[[], None]] = []
_catalogue_lock = threading.RLock()
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def add_name_loader(loader: Callable[[], None]) -> None:
    """Call ``loader()`` whenever a :class:`Registry` or :class:`Catalogue` misses a name
    (it registers more names, or does nothing); added once per function."""
    if loader not in _name_loaders:
        _name_loaders.append(loader)


def _load_names() -> None:
    for loader in tuple(_name_loaders):
        loader()


T = TypeVar("T")


class Registry(Generic[T]):
    """Names to factories. ``build`` turns a spec into an object, with clear errors.

    A factory is a class (its ``__init__`` takes the spec's arguments) or a function; both
    take the spec's arguments as keyword arguments, and nested specs arrive as :class:`Spec`
    values that the factory decides what to build from. ``register`` is a decorator::

        @RULES.register("krum")
        class Krum(Rule): ...

    and a class that does not set its own ``name`` gets the registered one.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str, factory: Callable[..., T] | None = None):
        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            if isinstance(fn, type) and "name" not in vars(fn):
                fn.name = name
            self._factories[name] = fn
            return fn

        return deco(factory) if factory is not None else deco

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: str) -> bool:
        return name in self._factories

    def factory(self, name: str) -> Callable[..., T]:
        if name not in self._factories:  # maybe an installed plugin's: load them (once)
            _load_names()
        try:
            return self._factories[name]
        except KeyError:
            raise SpecError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}") from None

    def build(self, spec: "str | Spec", **extra: Any) -> T:
        spec = parse_spec(spec)
        factory = self.factory(spec.name)
        try:
            # The factory's signature is the spec's argument list; binding first keeps a
            # TypeError raised inside the factory from being blamed on the user's spec.
            inspect.signature(factory).bind(**spec.kwargs, **extra)
        except TypeError as exc:
            params = [p for p in inspect.signature(factory).parameters if p not in extra]
            raise SpecError(
                f"bad arguments for {self.kind} {str(spec)!r}: {exc}; it takes: {', '.join(params) or 'no arguments'}"
            ) from None
        return factory(**spec.kwargs, **extra)


class Catalogue:
    """Names to objects, for models and datasets: ``@MODELS.register("tiny_cnn")`` on a
    class or function. A lookup of a name not yet known loads the installed plugins first
    (entry points), so a pip-installed package's names work without being named anywhere.
    Iteration, ``names()`` and error messages list the names in registration order
    (built-ins first)."""

    def __init__(self, kind: str, plural: str, wrap: "Callable[..., Any] | None" = None):
        self.kind, self.plural = kind, plural
        self._wrap = wrap  # builds the stored entry from (name, obj, **info)
        self._items: dict[str, Any] = {}
        self._raw: dict[str, Any] = {}

    def register(self, name: str, obj: Any = None, **info: Any):
        """``register("name", obj)``, or as a decorator ``@register("name")``. Registering
        the same object again under its name is a no-op; another object is an error."""
        if not isinstance(name, str) or not _IDENTIFIER.match(name):
            raise ValueError(f"a {self.kind} name must be an identifier, got {name!r}")
        if info and self._wrap is None:
            raise TypeError(f"{self.kind} registration takes no options, got {', '.join(info)}")

        def deco(o: Any) -> Any:
            with _catalogue_lock:
                if name in self._items:
                    if self._raw[name] is o:
                        return o
                    raise ValueError(f"{self.kind} {name!r} is registered twice")
                self._items[name] = self._wrap(name, o, **info) if self._wrap is not None else o
                self._raw[name] = o
            return o

        return deco(obj) if obj is not None else deco

    def _store(self, name: str, entry: Any) -> None:
        """Store a ready entry (the built-ins of a catalogue with a ``wrap``)."""
        with _catalogue_lock:
            self._items[name] = self._raw[name] = entry

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests, notebooks that redefine a plugin)."""
        with _catalogue_lock:
            self._items.pop(name, None)
            self._raw.pop(name, None)

    def raw(self, name: str) -> Any:
        """The object registered under ``name`` as it was given (None when nothing)."""
        return self._raw.get(name)

    def get(self, name: str) -> Any:
        """The entry of ``name``; ``ValueError`` naming the known ones otherwise."""
        if name not in self._items:
            _load_names()
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise ValueError(f"unknown {self.kind} {name!r}; known {self.plural}: {', '.join(self.names())}") from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str) and name not in self._items:
            _load_names()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Catalogue({self.kind!r}: {', '.join(self._items)})"
