"""Plugins: rules, attacks, models and datasets defined outside raymix, usable wherever a
built-in one is (spec strings, pools, YAML, CLI flags, Tune sweeps, actors on a cluster).

Two ways to name them (docs/extending.md):

* **entry points** of an installed package, in the groups ``raymix.rules``,
  ``raymix.attacks``, ``raymix.models`` and ``raymix.datasets``. The value is a module
  (importing it registers what it defines) or an object (``pkg.mod:MyRule``), registered
  under the entry point's name unless importing its module registered it already. They are
  loaded once per process, lazily, on the first lookup of a name (:func:`load_entry_points`);
  importing raymix itself stays cheap.
* **modules named in the config**: ``plugins: [my_rules]`` in YAML, ``--plugin my_rules`` on
  the command line. :func:`load_plugins` imports each once; ``ExperimentConfig`` does so
  before it validates anything else, and every actor and Tune trial does so before it
  builds anything (they run in fresh processes).

This module imports neither Ray nor torch.
"""
from __future__ import annotations

import importlib
import os
import re
import sys
import threading
import types
from typing import Any, Iterable

from raymix.spec import Catalogue, add_name_loader

__all__ = [
    "GROUPS",
    "PluginError",
    "normalise_plugins",
    "load_plugins",
    "load_entry_points",
    "loaded_plugins",
    "registry",
    "known",
]

# entry-point group -> the registry its objects go to
GROUPS = ("raymix.rules", "raymix.attacks", "raymix.models", "raymix.datasets")

_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_lock = threading.RLock()
_imported: dict[str, Any] = {}  # plugin module name -> module, for this process
_entry_points_done: set[tuple[str, str, str]] = set()  # (group, name, value) loaded
_entry_points_loading = False
_entry_points_scanned = False


class PluginError(ValueError):
    """A plugin that cannot be found or fails while it loads; the message is one line that
    names the plugin (``plugin 'foo': no module named 'foo'``)."""


# ---------------------------------------------------------------------------- names
def normalise_plugins(value: Any) -> tuple[str, ...]:
    """The ``plugins`` setting as a tuple of module names: a list (YAML), a comma-separated
    string (``"a, b"``), ``None`` or ``()``. Order is kept, duplicates dropped."""
    if value is None:
        return ()
    items: Iterable[Any]
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, (list, tuple)):
        items = [p for v in value for p in (v.split(",") if isinstance(v, str) else [v])]
    else:
        raise PluginError(f"plugins must be a list of module names, got {value!r}")
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise PluginError(f"plugins must be module names, got {item!r}")
        name = item.strip()
        if not name:
            continue
        if not _MODULE_NAME.match(name):
            raise PluginError(f"plugin {name!r}: not a module name (expected e.g. my_rules or my_package.rules)")
        if name not in out:
            out.append(name)
    return tuple(out)


# ---------------------------------------------------------------------------- modules
def _cwd_importable() -> None:
    """Modules in the working directory are importable, as they are for ``python -m`` (and
    as Ray makes them for its workers, which get the driver's working directory on their
    path): ``raymix run --plugin my_rules`` finds ./my_rules.py. Appended, so it never
    shadows an installed package."""
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.append(cwd)


def _import(name: str) -> Any:
    if name in _imported:
        return _imported[name]
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (name == missing or name.startswith(missing + ".")):
            raise PluginError(f"plugin {name!r}: no module named {missing!r}") from None
        raise PluginError(f"plugin {name!r} failed to import: {_one_line(exc)}") from exc
    except Exception as exc:  # an error inside the plugin: say whose
        raise PluginError(f"plugin {name!r} failed to import: {_one_line(exc)}") from exc
    _imported[name] = module
    return module


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_plugins(names: Any = ()) -> tuple[str, ...]:
    """Import the installed plugins' entry points (once per process) and each module of
    ``names`` (once); returns the normalised names. Raises :class:`PluginError` naming the
    plugin that cannot be found or fails while it imports."""
    plugins = normalise_plugins(names)
    with _lock:
        load_entry_points()
        if plugins:
            _cwd_importable()
        for name in plugins:
            _import(name)
    return plugins


def loaded_plugins() -> tuple[str, ...]:
    """The plugin modules imported in this process, in order."""
    return tuple(_imported)


# ---------------------------------------------------------------------------- entry points
def _registry(group: str):
    if group == "raymix.rules":
        import raymix.rules
        from raymix.rules import RULES

        return RULES
    if group == "raymix.attacks":
        import raymix.attacks
        from raymix.attacks import ATTACKS

        return ATTACKS
    if group == "raymix.models":
        from raymix.models import MODELS

        return MODELS
    from raymix.data import DATASETS

    return DATASETS


def _registered(registry, name: str):
    """What ``registry`` holds under ``name`` (None when nothing)."""
    if isinstance(registry, Catalogue):
        return registry.raw(name)
    if name not in registry:
        return None
    return registry.factory(name)


def _entry_points(group: str) -> list:
    from importlib.metadata import entry_points

    seen, out = set(), []
    for ep in entry_points(group=group):
        key = (ep.name, ep.value)
        if key not in seen:  # a distribution on sys.path twice lists its entry points twice
            seen.add(key)
            out.append(ep)
    return out


def load_entry_points(refresh: bool = False) -> None:
    """Load every entry point of :data:`GROUPS`, once per process (``refresh``: look again,
    for packages installed or put on ``sys.path`` since). An entry point whose value is a
    module is imported (it registers what it defines); one whose value is an object is
    registered under the entry point's name. A failure raises :class:`PluginError` naming
    the entry point and its distribution, and is raised again at the next lookup."""
    global _entry_points_loading, _entry_points_scanned
    with _lock:
        if _entry_points_loading or (_entry_points_scanned and not refresh):
            return  # (loading: a plugin that looks names up while it loads)
        _entry_points_loading = True
        try:
            for group in GROUPS:
                for ep in _entry_points(group):
                    key = (group, ep.name, ep.value)
                    if key in _entry_points_done:
                        continue
                    _load_entry_point(group, ep)
                    _entry_points_done.add(key)
            _entry_points_scanned = True
        finally:
            _entry_points_loading = False


def _load_entry_point(group: str, ep) -> None:
    dist = getattr(getattr(ep, "dist", None), "name", None)
    who = f"plugin entry point {ep.name!r} ({group}: {ep.value}{', from ' + dist if dist else ''})"
    try:
        obj = ep.load()
    except Exception as exc:
        raise PluginError(f"{who} failed to load: {_one_line(exc)}") from exc
    if isinstance(obj, types.ModuleType):  # a module: importing it registered its names
        return
    registry = _registry(group)
    held = _registered(registry, ep.name)
    if held is obj:
        return
    if held is not None:
        raise PluginError(f"{who}: {group[7:-1]} {ep.name!r} is already registered by another object ({held!r})")
    try:
        registry.register(ep.name, obj)
    except Exception as exc:
        raise PluginError(f"{who} cannot be registered: {_one_line(exc)}") from exc


def registry(kind: str):
    """The registry of ``kind`` (``rules``, ``attacks``, ``models`` or ``datasets``: the
    ``choices`` of the config's fields), with the installed plugins' names loaded."""
    groups = {"rules": "raymix.rules", "attacks": "raymix.attacks", "models": "raymix.models", "datasets": "raymix.datasets"}
    if kind not in groups:
        raise ValueError(f"unknown kind {kind!r}; known: {', '.join(groups)}")
    reg = _registry(groups[kind])
    load_entry_points()
    return reg


def known(kind: str) -> tuple[str, ...]:
    """The names of ``kind`` (see :func:`registry`), built-ins and plugins."""
    return tuple(registry(kind).names())


# A name not yet registered loads the installed plugins' entry points first (spec.py asks).
add_name_loader(load_entry_points)
